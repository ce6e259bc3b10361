"""Row-major (d_model, d_ff) weights, the original API's layout: the forward's two candidate
paths (two cuBLAS GEMMs and the elementwise pass, or the fused two-MMA kernel) against the
cuBLAS packed GEMM, and forward+backward and peak memory against Liger-Kernel, in
interleaved rounds of one run (GPU only).

    python benchmarks/row_major_paths.py [M,d_model,d_ff ...]
"""

import random
import statistics
import sys

import torch
import triton

from fused_swiglu import launch, swiglu

SHAPES = [(8192, 4096, 11008), (4096, 8192, 28672), (512, 4096, 14336)]
ROUNDS = 5


def ms(fn):
    return triton.testing.do_bench(fn, warmup=10, rep=100, return_mode="median")


def interleaved(fns, rounds=ROUNDS):
    samples = {name: [] for name in fns}
    shuffle = random.Random(0).shuffle
    for _ in range(rounds):
        order = list(fns)
        shuffle(order)
        for name in order:
            samples[name].append(ms(fns[name]))
    return {name: statistics.median(v) for name, v in samples.items()}


def forced_path(path):
    """swiglu with the forward's path forced to `path` for row-major weights."""
    real = launch._forward_plan

    def run(x, w_gate, w_up):
        def plan(*args):
            chosen, gemm_plan = real(*args)
            if path == launch.DUAL and chosen == launch.CUBLAS:
                return launch.DUAL, launch._gemm_plan(*args)
            return chosen, gemm_plan
        launch._forward_plan = plan
        try:
            return swiglu(x, w_gate, w_up)
        finally:
            launch._forward_plan = real
    return run


def peak_mb(fn, leaves, dy):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    torch.autograd.grad(fn(*leaves), leaves, dy)
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def main(shapes):
    from liger_kernel.ops.swiglu import LigerSiLUMulFunction

    def liger(x, w_gate, w_up):
        return LigerSiLUMulFunction.apply(x @ w_gate, x @ w_up)

    print(f"# {torch.cuda.get_device_name()}, bfloat16, row-major (d_model, d_ff) weights")
    print(f"{'M x d_model x d_ff':22s} {'cublas fwd':>10s} {'dual fwd':>9s} {'liger fwd':>9s} "
          f"{'ours f+b':>9s} {'liger f+b':>9s} {'speed-up':>8s} {'peak ours':>9s} "
          f"{'peak liger':>10s}  (forwards / packed GEMM)")
    for m, d_model, d_ff in shapes:
        x = torch.randn(m, d_model, device="cuda", dtype=torch.bfloat16)
        w_gate, w_up = (torch.randn(d_model, d_ff, device="cuda", dtype=torch.bfloat16)
                        * d_model ** -0.5 for _ in range(2))
        packed = torch.cat([w_gate, w_up], dim=1)
        dy = torch.randn(m, d_ff, device="cuda", dtype=torch.bfloat16)
        impls = {"cublas": forced_path(launch.CUBLAS), "dual": forced_path(launch.DUAL),
                 "liger": liger}
        with torch.no_grad():
            fwd = interleaved({"bound": lambda: x @ packed,
                               **{k: (lambda f=f: f(x, w_gate, w_up)) for k, f in impls.items()}})
        del packed
        leaves = [t.requires_grad_() for t in (x, w_gate, w_up)]
        steps = {k: (lambda f=f: torch.autograd.grad(f(*leaves), leaves, dy))
                 for k, f in (("ours", swiglu), ("liger", liger))}
        both = interleaved(steps)
        peaks = {k: peak_mb(f, leaves, dy) for k, f in (("ours", swiglu), ("liger", liger))}
        print(f"{f'{m}x{d_model}x{d_ff}':22s} {fwd['cublas'] / fwd['bound']:10.3f} "
              f"{fwd['dual'] / fwd['bound']:9.3f} {fwd['liger'] / fwd['bound']:9.3f} "
              f"{both['ours']:9.3f} {both['liger']:9.3f} {both['liger'] / both['ours']:8.3f} "
              f"{peaks['ours']:9.0f} {peaks['liger']:10.0f}  path {launch.forward_path(x, w_gate, w_up)}")
        x.requires_grad_(False)


if __name__ == "__main__":
    main([tuple(int(v) for v in s.split(",")) for s in sys.argv[1:]] or SHAPES)
