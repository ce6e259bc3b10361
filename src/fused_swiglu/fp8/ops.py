"""The float8 steps as custom ops, so that torch.compile traces fp8=True as opaque calls (their
fake implementations give the shapes), while eager calls run them directly: a custom op's
dispatch costs host time on every call (about 8 µs a call, measured on a CPU; a float8
block's forward+backward makes about 25 of them), which the GPU waits for wherever its kernels
are short (v15, H200: the block's kernels at 8192 x 2048 x 5632 took 2.2 ms of a 3.3 ms
span)."""

import torch
from torch import Tensor

from . import scaled_matmul as _matmul
from .gated import gated_forward as _gated_forward
from .stacked import stack_weights_fp8


def quantize_rows(t: Tensor) -> tuple[Tensor, Tensor]:
    """(q, scales): t (rows, K) in float8_e4m3fn, one float32 scale per row."""
    if torch.compiler.is_compiling():
        return _quantize_rows(t)
    return _matmul.quantize_rows(t)


@torch.library.custom_op("fused_swiglu::fp8_quantize_rows", mutates_args=())
def _quantize_rows(t: Tensor) -> tuple[Tensor, Tensor]:
    return _matmul.quantize_rows(t)


@_quantize_rows.register_fake
def _(t):
    return (t.new_empty(t.shape, dtype=torch.float8_e4m3fn),
            t.new_empty((t.shape[0], 1), dtype=torch.float32))


@torch.library.custom_op("fused_swiglu::fp8_quantize_both_ways", mutates_args=())
def _quantize_both_ways(t: Tensor, rows: bool,
                        columns: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(q, scales) of t's rows, then of t^T's; empty for a direction not asked for."""
    by_rows, by_columns = _matmul.quantize_both_ways(t, rows, columns)
    return (*(by_rows or _empty_pair(t)), *(by_columns or _empty_pair(t)))


def _empty_pair(t):
    return t.new_empty((0,), dtype=torch.float8_e4m3fn), t.new_empty((0,), dtype=torch.float32)


@_quantize_both_ways.register_fake
def _(t, rows, columns):
    m, n = t.shape
    by_rows = ((t.new_empty((m, n), dtype=torch.float8_e4m3fn),
                t.new_empty((m, 1), dtype=torch.float32)) if rows else _empty_pair(t))
    by_columns = ((t.new_empty((n, m), dtype=torch.float8_e4m3fn),
                   t.new_empty((n, 1), dtype=torch.float32)) if columns else _empty_pair(t))
    return (*by_rows, *by_columns)


def quantize_both_ways(t: Tensor, rows: bool = True, columns: bool = True, maxima=None):
    """(by_rows, by_columns): quantize_rows(t) and quantize_rows(t.t()), None where not
    asked for; maxima: t's, where the eager pass that wrote t recorded them (compiled graphs
    compute them again)."""
    if not torch.compiler.is_compiling():
        return _matmul.quantize_both_ways(t, rows, columns, maxima)
    q_rows, row_scales, q_columns, column_scales = _quantize_both_ways(t, rows, columns)
    return ((q_rows, row_scales) if rows else None,
            (q_columns, column_scales) if columns else None)


def scaled_matmul(a_q: Tensor, a_scales: Tensor, b_q: Tensor, b_scales: Tensor,
                  out_dtype: torch.dtype) -> Tensor:
    """(a_q * a_scales) @ (b_q * b_scales)^T in out_dtype, row-major."""
    if torch.compiler.is_compiling():
        return _scaled_matmul(a_q, a_scales, b_q, b_scales, out_dtype)
    return _row_major_scaled_matmul(a_q, a_scales, b_q, b_scales, out_dtype)


def _row_major_scaled_matmul(a_q, a_scales, b_q, b_scales, out_dtype):
    return _matmul.scaled_matmul(a_q, a_scales, b_q, b_scales, out_dtype).contiguous()


@torch.library.custom_op("fused_swiglu::fp8_scaled_matmul", mutates_args=())
def _scaled_matmul(a_q: Tensor, a_scales: Tensor, b_q: Tensor, b_scales: Tensor,
                   out_dtype: torch.dtype) -> Tensor:
    return _row_major_scaled_matmul(a_q, a_scales, b_q, b_scales, out_dtype)


@_scaled_matmul.register_fake
def _(a_q, a_scales, b_q, b_scales, out_dtype):
    return a_q.new_empty((a_q.shape[0], b_q.shape[0]), dtype=out_dtype)


def gated_forward(x_q: Tensor, x_scales: Tensor, w_gate: Tensor, w_up: Tensor,
                  dtype: torch.dtype, activation: str, store_preact: bool):
    """(y, g, u) in dtype from x's quantization and the (K, N) weights, quantized here; g and
    u None (empty tensors when compiling) unless store_preact."""
    if torch.compiler.is_compiling():
        return _gated_forward_op(x_q, x_scales, w_gate, w_up, dtype, activation, store_preact)
    return _stacked_gated_forward(x_q, x_scales, w_gate, w_up, dtype, activation, store_preact)


def _stacked_gated_forward(x_q, x_scales, w_gate, w_up, dtype, activation, store_preact):
    """fp8/gated.py's forward, both weights quantized into stack_weights_fp8's buffer first."""
    return _gated_forward(x_q, x_scales, *stack_weights_fp8(w_gate.t(), w_up.t()), dtype,
                          activation, store_preact)


@torch.library.custom_op("fused_swiglu::fp8_gated_forward", mutates_args=())
def _gated_forward_op(x_q: Tensor, x_scales: Tensor, w_gate: Tensor, w_up: Tensor,
                      dtype: torch.dtype, activation: str,
                      store_preact: bool) -> tuple[Tensor, Tensor, Tensor]:
    y, gate, up = _stacked_gated_forward(x_q, x_scales, w_gate, w_up, dtype, activation,
                                         store_preact)
    if not store_preact:
        gate, up = y.new_empty((0,)), y.new_empty((0,))
    return y, gate, up


@_gated_forward_op.register_fake
def _(x_q, x_scales, w_gate, w_up, dtype, activation, store_preact):
    shape = (x_q.shape[0], w_gate.shape[1])
    preact = shape if store_preact else (0,)
    return tuple(x_q.new_empty(s, dtype=dtype) for s in (shape, preact, preact))
