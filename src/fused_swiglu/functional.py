"""The public functions."""

import torch
from torch import Tensor

from . import ops
from .checks import check_swiglu_inputs
from .reference import swiglu_reference
from .tuning import interpreting

# Device types with an autocast mode (others, such as "meta", make torch.is_autocast_enabled
# raise).
AUTOCAST_DEVICES = ("cuda", "cpu")


def swiglu(x: Tensor, w_gate: Tensor, w_up: Tensor, *, fast_accum: bool = False,
           recompute: bool = False) -> Tensor:
    """Fused SwiGLU: ``silu(x @ w_gate) * (x @ w_up)``, differentiable in all three inputs.

    Args:
        x: ``(..., d_model)``; any number of leading dimensions, zero tokens included.
        w_gate, w_up: ``(d_model, d_ff)`` with any strides. ``linear.weight.T`` of two
            ``nn.Linear`` layers (separate or sharing one buffer) is the fastest layout on
            Hopper: one tensor descriptor then spans both weights (README, "Kernel paths").
        fast_accum: float16 only: allow the projections to accumulate in float16. The
            autotuner uses float16 accumulators for a shape where they run faster on this GPU
            and float32 ones otherwise; precision is at worst float16 accumulation. Gradients
            always accumulate in float32.
        recompute: the backward recomputes both projections instead of keeping
            ``x @ w_gate`` and ``x @ w_up``: autograd holds nothing of size tokens x d_ff.

    Dtypes: bfloat16, float16 or float32, the same for all three. float32 runs in full float32
    precision (no TF32). Under ``torch.autocast`` for x's device the inputs are cast to the
    autocast dtype first. CUDA tensors run the Triton kernels; CPU tensors run them under the
    Triton interpreter when ``TRITON_INTERPRET=1`` and plain PyTorch otherwise.

    Returns:
        ``(..., d_ff)`` in x's dtype.
    """
    if (isinstance(x, Tensor) and x.device.type in AUTOCAST_DEVICES
            and torch.is_autocast_enabled(x.device.type)):
        dtype = torch.get_autocast_dtype(x.device.type)
        x, w_gate, w_up = (t.to(dtype) if isinstance(t, Tensor) and t.is_floating_point() else t
                           for t in (x, w_gate, w_up))
    check_swiglu_inputs(x, w_gate, w_up, fast_accum)
    if not (x.is_cuda or interpreting()):
        return swiglu_reference(x, w_gate, w_up)
    d_model, d_ff = w_gate.shape
    needs_grad = torch.is_grad_enabled() and (
        x.requires_grad or w_gate.requires_grad or w_up.requires_grad)
    y = ops.swiglu_2d(x.reshape(-1, d_model), w_gate, w_up, fast_accum,
                      needs_grad and not recompute, needs_grad)
    return y.reshape(*x.shape[:-1], d_ff)


class FusedSwiGLU:
    """Drop-in for the original ``FusedSwiGLU`` autograd function: float32 accumulation,
    bfloat16, float16 or float32 inputs. ``FusedSwiGLU.apply(x, w_gate, w_up)``."""

    @staticmethod
    def apply(x: Tensor, w_gate: Tensor, w_up: Tensor) -> Tensor:
        return swiglu(x, w_gate, w_up)


class FastAccumFusedSwiGLU:
    """Drop-in for the original ``FastAccumFusedSwiGLU``: float16 inputs, projections allowed
    to accumulate in float16 (``fast_accum=True``). ``FastAccumFusedSwiGLU.apply(x, w_gate,
    w_up)``."""

    @staticmethod
    def apply(x: Tensor, w_gate: Tensor, w_up: Tensor) -> Tensor:
        return swiglu(x, w_gate, w_up, fast_accum=True)
