"""The float8 forward's specification, in plain PyTorch: what float8 SwiGLU kernels are judged
against."""

import torch

from ..activations import ACTIVATIONS, derivative
from ..checks import check_activation, check_flags, check_swiglu_inputs
from .recipe import (dequantize_blockwise, dequantize_rowwise, quantize_blockwise,
                     quantize_rowwise)

GRANULARITIES = ("blockwise", "rowwise")


def fp8_operand(t: torch.Tensor, granularity: str, weight: bool, pow2_scales: bool = False):
    """``t`` (rows, K) quantized to float8_e4m3fn along K and dequantized again, in float32:
    per row (rowwise) or in 1 x 128 groups (blockwise); 128 x 128 blocks for a weight."""
    if granularity == "rowwise":
        return dequantize_rowwise(*quantize_rowwise(t, pow2_scales=pow2_scales))
    block = (128, 128) if weight else (1, 128)
    q, scales = quantize_blockwise(t, block, pow2_scales=pow2_scales)
    return dequantize_blockwise(q, scales, block)


def swiglu_fp8_reference(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, *,
                         granularity: str = "blockwise", activation: str = "silu",
                         pow2_scales: bool = False) -> torch.Tensor:
    """``act(x @ w_gate) * (x @ w_up)`` with float8_e4m3fn operands, as a float8 GEMM with
    float32 scales computes it.

    Args:
        x: ``(..., d_model)``.
        w_gate, w_up: ``(d_model, d_ff)``, any strides, like :func:`fused_swiglu.swiglu`'s.
        granularity: ``"blockwise"`` (DeepSeek-V3): x in 1 x 128 groups along d_model (one
            scale per token per 128 columns), each weight in 128 x 128 blocks; or
            ``"rowwise"``: one scale per token of x and one per output channel (column) of
            each weight.
        activation: ``"silu"``, ``"gelu_tanh"`` or ``"gelu"`` (fused_swiglu.activations).
        pow2_scales: scales rounded up to powers of two (fused_swiglu.fp8.recipe).

    x and the weights are quantized along d_model (the GEMMs' K) with scales from their current
    values (fused_swiglu.fp8.recipe) and dequantized; the products, exact sums of the
    dequantized values in float64, and ``act(g) * u`` are computed in float64 and the result is
    rounded once to x's dtype. Inputs are checked as :func:`fused_swiglu.swiglu` checks them;
    ValueError for an unknown granularity.

    Returns:
        ``(..., d_ff)`` in x's dtype.
    """
    check_activation("swiglu_fp8_reference", activation)
    check_flags("swiglu_fp8_reference", pow2_scales=pow2_scales)
    if granularity not in GRANULARITIES:
        raise ValueError(f"swiglu_fp8_reference: unknown granularity {granularity!r}; use "
                         f"{' or '.join(GRANULARITIES)}")
    check_swiglu_inputs(x, w_gate, w_up, fast_accum=False)
    d_model, d_ff = w_gate.shape
    a = fp8_operand(x.reshape(-1, d_model), granularity, False, pow2_scales).double()
    # a weight's rows along K are its transpose's: (d_ff, d_model), one row per output channel
    gate = a @ fp8_operand(w_gate.t(), granularity, True, pow2_scales).double().t()
    up = a @ fp8_operand(w_up.t(), granularity, True, pow2_scales).double().t()
    y = ACTIVATIONS[activation](gate) * up
    return y.to(x.dtype).reshape(*x.shape[:-1], d_ff)


def _rowwise(t: torch.Tensor) -> torch.Tensor:
    """t (rows, K) quantized per row along K by the recipe, dequantized, in float64."""
    return dequantize_rowwise(*quantize_rowwise(t)).double()


def _product(a: torch.Tensor, b: torch.Tensor, dtype) -> torch.Tensor:
    """a @ b (a (P, R), b (R, Q)) with both quantized along R, products in float64, rounded
    once to dtype."""
    return (_rowwise(a) @ _rowwise(b.t()).t()).to(dtype)


def _gated_grads(d_hidden, gate, up, activation, dtype):
    """(dg, du) from the stored g and u, in float32 as the elementwise pass computes them,
    rounded to dtype."""
    d_hidden, gate, up = d_hidden.float(), gate.float(), up.float()
    return ((d_hidden * up * derivative(activation, gate)).to(dtype),
            (d_hidden * ACTIVATIONS[activation](gate)).to(dtype))


def swiglu_fp8_training_reference(x, w_gate, w_up, d_out, w_down=None, *,
                                  activation: str = "silu"):
    """The output and gradients of ``swiglu(x, w_gate, w_up, fp8="rowwise")`` (with
    ``w_down``, of ``swiglu_mlp(..., fp8="rowwise")``) for the output gradient ``d_out``, as
    fused_swiglu.fp8.training specifies them: each product's operands quantized by the recipe
    along that product's K (one scale per row or column), dequantized and multiplied in
    float64, the result rounded once to x's dtype; g and u stored in x's dtype, dg and du
    computed from them in float32 and rounded to it; dx the sum of its two products, each
    rounded.

    Returns:
        ``{"out": ..., "x": dx, "w_gate": ..., "w_up": ...}`` (and ``"w_down"``), each in x's
        dtype and shape of its tensor.
    """
    check_activation("swiglu_fp8_training_reference", activation)
    check_swiglu_inputs(x, w_gate, w_up, fast_accum=False)
    dtype = x.dtype
    d_model, d_ff = w_gate.shape
    x2 = x.reshape(-1, d_model)
    a = _rowwise(x2)
    gate, up = (a @ _rowwise(w.t()).t() for w in (w_gate, w_up))
    y = (ACTIVATIONS[activation](gate) * up).to(dtype)
    gate, up = gate.to(dtype), up.to(dtype)
    grads = {}
    if w_down is None:
        out, d_hidden = y, d_out.reshape(-1, d_ff)
    else:
        out = _product(y, w_down, dtype)
        d_out2 = d_out.reshape(-1, d_model)
        # the backward writes y again from the stored g and u
        y_again = (ACTIVATIONS[activation](gate.float()) * up.float()).to(dtype)
        grads["w_down"] = _product(y_again.t(), d_out2, dtype)
        d_hidden = _product(d_out2, w_down.t(), dtype)
    d_gate, d_up = _gated_grads(d_hidden, gate, up, activation, dtype)
    grads["x"] = (_product(d_gate, w_gate.t(), dtype) + _product(d_up, w_up.t(), dtype)
                  ).reshape(x.shape)
    grads["w_gate"] = _product(x2.t(), d_gate, dtype)
    grads["w_up"] = _product(x2.t(), d_up, dtype)
    return {"out": out.reshape(*x.shape[:-1], out.shape[-1]), **grads}
