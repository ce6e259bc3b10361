"""Forward+backward of every implementation the benchmark times, over many interleaved rounds
(each in its own shuffled order), every round printed: how far one row of the benchmark's
three-round medians can move. bfloat16, GPU only, from the repository root:

    python benchmarks/many_rounds.py [M,d_model,d_ff ...]"""

import statistics
import sys

import torch
import triton

from fused_swiglu.bench import implementations, interleaved_samples, median_ms, training_problem

SHAPES = [(4096, 4096, 14336), (8192, 4096, 11008)]
ROUNDS = 12


def main(shapes):
    print(torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__)
    for m, d_model, d_ff in shapes:
        steps = training_problem(m, d_model, d_ff, torch.bfloat16,
                                 implementations(torch.bfloat16))
        for step in steps.values():
            step()  # compile and autotune before the first round
        samples = interleaved_samples(median_ms, steps, ROUNDS)
        medians = {name: statistics.median(times) for name, times in samples.items()}
        print(f"\n{m}x{d_model}x{d_ff} bfloat16, ms per round and the median of {ROUNDS}")
        for name, times in samples.items():
            print(f"  {name:24s} {medians[name]:7.3f}  " + " ".join(f"{t:.3f}" for t in times))
        for peer in ("liger", "torch.compile"):
            if peer in medians:
                print(f"  speed-up over {peer}: {medians[peer] / medians['fused_swiglu']:.3f}")


if __name__ == "__main__":
    main([tuple(int(v) for v in arg.split(",")) for arg in sys.argv[1:]] or SHAPES)
