"""Rowwise float8 quantization of a matrix and of its transpose from two reads of it
(kernels/quantize.py: row_column_amax_kernel, quantize_rows_columns_kernel).

The backward needs each gradient both ways: dg per token along d_ff for dx, and dg^T per
channel along the tokens for the weight gradient. quantize_groups would read dg twice for
each (a maximum pass and a quantizing pass), and read dg^T through strides 16 bytes wide; here
64 x 64 tiles read dg once for both maxima and once for both quantizations."""

import torch

from ..checks import check_flags
from ..kernels.quantize import quantize_rows_columns_kernel, row_column_amax_kernel
from ..tuning import interpreting
from . import launch
from .launch import KERNEL_INPUT_DTYPES
from .recipe import FP8_MAX, check_operand

# (BLOCK_M, BLOCK_N, num_warps) of both kernels, measured on an H200 (NOTES.md, v16); under
# the interpreter small tiles make the tests cross several
GPU_BLOCK = (64, 64, 4)
INTERPRETER_BLOCK = (16, 16, 4)
DTYPE = torch.float8_e4m3fn


def quantize_rows_and_columns(t: torch.Tensor, rows: bool = True, columns: bool = True,
                              maxima=None):
    """``t`` ``(M, N)`` in float8_e4m3fn with rowwise scaling both ways: exactly what
    ``quantize_groups(t, None)`` and ``quantize_groups(t.t(), None)`` return for finite t (the
    recipe leaves the scales of NaN and infinity unspecified; here a NaN makes its row's and
    column's scales NaN).

    Args:
        t: ``(M, N)``, bfloat16, float16 or float32, any strides; on a GPU, or on the CPU
            under Triton's interpreter.
        rows, columns: which of the two to compute.
        maxima: None, or the int32 bits of max |t| of each row, then of each column (``M + N``
            elements), where the pass that wrote t recorded them
            (launch.swiglu_grads_from_preact): t is then read once, not twice.

    Returns:
        ``(by_rows, by_columns)``: ``by_rows`` is ``(q, scales)`` with ``q`` ``(M, N)``
        row-major and ``scales`` ``(M, 1)``; ``by_columns`` is the same of ``t^T``: ``q``
        ``(N, M)`` row-major, ``scales`` ``(N, 1)``; None for a direction not asked for.
    """
    caller = "quantize_rows_and_columns"
    check_operand(caller, t, dtypes=KERNEL_INPUT_DTYPES)
    check_flags(caller, rows=rows, columns=columns)
    if not (t.is_cuda or interpreting()):
        raise ValueError(f"{caller}: t is on {t.device}; the kernel runs on a GPU, or on the "
                         f"CPU under Triton's interpreter (TRITON_INTERPRET=1)")
    M, N = t.shape
    # looked up on the module at each call, so that tests can poison the outputs
    new_output = launch.new_output
    by_rows = ((new_output((M, N), DTYPE, t), new_output((M, 1), torch.float32, t))
               if rows else None)
    by_columns = ((new_output((N, M), DTYPE, t), new_output((N, 1), torch.float32, t))
                  if columns else None)
    if M == 0 or N == 0 or not (rows or columns):
        # nothing to read: every scale is an all-zero group's, 1 (as the recipe has it)
        for pair in (by_rows, by_columns):
            if pair is not None:
                pair[1].fill_(1.0)
        return by_rows, by_columns
    block_m, block_n, num_warps = INTERPRETER_BLOCK if interpreting() else GPU_BLOCK
    grid = (-(-M // block_m), -(-N // block_n))
    if maxima is None:
        # one zeroed buffer for both maxima: one allocation and one fill kernel fewer per call
        maxima = torch.zeros(M + N, dtype=torch.int32, device=t.device)
        row_column_amax_kernel[grid](t, maxima[:M], maxima[M:], M, N, t.stride(0),
                                     t.stride(1), BLOCK_M=block_m, BLOCK_N=block_n,
                                     num_warps=num_warps)
    elif maxima.shape != (M + N,) or maxima.dtype != torch.int32:
        raise ValueError(f"{caller}: maxima must be int32 of shape ({M + N},) for t "
                         f"{tuple(t.shape)}, got {maxima.dtype} of shape {tuple(maxima.shape)}")
    row_amax, column_amax = maxima[:M], maxima[M:]
    q_rows, row_scales = by_rows or (None, None)
    q_columns, column_scales = by_columns or (None, None)
    quantize_rows_columns_kernel[grid](
        t, row_amax, column_amax, q_rows, row_scales, q_columns, column_scales,
        M, N, t.stride(0), t.stride(1), N, M,
        FP8_MAX=FP8_MAX[DTYPE], ROWS=rows, COLUMNS=columns, BLOCK_M=block_m, BLOCK_N=block_n,
        num_warps=num_warps,
    )
    return by_rows, by_columns
