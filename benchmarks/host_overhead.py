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


def pointer_path_forward():
    use_tma = launch._use_tma
    launch._use_tma = lambda a: False
    try:
        launch.swiglu_forward(x, w_gate, w_up, False, False)
    finally:
        launch._use_tma = use_tma


layers = [
    ("swiglu()", lambda: swiglu(x, w_gate, w_up)),
    ("ops.swiglu_forward (custom op)", lambda: ops.swiglu_forward(x, w_gate, w_up, False, False)),
    ("launch.swiglu_forward", lambda: launch.swiglu_forward(x, w_gate, w_up, False, False)),
    ("launch, pointer path forced", pointer_path_forward),
    ("three tensor descriptors",
     lambda: [launch._descriptor(t) for t in (x, w_gate.t(), w_up.t())]),
    ("torch.mm", lambda: torch.mm(x, w_gate)),
]
for name, fn in layers:
    print(f"{name:32s} {host_us(fn):7.1f} us")
