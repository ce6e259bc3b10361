"""Autotune configurations, built on first use (never at import, no device query at import)."""

import functools
import os

import triton

from .kernels.dual_gemm import dual_gemm_kernel

# Hopper gives one block up to 227 KiB of shared memory; keep a margin for the epilogue.
SHARED_MEMORY_LIMIT = 200 * 1024


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def token_bucket(m: int) -> int:
    """Tuning key for the token count: training and serving see many M, tuned once per bucket."""
    return min(triton.next_power_of_2(max(m, 1)), 16384)


def _set_descriptor_blocks(nargs):
    if not nargs["USE_TMA"]:
        return
    bm, bn, bk = nargs["BLOCK_M"], nargs["BLOCK_N"], nargs["BLOCK_K"]
    nargs["a"].block_shape = [bk, bm] if nargs["A_TRANSPOSED"] else [bm, bk]
    b_block = [bn, bk] if nargs["B_TRANSPOSED"] else [bk, bn]
    nargs["b_gate"].block_shape = b_block
    nargs["b_up"].block_shape = b_block


def _config(bm, bn, bk, stages, warps, group_m=8):
    return triton.Config(
        {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group_m},
        num_stages=stages, num_warps=warps, pre_hook=_set_descriptor_blocks)


def dual_gemm_configs():
    if interpreting():
        # small tiles so that the CPU tests cover several tiles and ragged tails
        return [_config(32, 32, 32, 1, 4, group_m=2)]
    return [
        # many tokens: the two accumulators make a 128 x 256 output tile per program
        _config(128, 128, 64, 4, 8),
        _config(128, 128, 64, 3, 8),
        _config(128, 64, 64, 4, 4),
        _config(64, 128, 64, 4, 4),
        _config(64, 64, 64, 4, 4),
        # float16 accumulators take half the registers: twice the tile
        _config(128, 256, 64, 2, 8),
        _config(256, 128, 64, 3, 8),
        # few tokens (decode): reading the weights is the cost, so many narrow column
        # programs with deep K tiles keep enough bytes in flight
        _config(16, 16, 256, 4, 4),
        _config(16, 32, 256, 4, 4),
        _config(16, 64, 128, 4, 4),
        _config(16, 16, 512, 3, 4),
        _config(32, 32, 256, 3, 4),
        # float32 operands run on FMA units (full precision), where small tiles win
        _config(64, 64, 32, 2, 4),
        _config(32, 64, 32, 2, 4),
    ]


# accumulator registers per thread above which a config spills
_ACCUMULATOR_REGISTER_LIMIT = 128


def _prune(configs, nargs, **kwargs):
    args = {**nargs, **kwargs}  # positional arguments arrive in nargs, keywords in kwargs
    element_size = args["out_a"].element_size()
    accumulator_size = 2 if args["FAST_ACCUM"] else 4
    small_m = args["M_BUCKET"] <= 64
    kept = []
    for cfg in configs:
        bm, bn, bk = (cfg.kwargs[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K"))
        shared = cfg.num_stages * (bm * bk + 2 * bk * bn) * element_size
        registers = 2 * bm * bn * accumulator_size // 4 // (32 * cfg.num_warps)
        if shared > SHARED_MEMORY_LIMIT or registers > _ACCUMULATOR_REGISTER_LIMIT:
            continue
        if element_size == 4:
            if bk == 32:
                kept.append(cfg)
        elif bk != 32 and (bm <= 32) == small_m:
            kept.append(cfg)
    return kept or configs[:1]


@functools.cache
def tuned_dual_gemm():
    configs = dual_gemm_configs()
    if len(configs) == 1:
        return triton.autotune(configs=configs, key=[])(dual_gemm_kernel)
    return triton.autotune(
        configs=configs,
        key=["M_BUCKET", "N", "K", "EPILOGUE", "STORE_PREACT", "FAST_ACCUM",
             "USE_TMA", "A_TRANSPOSED", "B_TRANSPOSED"],
        prune_configs_by={"early_config_prune": _prune},
    )(dual_gemm_kernel)
