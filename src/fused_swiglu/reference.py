"""The specification, in plain PyTorch."""

import torch


def swiglu_reference(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor) -> torch.Tensor:
    """SwiGLU feed-forward gate: ``silu(x @ w_gate) * (x @ w_up)``.

    Args:
        x: ``(..., d_model)``, any number of leading dimensions (zero tokens included).
        w_gate: ``(d_model, d_ff)``, any strides (``nn.Linear(d_model, d_ff).weight.T`` works).
        w_up: ``(d_model, d_ff)``, like ``w_gate``.

    All three share one floating dtype. The products and the activation are computed in
    float32 (float64 stays float64) and the result is rounded once to x's dtype.

    Returns:
        ``(..., d_ff)`` in x's dtype, where ``silu(z) = z * sigmoid(z)``.
    """
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    gate = x.to(compute) @ w_gate.to(compute)
    up = x.to(compute) @ w_up.to(compute)
    return (torch.nn.functional.silu(gate) * up).to(x.dtype)
