"""Configurations of the forward's stacked kernel (nn.Linear-layout weights) timed against the
cuBLAS packed GEMM, interleaved, on the benchmark's large shapes, or with --small on the
host-bound token counts, timed there as CUDA-graph replays (kernel time, not the host's).
GPU only: python benchmarks/sweep_forward.py [--small | IR_FOLDER]"""

import sys

import torch
import triton
from config_check import runs_correctly

from fused_swiglu import launch
from fused_swiglu.bench import (graph_median_ms, interleaved_medians, linear_layout_operands,
                                median_ms)
from fused_swiglu.kernels.dual_gemm import SWIGLU_FORWARD
from fused_swiglu.kernels.stacked_gemm import stacked_gemm_kernel
from fused_swiglu.tuning import make_stacked_config

SHAPES = [(8192, 4096, 11008), (8192, 4096, 14336), (4096, 8192, 28672), (8192, 2048, 5632)]
# stacked-kernel tiles: BLOCK_N is each weight's share of the 2 * BLOCK_N-wide MMA
CONFIGS = {
    "128x128x64 s3 g8": make_stacked_config(128, 128, 64, 3, 8),
    "128x128x64 s3 g4": make_stacked_config(128, 128, 64, 3, 8, group_m=4),
    "128x128x64 s3 g16": make_stacked_config(128, 128, 64, 3, 8, group_m=16),
    "128x64x64 s4 g8 w4": make_stacked_config(128, 64, 64, 4, 4),
    "128x64x64 s4 g8 w8": make_stacked_config(128, 64, 64, 4, 8),
    "128x128x128 s2 g8": make_stacked_config(128, 128, 128, 2, 8),
    # the first one again: how far two timings of one kernel fall apart
    "128x128x64 s3 g8 again": make_stacked_config(128, 128, 64, 3, 8),
}
WITH_PREACT = ("128x128x64 s3 g8", "128x64x64 s4 g8 w4")
SMALL_SHAPES = [(m, d_model, d_ff) for m in (512, 1024, 2048)
                for d_model, d_ff in ((2048, 5632), (4096, 11008), (4096, 14336), (8192, 28672))]
# fewer rows per tile: more tiles to spread over the multiprocessors at few tokens
SMALL_CONFIGS = {
    "128x128x64 s3 g8": make_stacked_config(128, 128, 64, 3, 8),
    "64x128x64 s4 w4": make_stacked_config(64, 128, 64, 4, 4),
    "64x128x64 s3 w4": make_stacked_config(64, 128, 64, 3, 4),
    "64x64x64 s4 w4": make_stacked_config(64, 64, 64, 4, 4),
    "128x64x64 s4 w8": make_stacked_config(128, 64, 64, 4, 8),
    "128x64x64 s4 w4": make_stacked_config(128, 64, 64, 4, 4),
}


def main(shapes=SHAPES, configs=CONFIGS, timer=median_ms, with_preact=WITH_PREACT):
    print(torch.cuda.get_device_name(), "triton", triton.__version__)
    for m, d_model, d_ff in shapes:
        dtype = torch.bfloat16
        x, w_gate, w_up = linear_layout_operands(m, d_model, d_ff, dtype)
        packed = torch.cat([w_gate.T, w_up.T]).T
        y = torch.empty(m, d_ff, device="cuda", dtype=dtype)
        pair = tuple(torch.empty(m, d_ff, device="cuda", dtype=dtype) for _ in range(2))
        ref = torch.nn.functional.silu((x @ w_gate).float()) * (x @ w_up).float()
        fns = {"cuBLAS packed": lambda: x @ packed}
        for name, cfg in configs.items():
            def run(cfg=cfg, store=False):
                launch._dual_gemm(x, w_gate, w_up, y, pair if store else None, None,
                                  SWIGLU_FORWARD, False, config=cfg)
            if not runs_correctly(name, run, y, ref):
                continue
            fns[name] = run
            if name in with_preact:
                fns[name + " +g,u"] = lambda run=run: run(store=True)
        fns["cuBLAS packed again"] = lambda: x @ packed
        ms = interleaved_medians(timer, fns)
        bound = ms["cuBLAS packed"]
        print(f"\nM={m} d_model={d_model} d_ff={d_ff}: cuBLAS {bound:.3f} ms")
        for k, v in sorted(ms.items(), key=lambda kv: kv[1]):
            print(f"  {k:28s} {v:7.3f} ms  {v / bound:6.3f}x  "
                  f"{4 * m * d_model * d_ff / v * 1e-9:5.0f} TFLOP/s")


def dump_ir(folder):
    """TTGIR and PTX of the 128 x 128 x 64 kernels with and without the [g | u] stores."""
    for cache in stacked_gemm_kernel.device_caches.values():
        for kernel in cache[0].values():
            meta = kernel.metadata
            ttgir = kernel.asm.get("ttgir", "")
            stores = ttgir.count("descriptor_store")
            if meta.num_warps == 8 and meta.num_stages == 3:
                for kind in ("ttgir", "ptx"):
                    path = f"{folder}/stores{stores}.{kind}"
                    with open(path, "w") as f:
                        f.write(kernel.asm.get(kind, ""))


if __name__ == "__main__":
    if sys.argv[1:] == ["--small"]:
        main(SMALL_SHAPES, SMALL_CONFIGS, graph_median_ms, tuple(SMALL_CONFIGS))
        sys.exit()
    main()
    if len(sys.argv) > 1:
        dump_ir(sys.argv[1])
