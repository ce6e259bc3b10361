"""Host (CPU) time per call of each layer of the forward, to find launch overhead. GPU only."""

import time

import torch

from fused_swiglu import launch, ops, swiglu

x = torch.randn(8, 4096, device="cuda", dtype=torch.bfloat16)
w_gate = (torch.randn(11008, 4096, device="cuda", dtype=torch.bfloat16) * 0.01).T
w_up = (torch.randn(11008, 4096, device="cuda", dtype=torch.bfloat16) * 0.01).T


def host_us(fn, n=200):
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    elapsed = (time.perf_counter() - t0) / n * 1e6
    torch.cuda.synchronize()
    return elapsed


y = torch.empty(8, 11008, device="cuda", dtype=torch.bfloat16)
print(f"swiglu()                  {host_us(lambda: swiglu(x, w_gate, w_up)):7.1f} us")
print(f"ops.swiglu_forward        {host_us(lambda: ops.swiglu_forward(x, w_gate, w_up, False, False)):7.1f} us")
print(f"launch.swiglu_forward     {host_us(lambda: launch.swiglu_forward(x, w_gate, w_up, False, False)):7.1f} us")
print(f"_tma_supported            {host_us(lambda: launch._use_tma(x)):7.1f} us")
print(f"3 descriptors             {host_us(lambda: [launch._descriptor(t) for t in (x, w_gate.t(), w_up.t())]):7.1f} us")
supported = launch._use_tma
launch._use_tma = lambda a: False
print(f"launch, pointer path      {host_us(lambda: launch.swiglu_forward(x, w_gate, w_up, False, False)):7.1f} us")
launch._use_tma = supported
print(f"torch.mm                  {host_us(lambda: torch.mm(x, w_gate)):7.1f} us")
