"""Autotune configurations, built on first use (never at import, no device query at import),
and the choice of one configuration per problem, remembered so that later calls skip the
autotuner's per-call work."""

import functools

import torch
import triton
import triton.testing

from .kernels.common import RUNS_ON_INTERPRETER
from .kernels.dual_gemm import dual_gemm_kernel
from .kernels.stacked_gemm import stacked_gemm_kernel

# Hopper gives one block up to 227 KiB of shared memory; keep a margin for the epilogue.
SHARED_MEMORY_LIMIT = 200 * 1024


def interpreting() -> bool:
    """Whether the kernels run under Triton's interpreter: decided once, at import."""
    return RUNS_ON_INTERPRETER


def runs_kernels(t) -> bool:
    """Whether t's device runs the Triton kernels: a GPU, or the CPU under the interpreter."""
    return t.is_cuda or (interpreting() and t.device.type == "cpu")


def token_bucket(m: int) -> int:
    """Tuning key for the token count: training and serving see many M, tuned once per bucket."""
    # plain integer arithmetic: triton.next_power_of_2 costs microseconds of host time per call
    return min(1 << (max(m, 1) - 1).bit_length(), 16384)


def set_descriptor_blocks(nargs):
    """Give the tensor descriptors among the arguments the block shapes of the configuration."""
    if not nargs["USE_TMA"]:
        return
    bm, bn, bk = nargs["BLOCK_M"], nargs["BLOCK_N"], nargs["BLOCK_K"]
    nargs["a"].block_shape = [bk, bm] if nargs["A_TRANSPOSED"] else [bm, bk]
    b_block = [bn, bk] if nargs["B_TRANSPOSED"] else [bk, bn]
    nargs["b_gate"].block_shape = b_block
    nargs["b_up"].block_shape = b_block


def set_stacked_descriptor_blocks(nargs):
    """The block shapes of the stacked kernel's descriptors; unused ones are None."""
    bm, bn, bk = nargs["BLOCK_M"], nargs["BLOCK_N"], nargs["BLOCK_K"]
    blocks = {"a": [bm, bk], "w": [2, bn, bk], "y": [bm, bn], "gate_out": [bm, bn],
              "up_out": [bm, bn], "dy": [bm, bn]}
    for name, block in blocks.items():
        if nargs[name] is not None:
            nargs[name].block_shape = block


def make_config(bm, bn, bk, stages, warps, group_m=8, fp16_acc=False):
    """A configuration of the two-MMA kernel."""
    return triton.Config(
        {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group_m, "FP16_ACC": fp16_acc},
        num_stages=stages, num_warps=warps, pre_hook=set_descriptor_blocks)


def make_stacked_config(bm, bn, bk, stages, warps, group_m=8):
    """A configuration of the stacked kernel, which accumulates in float32 only."""
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group_m},
                         num_stages=stages, num_warps=warps,
                         pre_hook=set_stacked_descriptor_blocks)


def with_launch_kwargs(config):
    """(config, its launch keyword arguments), built once: launches reuse the dict."""
    return config, config.all_kwargs()


@functools.cache
def _interpreter_config(fast_accum: bool, stacked: bool):
    # small tiles so that the CPU tests cover several tiles and ragged tails
    if stacked:
        return with_launch_kwargs(make_stacked_config(32, 32, 32, 1, 4, group_m=2))
    return with_launch_kwargs(make_config(32, 32, 32, 1, 4, group_m=2, fp16_acc=fast_accum))


def dual_gemm_configs():
    tiles = [
        # many tokens: the two accumulators make a 128 x 256 output tile per program
        (128, 128, 64, 4, 8),
        (128, 128, 64, 3, 8),
        (128, 64, 64, 4, 4),
        (64, 128, 64, 4, 4),
        (64, 64, 64, 4, 4),
        # float16 accumulators take half the registers: twice the tile
        (128, 256, 64, 2, 8),
        (256, 128, 64, 3, 8),
        # few tokens (decode): reading the weights is the cost, so many narrow column
        # programs with deep K tiles keep enough bytes in flight. Two warps per program put
        # more programs on each multiprocessor: at 32 tokens these ran 0.99-1.04x the cuBLAS
        # packed GEMM where the four-warp tiles ran 1.03-1.22x (NOTES.md, v6). The first is
        # also the untimed default (untimed_config).
        (32, 32, 128, 3, 2),
        (32, 16, 256, 3, 2),
        (16, 16, 256, 4, 4),
        (16, 32, 256, 4, 4),
        (16, 64, 128, 4, 4),
        (16, 16, 512, 3, 4),
        (32, 32, 256, 3, 4),
        (32, 64, 128, 4, 4),
        (32, 16, 256, 4, 4),
        # float32 operands run on FMA units (full precision), where small tiles win
        (64, 64, 32, 2, 4),
        (32, 64, 32, 2, 4),
    ]
    # every tile with float32 accumulators, and again with float16 ones for fast_accum calls:
    # the autotuner takes whichever runs faster on this GPU
    return [make_config(*tile, fp16_acc=fp16_acc) for fp16_acc in (False, True) for tile in tiles]


def stacked_gemm_configs():
    """The stacked kernel's one configuration (BLOCK_N is each weight's share of the
    2 * BLOCK_N-wide MMA): (128, 128, 64) in 3 stages matched the cuBLAS GEMM on an H200; the
    other tiles measured were 2-35% slower, 4 stages and other GROUP_M within noise (NOTES.md,
    v5). One configuration leaves no timing noise to pick a worse one. Float32 accumulators only:
    Hopper's tensor cores run float16 accumulation at the same rate, and with float16 ones in
    the search the autotuner once picked a 12% slower one on timing noise."""
    return [make_stacked_config(128, 128, 64, 3, 8)]


def pipeline_shared_memory(config, element_size: int) -> int:
    """Bytes of shared memory the main loop's pipeline takes: each stage holds a tile of A and
    one tile of each weight."""
    bm, bn, bk = (config.kwargs[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K"))
    return config.num_stages * (bm * bk + 2 * bk * bn) * element_size


def stacked_shared_memory(config) -> int:
    """Bytes of shared memory the stacked kernel's configuration takes: its pipeline, plus the
    epilogue's staged (BLOCK_M, BLOCK_N) output tile (16-bit operands: tensor descriptors are
    only used for those)."""
    staged_output = config.kwargs["BLOCK_M"] * config.kwargs["BLOCK_N"]
    return pipeline_shared_memory(config, 2) + 2 * staged_output


# accumulator registers per thread above which a config spills
_ACCUMULATOR_REGISTER_LIMIT = 128


def _prune(configs, nargs, **kwargs):
    args = {**nargs, **kwargs}  # positional arguments arrive in nargs, keywords in kwargs
    element_size = args["out_a"].element_size()
    small_m = args["M_BUCKET"] <= 64
    kept = []
    for cfg in configs:
        bm, bn, bk, fp16_acc = (cfg.kwargs[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K",
                                                         "FP16_ACC"))
        if fp16_acc and not (args["FAST_ACCUM"] and element_size == 2):
            continue
        registers = 2 * bm * bn * (2 if fp16_acc else 4) // 4 // (32 * cfg.num_warps)
        if (pipeline_shared_memory(cfg, element_size) > SHARED_MEMORY_LIMIT
                or registers > _ACCUMULATOR_REGISTER_LIMIT):
            continue
        if element_size == 4:
            if bk == 32:
                kept.append(cfg)
        elif bk != 32 and (bm <= 32) == small_m:
            kept.append(cfg)
    return kept or configs[:1]


def _graph_benchmark(kernel_call, quantiles):
    """The autotuner times each configuration as CUDA-graph replays: timed launch by launch, a
    decode-sized kernel (tens of microseconds) measures the host's launch overhead instead, and
    the choice among configurations is left to chance.

    do_bench_cudagraph launches on a stream of its own that does not wait for the current one,
    with the call's real arguments: kernels still queued there could be writing the inputs, or
    still using memory that the caching allocator has just handed out again as an output
    (stream-ordered reuse, which that side stream ignores). Finishing them first keeps the
    timing launches from racing them."""
    torch.cuda.synchronize()
    return triton.testing.do_bench_cudagraph(kernel_call, rep=25, quantiles=quantiles)


def untimed_config(stacked: bool, nargs: dict):
    """The configuration to launch without timing any, for a first call inside a CUDA-graph
    capture: the stacked kernel's one, or the first the pruning keeps for these arguments
    (the first tile of the matching group in dual_gemm_configs)."""
    if stacked:
        return stacked_gemm_configs()[0]
    return _prune(dual_gemm_configs(), nargs)[0]


# One autotuner per GPU model (the argument only keys the cache): Triton's autotuner keys its
# own cache on the arguments alone, so a process with two kinds of GPU would otherwise launch
# on one the configuration timed on the other, which may not even fit its shared memory.
@functools.cache
def tuned_dual_gemm(gpu_model: str):
    return triton.autotune(
        configs=dual_gemm_configs(),
        key=["M_BUCKET", "N", "K", "EPILOGUE", "ACTIVATION", "STORE_PREACT", "FAST_ACCUM",
             "USE_TMA", "A_TRANSPOSED", "B_TRANSPOSED"],
        prune_configs_by={"early_config_prune": _prune},
        do_bench=_graph_benchmark,
    )(dual_gemm_kernel)


@functools.cache
def tuned_stacked_gemm(gpu_model: str):
    return triton.autotune(
        configs=stacked_gemm_configs(),
        key=["M_BUCKET", "N", "K", "EPILOGUE", "ACTIVATION", "STORE_PREACT"],
        do_bench=_graph_benchmark,
    )(stacked_gemm_kernel)


# problem key (GPU model first) -> the configuration the autotuner chose for it, with its
# launch arguments
_chosen_configs = {}


def chosen_config(key, fast_accum: bool, stacked: bool):
    """(configuration, its launch keyword arguments) remembered for `key`, None until the
    autotuner has picked one; under the interpreter always its single configuration."""
    if interpreting():
        return _interpreter_config(fast_accum, stacked)
    return _chosen_configs.get(key)


def remember_config(key, config) -> None:
    _chosen_configs[key] = with_launch_kwargs(config)
