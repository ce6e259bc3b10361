"""The forward's two paths against each other by token count: the fused Triton kernel, and two
cuBLAS GEMMs writing g and u followed by the elementwise pass for y (launch.CUBLAS_MAX_TOKENS
picks between them). Kernel time as CUDA-graph replays, interleaved, for training (g and u
kept) and inference (y alone); the cuBLAS packed GEMM for scale. GPU only, repository root:

    python benchmarks/forward_paths.py
"""

import torch
import triton

from fused_swiglu import launch
from fused_swiglu.bench import graph_median_ms, interleaved_medians, linear_layout_operands

TOKENS = [64, 128, 256, 512, 1024, 2048, 4096]
MODEL_SHAPES = [(2048, 5632), (4096, 11008), (4096, 14336), (8192, 28672)]


def forward(x, w_gate, w_up, cublas, store_preact):
    def run():
        real = launch._uses_cublas
        launch._uses_cublas = lambda x: cublas
        try:
            launch.swiglu_forward(x, w_gate, w_up, False, store_preact)
        finally:
            launch._uses_cublas = real
    return run


def main():
    print(torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__)
    print(f"{'M':>5s} {'d_model':>7s} {'d_ff':>6s} {'packed':>8s} "
          f"{'fused tr':>9s} {'cuBLAS tr':>9s} {'ratio':>6s} "
          f"{'fused inf':>9s} {'cuBLAS inf':>10s} {'ratio':>6s}   (ms; ratio = cuBLAS / fused)")
    for d_model, d_ff in MODEL_SHAPES:
        for m in TOKENS:
            x, w_gate, w_up = linear_layout_operands(m, d_model, d_ff, torch.bfloat16)
            packed = torch.cat([w_gate.T, w_up.T]).T
            fns = {"packed": lambda: torch.mm(x, packed)}
            for store in (True, False):
                for cublas in (False, True):
                    fns[(store, cublas)] = forward(x, w_gate, w_up, cublas, store)
            ms = interleaved_medians(graph_median_ms, fns)
            print(f"{m:5d} {d_model:7d} {d_ff:6d} {ms['packed']:8.3f} "
                  f"{ms[(True, False)]:9.3f} {ms[(True, True)]:9.3f} "
                  f"{ms[(True, True)] / ms[(True, False)]:6.3f} "
                  f"{ms[(False, False)]:9.3f} {ms[(False, True)]:10.3f} "
                  f"{ms[(False, True)] / ms[(False, False)]:6.3f}")


if __name__ == "__main__":
    main()
