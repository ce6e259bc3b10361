"""The float8 forward's specification, in plain PyTorch: what float8 SwiGLU kernels are judged
against."""

import torch

from ..activations import ACTIVATIONS
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
