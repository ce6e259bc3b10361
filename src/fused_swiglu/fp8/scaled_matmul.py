"""The float8 building blocks of the training path, each with one implementation that the
kernels or cuBLAS run and one in plain PyTorch that computes the same: rowwise quantization,
and the product of two rowwise-quantized operands.

Every product is written ``A @ B^T`` with both operands quantized along their shared dimension
(the GEMM's K): ``a_q`` ``(P, R)`` and ``b_q`` ``(Q, R)``, row-major, with float32 scales
``(P, 1)`` and ``(Q, 1)``. That is the one form cuBLAS's float8 GEMM takes with a scale per row
of each operand (``torch._scaled_mm(a_q, b_q.t(), ...)``: B column-major)."""

import torch

from ..tuning import runs_kernels
from .launch import quantize_groups
from .rows_columns import quantize_rows_and_columns
from .recipe import quantize_rowwise

# cuBLAS's float8 GEMM needs the shared dimension in multiples of 16; the row counts are
# padded alike, to stay on the sizes its rowwise kernels are known to take
_CUBLAS_MULTIPLE = 16


def quantize_rows(t: torch.Tensor):
    """``(q, scales)``: t ``(rows, K)`` (bfloat16 or float16, any strides) in float8_e4m3fn,
    one scale per row (fused_swiglu.fp8.recipe's rowwise scaling); q row-major. The kernel
    where it runs, the recipe (bit for bit the same) elsewhere."""
    if runs_kernels(t) and t.numel():
        return quantize_groups(t, None)
    return quantize_rowwise(t)


def quantize_both_ways(t: torch.Tensor, rows: bool = True, columns: bool = True,
                       maxima=None):
    """``(by_rows, by_columns)``: quantize_rows(t) and quantize_rows(t.t()) of t ``(M, N)``, bit
    for bit, None where not asked for; the two-way kernels (fp8/rows_columns.py: two reads of t
    for both, one with the `maxima` that the pass writing t recorded) where they run, the
    recipe elsewhere."""
    if runs_kernels(t) and t.numel():
        return quantize_rows_and_columns(t, rows, columns, maxima)
    return (quantize_rowwise(t) if rows else None, quantize_rowwise(t.t()) if columns else None)


def _padded(q: torch.Tensor, columns: int) -> torch.Tensor:
    """q (rows, K) float8 with zero columns appended up to `columns` (float8 zero is byte 0)."""
    bytes_ = q.view(torch.uint8)
    return torch.nn.functional.pad(bytes_, (0, columns - q.shape[1])).view(q.dtype)


def scaled_matmul(a_q, a_scales, b_q, b_scales, out_dtype):
    """``(a_q * a_scales) @ (b_q * b_scales)^T`` in ``out_dtype``, summed in float32.

    On a GPU cuBLAS's float8 GEMM (``torch._scaled_mm``), whose rowwise scaling writes
    bfloat16 only (float16 results are rounded from it): the shared dimension and the row
    counts of A and B are padded with zeros to multiples of 16 where they are not (the result
    is then a slice of a larger one). Elsewhere PyTorch on the dequantized operands in
    float32 (the same sums, up to their order)."""
    p, r = a_q.shape
    q = b_q.shape[0]
    if not a_q.is_cuda:
        a = a_q.to(torch.float32) * a_scales
        b = b_q.to(torch.float32) * b_scales
        return (a @ b.t()).to(out_dtype)
    if p == 0 or q == 0 or r == 0:
        return torch.zeros(p, q, dtype=out_dtype, device=a_q.device)
    width = _round_up(r)
    if width != r:
        a_q, b_q = _padded(a_q, width), _padded(b_q, width)
    # zero rows of A and B where the row counts are ragged: their results are dropped
    a_q, a_scales = _extra_rows(a_q, a_scales, _round_up(p))
    b_q, b_scales = _extra_rows(b_q, b_scales, _round_up(q))
    out = torch._scaled_mm(a_q, b_q.t(), scale_a=a_scales, scale_b=b_scales.t().contiguous(),
                           out_dtype=torch.bfloat16)[:p, :q]
    return out if out_dtype == torch.bfloat16 else out.to(out_dtype)


def _round_up(n: int) -> int:
    return -(-n // _CUBLAS_MULTIPLE) * _CUBLAS_MULTIPLE


def _extra_rows(q: torch.Tensor, scales: torch.Tensor, rows: int):
    """q (n, R) float8 and its scales (n, 1) with zero rows (scale 1) appended up to `rows`."""
    n = q.shape[0]
    if rows == n:
        return q, scales
    zeros = torch.zeros(rows - n, q.shape[1], dtype=torch.uint8, device=q.device)
    return (torch.cat([q.view(torch.uint8), zeros]).view(q.dtype),
            torch.cat([scales, scales.new_ones(rows - n, 1)]))


def matmul_fp8(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` for 2-D 16-bit a ``(P, R)`` and b ``(R, Q)``, each quantized along R with one
    scale per row of a and one per column of b; in a's dtype, laid out as ``(P, Q)``
    row-major."""
    a_q, a_s = quantize_rows(a)
    b_q, b_s = quantize_rows(b.t())
    return scaled_matmul(a_q, a_s, b_q, b_s, a.dtype)
