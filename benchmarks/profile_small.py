"""Where the time goes at small M: kernel time (CUDA graphs) against eager time, and a
profiler table of one forward+backward. Run on a GPU from the repository root."""

import time

import torch
import triton

from fused_swiglu import swiglu
from fused_swiglu.bench import linear_layout_operands


def inputs(m, d_model=4096, d_ff=11008, dtype=torch.bfloat16, grad=False):
    return tuple(t.requires_grad_(grad)
                 for t in linear_layout_operands(m, d_model, d_ff, dtype))


def eager(x, w_gate, w_up):
    return torch.nn.functional.silu(x @ w_gate) * (x @ w_up)


for m in (1, 8, 32, 512):
    x, wg, wu = inputs(m)
    for name, fn in (("eager", eager), ("fused", swiglu)):
        fn(x, wg, wu)
        graph_ms = triton.testing.do_bench_cudagraph(lambda: fn(x, wg, wu), return_mode="median")
        plain_ms = triton.testing.do_bench(lambda: fn(x, wg, wu), return_mode="median")
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(100):
            fn(x, wg, wu)
        cpu_us = (time.perf_counter() - t0) * 1e4
        torch.cuda.synchronize()
        print(f"M={m:4d} {name:6s} graph {graph_ms*1e3:7.1f} us  eager {plain_ms*1e3:7.1f} us  "
              f"host {cpu_us:6.1f} us/call")

x, wg, wu = inputs(512, grad=True)
dy = torch.randn(512, 11008, device="cuda", dtype=torch.bfloat16)
for name, fn in (("eager", eager), ("fused", swiglu)):
    for _ in range(3):
        torch.autograd.grad(fn(x, wg, wu), (x, wg, wu), dy)
    with torch.profiler.profile() as prof:
        for _ in range(5):
            torch.autograd.grad(fn(x, wg, wu), (x, wg, wu), dy)
        torch.cuda.synchronize()
    print(f"\n{name} forward+backward, M=512, 5 iterations")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12,
                                    max_name_column_width=60))
