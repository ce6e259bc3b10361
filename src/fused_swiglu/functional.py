"""The public functions."""

import torch
from torch import Tensor

from . import ops
from .checks import check_down_projection, check_swiglu_inputs
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
    autocast dtype first. CUDA tensors run the Triton kernels (from 33 to 512 tokens in 16-bit
    dtypes, two cuBLAS GEMMs and a Triton elementwise pass, which are faster there); CPU
    tensors run them under the Triton interpreter when ``TRITON_INTERPRET=1`` and plain
    PyTorch otherwise.

    Returns:
        ``(..., d_ff)`` in x's dtype.
    """
    x, w_gate, w_up = _autocast(x, w_gate, w_up)
    check_swiglu_inputs(x, w_gate, w_up, fast_accum)
    if not (x.is_cuda or interpreting()):
        return swiglu_reference(x, w_gate, w_up)
    d_model, d_ff = w_gate.shape
    needs_grad = _needs_grad(x, w_gate, w_up)
    y = ops.swiglu_2d(x.reshape(-1, d_model), w_gate, w_up, fast_accum,
                      needs_grad and not recompute, needs_grad)
    return y.reshape(*x.shape[:-1], d_ff)


def swiglu_mlp(x: Tensor, w_gate: Tensor, w_up: Tensor, w_down: Tensor, *,
               fast_accum: bool = False, recompute: bool = False) -> Tensor:
    """The SwiGLU feed-forward block with its down projection:
    ``(silu(x @ w_gate) * (x @ w_up)) @ w_down``, differentiable in all four inputs.

    The same as ``swiglu(x, w_gate, w_up, ...) @ w_down`` except for memory: autograd does not
    keep the SwiGLU output for the down projection's weight gradient (the backward writes it
    again, in the pass that computes the gate gradients), so by default it keeps two tensors
    of size tokens x d_ff (g and u) instead of three, and with ``recompute=True`` none.

    Args:
        x, w_gate, w_up, fast_accum, recompute: as for :func:`swiglu`.
        w_down: ``(d_ff, d_model)`` with any strides (``down_proj.weight.T`` of an
            ``nn.Linear(d_ff, d_model)``).

    The down projection and its gradients are PyTorch matrix products (cuBLAS on a GPU), in
    PyTorch's precision settings for them. Under ``torch.compile`` the block is one custom op
    that keeps the same.

    Returns:
        ``(..., d_model)`` in x's dtype.
    """
    x, w_gate, w_up, w_down = _autocast(x, w_gate, w_up, w_down)
    check_swiglu_inputs(x, w_gate, w_up, fast_accum)
    check_down_projection(w_down, w_gate)
    if not (x.is_cuda or interpreting()):
        return swiglu_reference(x, w_gate, w_up) @ w_down
    d_model = w_gate.shape[0]
    out = ops.swiglu_mlp_2d(x.reshape(-1, d_model), w_gate, w_up, w_down, fast_accum,
                            recompute, _needs_grad(x, w_gate, w_up, w_down))
    return out.reshape(*x.shape[:-1], d_model)


def _autocast(*tensors):
    """The tensors cast to the autocast dtype where torch.autocast is on for the first one's
    device, unchanged otherwise (non-tensors are left for the checks to reject)."""
    x = tensors[0]
    if not (isinstance(x, Tensor) and x.device.type in AUTOCAST_DEVICES
            and torch.is_autocast_enabled(x.device.type)):
        return tensors
    dtype = torch.get_autocast_dtype(x.device.type)
    return tuple(t.to(dtype) if isinstance(t, Tensor) and t.is_floating_point() else t
                 for t in tensors)


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


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
