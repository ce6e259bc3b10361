"""The specification, in plain PyTorch."""

import torch

from .checks import ACTIVATIONS, check_activation, check_swiglu_inputs

# The accuracy contract, checked by the tests and by `python -m fused_swiglu`: bounds on
# ||ours - ref|| / ||ref|| against a float64 reference, for the output and for each gradient.
# bfloat16 keeps 8 significant bits (unit roundoff 2**-9 = 2.0e-3) and float16 11
# (2**-11 = 4.9e-4); inputs, g, u, dg, du and the result are each rounded once, so a correct
# kernel lands at a few unit roundoffs: measured on the CPU test shapes up to 3.8e-3 in
# bfloat16 and 5.4e-4 in float16, where eager PyTorch's own error in the same dtype reaches
# 4.8e-3 and 6.0e-4. The bounds are about twice eager PyTorch's error. float32 runs in full
# precision (no TF32): 1e-4 leaves room for accumulation order over K in the thousands.
TOLERANCE = {torch.bfloat16: 1e-2, torch.float16: 1.2e-3, torch.float32: 1e-4}


def swiglu_reference(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, *,
                     activation: str = "silu") -> torch.Tensor:
    """Gated feed-forward: ``act(x @ w_gate) * (x @ w_up)``, SwiGLU with the default SiLU.

    Args:
        x: ``(..., d_model)``, any number of leading dimensions (zero tokens included).
        w_gate: ``(d_model, d_ff)``, any strides (``nn.Linear(d_model, d_ff).weight.T`` works).
        w_up: ``(d_model, d_ff)``, like ``w_gate``.
        activation: ``"silu"`` (``silu(z) = z * sigmoid(z)``), ``"gelu_tanh"`` (GeGLU with
            ``gelu(z, approximate="tanh")``, Gemma's ``gelu_pytorch_tanh``) or ``"gelu"``
            (exact GeGLU, ``z * Phi(z)``).

    All three share one dtype of bfloat16, float16, float32 or float64, and one device. The
    products and the activation are computed in float32 (float64 stays float64) and the result
    is rounded once to x's dtype. Inputs are checked as :func:`fused_swiglu.swiglu` checks
    them: TypeError for other dtypes or mixed ones, ValueError for shapes that do not fit or an
    unknown activation.

    Returns:
        ``(..., d_ff)`` in x's dtype.
    """
    check_activation("swiglu_reference", activation)
    check_swiglu_inputs(x, w_gate, w_up, fast_accum=False)
    return swiglu_values(x, w_gate, w_up, activation)


def swiglu_values(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor,
                  activation: str = "silu") -> torch.Tensor:
    """swiglu_reference's computation, on inputs already checked."""
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    gate = x.to(compute) @ w_gate.to(compute)
    up = x.to(compute) @ w_up.to(compute)
    return (ACTIVATIONS[activation](gate) * up).to(x.dtype)
