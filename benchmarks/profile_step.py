"""The GPU timeline of one forward+backward: each kernel's time, their sum, and the idle time
between them, for this package and Liger-Kernel. Where the benchmark's forward+backward time
exceeds the sum of its kernels, the rest is the GPU waiting (on the host, the allocator or a
synchronisation). GPU only, from the repository root:

    python benchmarks/profile_step.py [--layout LAYOUT] [M,d_model,d_ff ...]

Also times forward+backward of both, interleaved, at each shape."""

import json
import os
import statistics
import sys
import tempfile

import torch
import triton

from fused_swiglu import swiglu
from fused_swiglu.bench import implementations, interleaved_samples, median_ms, training_problem

SHAPES = [(4096, 2048, 5632), (8192, 2048, 5632), (8192, 4096, 11008), (512, 8192, 28672)]
PROFILED_STEPS = 5
ROUNDS = 7


_GPU_CATEGORIES = ("kernel", "gpu_memset", "gpu_memcpy")


def _kernels(prof):
    """(name, start us, duration us) of every GPU activity in the profiler's trace, by start."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            trace = json.load(f)
    events = [(e["name"], e["ts"], e["dur"]) for e in trace["traceEvents"]
              if e.get("cat") in _GPU_CATEGORIES]
    return sorted(events, key=lambda e: e[1])


def timeline(step):
    """(median kernel sum, median span first start to last end, one step's kernels)."""
    sums, spans, last = [], [], None
    for _ in range(PROFILED_STEPS):
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            step()
            torch.cuda.synchronize()
        kernels = _kernels(prof)
        sums.append(sum(k[2] for k in kernels))
        spans.append(max(k[1] + k[2] for k in kernels) - kernels[0][1])
        last = kernels
    return statistics.median(sums), statistics.median(spans), last


def main(shapes, layout="linear"):
    print(torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__)
    liger = implementations(torch.bfloat16).get("liger")
    impls = {"fused_swiglu": swiglu}
    if liger is not None:
        impls["liger"] = liger
    summary = []
    for m, d_model, d_ff in shapes:
        steps = training_problem(m, d_model, d_ff, torch.bfloat16, impls, layout)
        for step in steps.values():
            step()
        print(f"\n{m}x{d_model}x{d_ff} bfloat16, {layout} weights")
        bench = _medians(steps)
        for name, step in steps.items():
            kernel_us, span_us, kernels = timeline(step)
            summary.append((f"{m}x{d_model}x{d_ff}", name, bench[name] * 1e3, kernel_us, span_us))
            print(f"  {name}: " + ", ".join(f"{k[0][:40]} {k[2]:.0f}" for k in kernels))
    print(f"\n{'shape':18s} {'impl':12s} {'bench us':>9s} {'kernels us':>11s} "
          f"{'span us':>8s} {'idle us':>8s}")
    for shape, name, bench_us, kernel_us, span_us in summary:
        print(f"{shape:18s} {name:12s} {bench_us:9.1f} {kernel_us:11.1f} {span_us:8.1f} "
              f"{span_us - kernel_us:8.1f}")


def _medians(steps):
    """Medians over ROUNDS interleaved rounds, each round printed."""
    samples = interleaved_samples(median_ms, steps, ROUNDS)
    for name, times in samples.items():
        print(f"  {name}: " + " ".join(f"{t:.3f}" for t in times) + " ms")
    return {name: statistics.median(times) for name, times in samples.items()}


if __name__ == "__main__":
    args = sys.argv[1:]
    layout = "linear"
    if args[:1] == ["--layout"]:
        layout, args = args[1], args[2:]
    main([tuple(int(v) for v in arg.split(",")) for arg in args] or SHAPES, layout)
