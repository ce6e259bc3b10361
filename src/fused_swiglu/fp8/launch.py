"""Validate, allocate and launch the float8 quantization kernel (kernels/quantize.py)."""

import torch

from ..checks import check_flags
from ..kernels.quantize import quantize_groups_kernel
from ..tuning import interpreting
from .recipe import FP8_MAX, check_fp8_dtype, check_operand

# the kernel reads these (float64 stays with the recipe)
KERNEL_INPUT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)

# Untuned starting points, to be measured on a GPU: rows per program, and the widest column
# chunk a program holds at once (a whole row of a rowwise group is walked in chunks).
BLOCK_M = 8
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
    block_k = min(_next_power_of_2(group), MAX_BLOCK_K)
    grid = (-(-M // BLOCK_M), n_groups)
    quantize_groups_kernel[grid](
        t, q, scales,
        M, K, group,
        t.stride(0), t.stride(1), q.stride(0), q.stride(1), scales.stride(0), scales.stride(1),
        FP8_MAX=FP8_MAX[dtype], POW2_SCALES=pow2_scales, BLOCK_M=BLOCK_M, BLOCK_K=block_k,
    )
    return q, scales
