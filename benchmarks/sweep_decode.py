"""Configurations of the pointer kernel at decode sizes, as CUDA-graph replays, against eager
PyTorch and the cuBLAS packed GEMM. GPU only: python benchmarks/sweep_decode.py [TOKENS...]"""

import sys

import torch
import triton
from config_check import runs_correctly

from fused_swiglu import launch
from fused_swiglu.bench import graph_median_ms, interleaved_medians, linear_layout_operands
from fused_swiglu.kernels.dual_gemm import SWIGLU_FORWARD
from fused_swiglu.tuning import chosen_config, make_config, token_bucket

SHAPES = [(2048, 5632), (4096, 11008), (4096, 14336), (8192, 28672)]
# (BLOCK_M, BLOCK_N, BLOCK_K, stages, warps)
CANDIDATES = [
    (32, 32, 256, 3, 4), (32, 64, 128, 4, 4), (32, 16, 256, 4, 4),
    (32, 32, 128, 4, 4), (32, 16, 128, 4, 4), (32, 32, 64, 6, 4), (32, 64, 64, 4, 4),
    (32, 32, 128, 3, 2), (32, 16, 256, 3, 2), (32, 16, 128, 6, 4), (32, 32, 128, 6, 4),
    (16, 32, 256, 4, 4), (16, 16, 256, 4, 4), (16, 64, 128, 4, 4), (64, 32, 128, 3, 4),
]


def main(tokens):
    print(torch.cuda.get_device_name(), "triton", triton.__version__)
    for m in tokens:
        for d_model, d_ff in SHAPES:
            dtype = torch.bfloat16
            x, w_gate, w_up = linear_layout_operands(m, d_model, d_ff, dtype)
            packed = torch.cat([w_gate.T, w_up.T]).T
            y = torch.empty(m, d_ff, device="cuda", dtype=dtype)
            ref = torch.nn.functional.silu((x @ w_gate).float()) * (x @ w_up).float()
            fns = {"cuBLAS packed": lambda: x @ packed,
                   "eager": lambda: torch.nn.functional.silu(x @ w_gate) * (x @ w_up),
                   "package (autotuned)": lambda: launch.swiglu_forward(x, w_gate, w_up,
                                                                        False, False)}
            for tile in CANDIDATES:
                cfg = make_config(*tile)

                def run(cfg=cfg):
                    launch._dual_gemm(x, w_gate, w_up, y, None, None, SWIGLU_FORWARD, False,
                                      config=cfg)
                name = "x".join(map(str, tile[:3])) + f" s{tile[3]} w{tile[4]}"
                if runs_correctly(name, run, y, ref):
                    fns[name] = run
            ms = interleaved_medians(graph_median_ms, fns)
            key = (torch.cuda.get_device_name(), token_bucket(m), d_ff, d_model, dtype,
                   SWIGLU_FORWARD, False, False, False, False, False)
            chosen = chosen_config(key, False, False)
            bound = ms["cuBLAS packed"]
            print(f"\nM={m} d_model={d_model} d_ff={d_ff}: cuBLAS {bound * 1e3:.1f} us, "
                  f"autotuner chose {chosen[0] if chosen else None}")
            for k, v in sorted(ms.items(), key=lambda kv: kv[1]):
                print(f"  {k:28s} {v * 1e3:7.1f} us  {v / bound:6.3f}x")


if __name__ == "__main__":
    main([int(t) for t in sys.argv[1:]] or [32])
