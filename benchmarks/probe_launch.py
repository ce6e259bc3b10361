"""Where the host time of one call goes. GPU only: python benchmarks/probe_launch.py
[host | cprofile | fp8]

fp8: the float8 block's forward+backward (swiglu_mlp(fp8=True)) at the HF Llama shape, where
v15 found its kernels at 2.2 ms of a 3.3 ms span: its host time per call and the functions
it goes to."""

import sys
import time

import torch
import triton

from fused_swiglu import launch, ops, swiglu, swiglu_mlp
from fused_swiglu.bench import linear_layout_operands
from fused_swiglu.tuning import tuned_dual_gemm


def host_us(fn, n=200):
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    elapsed = (time.perf_counter() - t0) / n * 1e6
    torch.cuda.synchronize()
    return elapsed


def layers(m, d_model=2048, d_ff=5632):
    x, w_gate, w_up = linear_layout_operands(m, d_model, d_ff, torch.bfloat16)
    print(f"\nhost us per call, M={m} d_model={d_model} d_ff={d_ff} "
          f"(tensor descriptors: {launch._use_tma(x, w_gate.shape[1])})")
    with torch.no_grad():
        rows = [
            ("swiglu() no grad", lambda: swiglu(x, w_gate, w_up)),
            ("launch.swiglu_forward", lambda: launch.swiglu_forward(x, w_gate, w_up, False, False)),
            ("torch.mm", lambda: torch.mm(x, w_gate)),
            ("torch.empty", lambda: torch.empty((m, d_ff), device="cuda", dtype=x.dtype)),
        ]
        for name, fn in rows:
            print(f"  {name:32s} {host_us(fn):7.1f}")
    dy = torch.randn(m, d_ff, device="cuda", dtype=x.dtype)
    _, gate, up = launch.swiglu_forward(x, w_gate, w_up, False, True)
    needs = (True, True, True)
    x.requires_grad_(True)
    from liger_kernel.ops.swiglu import LigerSiLUMulFunction
    rows = [
        ("swiglu() forward, grad mode", lambda: swiglu(x, w_gate, w_up)),
        ("gate-grads kernel", lambda: launch.swiglu_grads_from_preact(dy, gate, up)),
        ("dx, dW (cuBLAS)", lambda: ops._projection_grads([gate, up], x, w_gate, w_up, needs)),
        ("swiglu() fwd+bwd", lambda: torch.autograd.grad(
            swiglu(x, w_gate, w_up), (x, w_gate, w_up), dy)),
        ("liger fwd+bwd", lambda: torch.autograd.grad(
            LigerSiLUMulFunction.apply(x @ w_gate, x @ w_up), (x, w_gate, w_up), dy)),
        ("eager fwd+bwd", lambda: torch.autograd.grad(
            torch.nn.functional.silu(x @ w_gate) * (x @ w_up), (x, w_gate, w_up), dy)),
        ("empty Python node fwd+bwd", lambda: torch.autograd.grad(_Nothing.apply(x), (x,), x)),
    ]
    w_gate.requires_grad_(True)
    w_up.requires_grad_(True)
    for name, fn in rows:
        print(f"  {name:32s} {host_us(fn):7.1f}")
    tuner = tuned_dual_gemm(torch.cuda.get_device_name())
    for key, cfg in tuner.cache.items():
        print("  tuned:", key[:3], cfg)


class _Nothing(torch.autograd.Function):
    """The autograd engine's own cost of one Python node, for comparison."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, dy):
        return dy


def profile(m, d_model=4096, d_ff=11008):
    x, w_gate, w_up = linear_layout_operands(m, d_model, d_ff, torch.bfloat16)
    for t in (x, w_gate, w_up):
        t.requires_grad_(True)
    dy = torch.randn(m, d_ff, device="cuda", dtype=x.dtype)
    print(f"\nengine round trip of an empty Python node: "
          f"{host_us(lambda: torch.autograd.grad(_Nothing.apply(x), (x,), x)):.1f} us")

    def step():
        torch.autograd.grad(swiglu(x, w_gate, w_up), (x, w_gate, w_up), dy)
    step()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(50):
            step()
        torch.cuda.synchronize()
    print(f"torch.profiler, 50 forward+backward calls, M={m}")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


def memory_and_time():
    from fused_swiglu import bench as b
    impls = {k: v for k, v in b.implementations(torch.bfloat16).items()
             if k in ("liger", "fused_swiglu", "fused_swiglu recompute")}
    for m, d_model, d_ff in ((8192, 4096, 11008), (4096, 2048, 5632), (512, 4096, 11008)):
        b._print_rows(b.bench_shape(m, d_model, d_ff, torch.bfloat16, impls))


def cprofile(m, d_model=4096, d_ff=11008, calls=100):
    """Python's profiler over forward+backward calls: which host functions the time goes to."""
    x, w_gate, w_up = linear_layout_operands(m, d_model, d_ff, torch.bfloat16)
    for t in (x, w_gate, w_up):
        t.requires_grad_(True)
    dy = torch.randn(m, d_ff, device="cuda", dtype=x.dtype)
    _profiled(lambda: torch.autograd.grad(swiglu(x, w_gate, w_up), (x, w_gate, w_up), dy),
              calls, f"M={m} d_model={d_model} d_ff={d_ff}")


def fp8_block(m=8192, d_model=2048, d_ff=5632, calls=50):
    """The float8 block's host time per forward+backward, and where it goes."""
    x = torch.randn(m, d_model, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    weights = [(torch.randn(n, k, device="cuda") * k ** -0.5).to(torch.bfloat16).T
               .requires_grad_() for n, k in ((d_ff, d_model), (d_ff, d_model), (d_model, d_ff))]
    d_out = torch.randn(m, d_model, device="cuda", dtype=torch.bfloat16)

    def step():
        torch.autograd.grad(swiglu_mlp(x, *weights, fp8=True), (x, *weights), d_out)
    print(f"\nfloat8 block, M={m} d_model={d_model} d_ff={d_ff}: host and GPU us per "
          f"forward+backward: {host_us(step, calls):.0f}")
    _profiled(step, calls, f"float8 block, M={m} d_model={d_model} d_ff={d_ff}")


def _profiled(step, calls, what):
    """Python's profiler over `calls` calls of step, after three unprofiled ones."""
    import cProfile
    import pstats
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        step()
    torch.cuda.synchronize()
    profiler.disable()
    print(f"\ncProfile, {calls} forward+backward calls, {what}")
    pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    print(torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__)
    if sys.argv[1:] == ["cprofile"]:
        cprofile(512)
        sys.exit()
    if sys.argv[1:] == ["fp8"]:
        fp8_block()
        sys.exit()
    if sys.argv[1:] == ["host"]:
        layers(512, 4096, 11008)
        layers(512)
        sys.exit()
    layers(4096)
    layers(512)
    profile(512)
    memory_and_time()
