"""What a torch.compile user gets: swiglu() inside a compiled function (the custom ops, one
autograd node) against the eager-mode call (autograd.Functions), torch.compile of plain PyTorch
and Liger-Kernel: forward and forward+backward time and memory, the host time of one call, and
the kernels of one forward+backward. bfloat16, GPU only:

    python benchmarks/compile_path.py [M,d_model,d_ff ...]
    python benchmarks/compile_path.py cprofile     # where the compiled call's host time goes"""

import cProfile
import pstats
import sys

import torch
import triton

from fused_swiglu import swiglu
from fused_swiglu.bench import _print_rows, bench_shape, implementations, linear_layout_operands
from probe_launch import host_us
from profile_step import timeline

SHAPES = [(8192, 4096, 11008), (4096, 2048, 5632), (512, 4096, 11008)]


def main(shapes):
    print(torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__)
    impls = {name: fn for name, fn in implementations(torch.bfloat16).items()
             if name in ("torch.compile", "liger", "fused_swiglu")}
    # dynamic shapes, as the benchmark's torch.compile of plain PyTorch: one compilation
    impls["fused_swiglu compiled"] = torch.compile(swiglu, fullgraph=True, dynamic=True)
    for m, d_model, d_ff in shapes:
        _print_rows(bench_shape(m, d_model, d_ff, torch.bfloat16, impls))
        x, w_gate, w_up = linear_layout_operands(m, d_model, d_ff, torch.bfloat16)
        dy = torch.randn(m, d_ff, device="cuda", dtype=x.dtype)
        print("host us per call: no-grad forward / forward+backward; kernels of one fwd+bwd (us)")
        for name, fn in impls.items():
            for t in (x, w_gate, w_up):
                t.requires_grad_(False)
            forward_us = host_us(lambda: fn(x, w_gate, w_up))
            for t in (x, w_gate, w_up):
                t.requires_grad_(True)

            def step():
                torch.autograd.grad(fn(x, w_gate, w_up), (x, w_gate, w_up), dy)
            step_us = host_us(step)
            kernel_us, span_us, kernels = timeline(step)
            print(f"  {name:24s} {forward_us:7.1f} / {step_us:7.1f}; kernels {kernel_us:.0f} "
                  f"in {span_us:.0f}: " + ", ".join(f"{k[0][:28]} {k[2]:.0f}" for k in kernels))


def host_profile(m=4096, d_model=2048, d_ff=5632, calls=100):
    """Python's profiler over forward+backward calls, compiled and eager."""
    x, w_gate, w_up = linear_layout_operands(m, d_model, d_ff, torch.bfloat16)
    for t in (x, w_gate, w_up):
        t.requires_grad_(True)
    dy = torch.randn(m, d_ff, device="cuda", dtype=x.dtype)
    compiled = torch.compile(swiglu, fullgraph=True, dynamic=True)
    for name, fn in (("compiled", compiled), ("eager", swiglu)):
        def step():
            torch.autograd.grad(fn(x, w_gate, w_up), (x, w_gate, w_up), dy)
        for _ in range(3):
            step()
        torch.cuda.synchronize()
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(calls):
            step()
        torch.cuda.synchronize()
        profiler.disable()
        print(f"\ncProfile, {calls} {name} forward+backward calls, M={m} d_model={d_model} "
              f"d_ff={d_ff}")
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(40)


if __name__ == "__main__":
    if sys.argv[1:] == ["cprofile"]:
        host_profile()
        sys.exit()
    main([tuple(int(v) for v in arg.split(",")) for arg in sys.argv[1:]] or SHAPES)
