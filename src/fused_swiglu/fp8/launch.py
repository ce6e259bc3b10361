"""Validate, allocate and launch the float8 quantization kernel (kernels/quantize.py) and the
pointer-load float8 GEMM (kernels/fp8_gemm.py)."""

import torch

from ..checks import check_activation, check_flags
from ..kernels.fp8_gemm import BLOCKWISE, ROWWISE, SCALE_GROUP, fp8_swiglu_kernel
from ..kernels.quantize import quantize_groups_kernel
from ..launch import ACTIVATION_CODES
from ..tuning import interpreting
from .recipe import FP8_MAX, check_fp8_dtype, check_operand
from .reference import GRANULARITIES

# the kernel reads these (float64 stays with the recipe)
KERNEL_INPUT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)

# quantize_groups' launch. A group up to ONE_CHUNK_MAX_WIDTH columns wide (rounded up to a
# power of two) is read once and held in registers, BLOCK_ELEMENTS to a program, with
# ELEMENTS_PER_THREAD in each thread's registers; a wider one is walked twice (its maximum,
# then its quantization) in chunks of MAX_BLOCK_K columns, TWO_PASS_BLOCK_M rows a program.
# On an H200 (NOTES.md, v16) one read took 31 us for 8192 x 4096 where two took 50, and 83 us
# for 1 x 128 groups of 8192 x 11008 where two took 114; whole rows of 11008 or 28672 columns
# (16384 and 32768 lanes) were 1.2x faster in two passes. Under the interpreter the threshold
# is low, so that the CPU tests take both ways.
ONE_CHUNK_MAX_WIDTH = 8192
INTERPRETER_ONE_CHUNK_MAX_WIDTH = INTERPRETER_MAX_BLOCK_K = 64
BLOCK_ELEMENTS = 4096
ELEMENTS_PER_THREAD = 32
TWO_PASS_BLOCK_M = 8
MAX_BLOCK_K = 1024


def new_output(shape, dtype, like: torch.Tensor) -> torch.Tensor:
    """Uninitialised output memory; every element is written by the kernel."""
    return torch.empty(shape, device=like.device, dtype=dtype)


def _next_power_of_2(n: int) -> int:
    return 1 << (max(n, 1) - 1).bit_length()


def quantize_groups(t: torch.Tensor, group=128, dtype=torch.float8_e4m3fn,
                    pow2_scales: bool = False):
    """Quantize ``t`` to float8 with one float32 scale per ``group`` columns of each row, as
    fused_swiglu.fp8.recipe specifies: ``group=128`` is ``quantize_blockwise(t, (1, 128))``,
    ``group=None`` one scale per row, ``quantize_rowwise(t)``.

    Args:
        t: ``(M, K)``, bfloat16, float16 or float32, any strides; on a GPU, or on the CPU
            under Triton's interpreter.
        group: a positive number of columns per scale, or None for whole rows.
        dtype: ``torch.float8_e4m3fn`` or ``torch.float8_e5m2``.
        pow2_scales: round each scale up to a power of two.

    Returns:
        ``(q, scales)``: ``q`` ``(M, K)`` row-major in ``dtype``; ``scales`` float32
        ``(M, ceil(K / group))`` (``(M, 1)`` for whole rows).
    """
    check_operand("quantize_groups", t, dtypes=KERNEL_INPUT_DTYPES)
    check_fp8_dtype("quantize_groups", dtype)
    check_flags("quantize_groups", pow2_scales=pow2_scales)
    if group is not None and (not isinstance(group, int) or isinstance(group, bool)
                              or group < 1):
        raise ValueError(f"quantize_groups: group must be a positive int or None (whole rows), "
                         f"got {group!r}")
    if not (t.is_cuda or interpreting()):
        raise ValueError(f"quantize_groups: t is on {t.device}; the kernel runs on a GPU, or on "
                         f"the CPU under Triton's interpreter (TRITON_INTERPRET=1)")
    M, K = t.shape
    rowwise = group is None
    if rowwise:
        group = max(K, 1)
    n_groups = 1 if rowwise else -(-K // group)
    q = new_output((M, K), dtype, t)
    scales = new_output((M, n_groups), torch.float32, t)
    if M == 0 or K == 0:
        # nothing to read: every scale is an all-zero group's, 1 (as the recipe has it)
        scales.fill_(1.0)
        return q, scales
    block_m, block_k, one_chunk, num_warps = _groups_launch(group, t.stride(1) == 1 or K == 1)
    grid = (-(-M // block_m), n_groups)
    quantize_groups_kernel[grid](
        t, q, scales,
        M, K, group,
        t.stride(0), t.stride(1), q.stride(0), q.stride(1), scales.stride(0), scales.stride(1),
        FP8_MAX=FP8_MAX[dtype], POW2_SCALES=pow2_scales, BLOCK_M=block_m, BLOCK_K=block_k,
        ONE_CHUNK=one_chunk, num_warps=num_warps,
    )
    return q, scales


def _groups_launch(group: int, contiguous_rows: bool):
    """(BLOCK_M, BLOCK_K, ONE_CHUNK, num_warps) of quantize_groups_kernel for groups of
    `group` columns. Rows strided in memory (a transposed nn.Linear weight) take the two
    passes of TWO_PASS_BLOCK_M rows, whose neighbouring rows make the loads' contiguous
    stretches: one read of few rows ran 1.6-3.5x slower there, and the two-way kernels'
    coalesced tiles no faster than these two passes, in two launches (NOTES.md, v16)."""
    width = _next_power_of_2(group)
    one_chunk_max, max_block_k = ((INTERPRETER_ONE_CHUNK_MAX_WIDTH, INTERPRETER_MAX_BLOCK_K)
                                  if interpreting() else (ONE_CHUNK_MAX_WIDTH, MAX_BLOCK_K))
    if width > one_chunk_max or not contiguous_rows:
        return TWO_PASS_BLOCK_M, min(width, max_block_k), False, 4
    block_m = max(1, BLOCK_ELEMENTS // width)
    threads = block_m * width // ELEMENTS_PER_THREAD
    return block_m, width, True, min(max(threads // 32, 1), 16)


# granularity name (fused_swiglu.fp8.reference) -> the GEMM kernel's GRANULARITY
GRANULARITY_CODES = {"rowwise": ROWWISE, "blockwise": BLOCKWISE}

# the forward GEMM's output dtypes
GEMM_OUT_DTYPES = (torch.bfloat16, torch.float16)

# One untuned configuration per granularity, (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps,
# num_stages), to be measured on a GPU. Blockwise needs BLOCK_K = 128 (one activation scale per
# row of a K step) and a BLOCK_N dividing 128 (one weight scale per tile). Under the interpreter
# small tiles keep the CPU tests fast and make them cross several tiles.
GEMM_CONFIGS = {"rowwise": (128, 128, 128, 8, 8, 3), "blockwise": (128, 128, 128, 8, 8, 3)}
INTERPRETER_GEMM_CONFIGS = {"rowwise": (32, 32, 32, 2, 4, 1), "blockwise": (32, 32, 128, 2, 4, 1)}


def _check_fp8_operand(caller: str, name: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{caller}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 2:
        raise ValueError(f"{caller}: {name} must be 2-D, got shape {tuple(t.shape)}")
    if t.dtype != torch.float8_e4m3fn:
        raise TypeError(f"{caller}: {name} must be torch.float8_e4m3fn, got {t.dtype}")


def _check_scales(caller: str, name: str, scales, expected) -> None:
    if not isinstance(scales, torch.Tensor) or scales.dtype != torch.float32:
        raise TypeError(f"{caller}: {name} must be a float32 tensor, got "
                        f"{getattr(scales, 'dtype', type(scales).__name__)}")
    if tuple(scales.shape) != expected:
        raise ValueError(f"{caller}: {name} has shape {tuple(scales.shape)}, expected {expected}")


def check_gemm_options(caller: str, activation, store_preact, out_dtype) -> None:
    """The options the float8 GEMM kernels share."""
    check_activation(caller, activation)
    check_flags(caller, store_preact=store_preact)
    if out_dtype not in GEMM_OUT_DTYPES:
        raise TypeError(f"{caller}: out_dtype must be torch.bfloat16 or torch.float16, got "
                        f"{out_dtype!r}")


def check_runnable(caller: str, tensors) -> None:
    """The operands and scales on one device where the kernels run (tensors[0] is x_q)."""
    if len({t.device for t in tensors}) != 1:
        raise ValueError(f"{caller}: the operands and scales must share a device, got "
                         f"{[str(t.device) for t in tensors]}")
    if not (tensors[0].is_cuda or interpreting()):
        raise ValueError(f"{caller}: x_q is on {tensors[0].device}; the kernel runs on a GPU, "
                         f"or on the CPU under Triton's interpreter (TRITON_INTERPRET=1)")


def fp8_swiglu_forward(x_q, x_scales, wg_q, wg_scales, wu_q, wu_scales, *, granularity,
                       activation="silu", out_dtype=torch.bfloat16, store_preact=False):
    """``y = act(g) * u`` with ``g = x @ w_gate^T`` and ``u = x @ w_up^T`` from float8
    operands, as fused_swiglu.fp8.reference specifies (products accumulated in float32).

    Args:
        x_q: ``(M, K)`` float8_e4m3fn, any strides, with float32 ``x_scales``: ``(M, 1)``
            (rowwise) or ``(M, ceil(K / 128))`` (blockwise, 1 x 128 groups).
        wg_q, wu_q: ``(N, K)`` float8_e4m3fn, nn.Linear's layout, contiguous along K
            (``stride(1) == 1``), with float32 ``wg_scales`` and ``wu_scales``: ``(N, 1)``
            (rowwise, per output channel) or ``(ceil(N / 128), ceil(K / 128))`` (blockwise,
            128 x 128 blocks); fused_swiglu.fp8.recipe makes all of them.
        granularity: ``"rowwise"`` or ``"blockwise"``.
        activation: ``"silu"``, ``"gelu_tanh"`` or ``"gelu"``.
        out_dtype: ``torch.bfloat16`` or ``torch.float16``.
        store_preact: also return g and u.

    Returns:
        ``y`` ``(M, N)`` in ``out_dtype``; with store_preact ``(y, g, u)``, three such tensors.
    """
    caller = "fp8_swiglu_forward"
    for name, t in (("x_q", x_q), ("wg_q", wg_q), ("wu_q", wu_q)):
        _check_fp8_operand(caller, name, t)
    if granularity not in GRANULARITIES:
        raise ValueError(f"{caller}: unknown granularity {granularity!r}; use "
                         f"{' or '.join(GRANULARITIES)}")
    check_gemm_options(caller, activation, store_preact, out_dtype)
    M, K = x_q.shape
    N = wg_q.shape[0]
    for name, w in (("wg_q", wg_q), ("wu_q", wu_q)):
        if tuple(w.shape) != (N, K):
            raise ValueError(f"{caller}: {name} has shape {tuple(w.shape)}; the weights must be "
                             f"(N, K) = {(N, K)} for x_q {tuple(x_q.shape)}, as nn.Linear "
                             f"stores them")
        if w.stride(1) != 1 and K > 1:
            raise ValueError(f"{caller}: {name} must be contiguous along K (nn.Linear's layout, "
                             f"as float8 tensor cores read B), got strides {w.stride()}")
    k_groups, n_blocks = -(-K // SCALE_GROUP), -(-N // SCALE_GROUP)
    rowwise = granularity == "rowwise"
    _check_scales(caller, "x_scales", x_scales, (M, 1) if rowwise else (M, k_groups))
    for name, scales in (("wg_scales", wg_scales), ("wu_scales", wu_scales)):
        _check_scales(caller, name, scales, (N, 1) if rowwise else (n_blocks, k_groups))
    check_runnable(caller, (x_q, x_scales, wg_q, wg_scales, wu_q, wu_scales))

    y = new_output((M, N), out_dtype, x_q)
    gate, up = ((new_output((M, N), out_dtype, x_q), new_output((M, N), out_dtype, x_q))
                if store_preact else (y, y))
    if M and N:
        configs = INTERPRETER_GEMM_CONFIGS if interpreting() else GEMM_CONFIGS
        block_m, block_n, block_k, group_m, num_warps, num_stages = configs[granularity]
        assert rowwise or (block_k == SCALE_GROUP and SCALE_GROUP % block_n == 0)
        grid = (-(-M // block_m) * -(-N // block_n),)
        fp8_swiglu_kernel[grid](
            x_q, x_scales, wg_q, wg_scales, wu_q, wu_scales,
            y, gate, up,
            M, N, K,
            x_q.stride(0), x_q.stride(1),
            wg_q.stride(0), wg_q.stride(1),
            wu_q.stride(0), wu_q.stride(1),
            x_scales.stride(0), x_scales.stride(1),
            wg_scales.stride(0), wg_scales.stride(1),
            wu_scales.stride(0), wu_scales.stride(1),
            y.stride(0), y.stride(1),
            GRANULARITY=GRANULARITY_CODES[granularity], ACTIVATION=ACTIVATION_CODES[activation],
            STORE_PREACT=store_preact,
            BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, GROUP_M=group_m,
            num_warps=num_warps, num_stages=num_stages,
        )
    return (y, gate, up) if store_preact else y
