"""Forward+backward at the host-bound sizes (M = 512): for every implementation of the benchmark,
its host time per step (measured while the GPU is kept busy, so that no call waits for the
GPU), its GPU time per step (the step replayed as a CUDA graph) and the benchmark's own timing
in interleaved rounds, every sample printed. GPU only, from the repository root:

    python benchmarks/host_bound.py [ROUNDS]
"""

import statistics
import sys
import time

import torch
import triton

from fused_swiglu.bench import (captured_median_ms, implementations, interleaved_samples,
                                median_ms, training_problem)

SHAPES = [(512, 2048, 5632), (512, 4096, 11008), (512, 4096, 14336)]
# steps timed per host measurement: few enough that their launches fit the GPU's queue
HOST_STEPS = 20
# GPU cycles of sleep queued first: longer than HOST_STEPS steps of host time
SLEEP_CYCLES = 200_000_000


def host_us(step):
    """Host time of one step, the GPU held busy by a sleep queued before the timed steps."""
    times = []
    for _ in range(5):
        torch.cuda.synchronize()
        torch.cuda._sleep(SLEEP_CYCLES)
        t0 = time.perf_counter()
        for _ in range(HOST_STEPS):
            step()
        times.append((time.perf_counter() - t0) / HOST_STEPS * 1e6)
        torch.cuda.synchronize()
    return statistics.median(times)


def main(rounds):
    print(torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__)
    for dtype in (torch.bfloat16, torch.float16):
        impls = implementations(dtype)
        for m, d_model, d_ff in SHAPES:
            steps = training_problem(m, d_model, d_ff, dtype, impls)
            for step in steps.values():
                step()
            samples = interleaved_samples(median_ms, steps, rounds)
            print(f"\n{dtype} M={m} d_model={d_model} d_ff={d_ff}")
            print(f"{'implementation':26s} {'host us':>8s} {'graph ms':>9s} {'bench ms':>9s}  "
                  "rounds")
            for name, step in steps.items():
                graph = captured_median_ms(step) if name != "torch.compile" else float("nan")
                print(f"{name:26s} {host_us(step):8.0f} {graph:9.3f} "
                      f"{statistics.median(samples[name]):9.3f}  "
                      + " ".join(f"{t:.3f}" for t in samples[name]))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 7)
