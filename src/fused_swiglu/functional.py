"""The public functions."""

import math

import torch
from torch import Tensor

from . import ops
from .checks import (check_activation, check_down_projection, check_flags, check_swiglu_inputs,
                     without_data)
from .fp8.options import check_fp8_inputs, fp8_recipe
from .fp8.training import swiglu_fp8_2d, swiglu_mlp_fp8_2d
from .reference import swiglu_values
from .tuning import runs_kernels

# Device types with an autocast mode (others, such as "meta", make torch.is_autocast_enabled
# raise).
AUTOCAST_DEVICES = ("cuda", "cpu")


def swiglu(x: Tensor, w_gate: Tensor, w_up: Tensor, *, activation: str = "silu",
           fast_accum: bool = False, recompute: bool = False, fp8=False) -> Tensor:
    """Fused SwiGLU: ``silu(x @ w_gate) * (x @ w_up)``, differentiable in all three inputs
    (GeGLU with ``activation="gelu_tanh"`` or ``"gelu"``).

    Args:
        x: ``(..., d_model)``; any number of leading dimensions, zero tokens included.
        w_gate, w_up: ``(d_model, d_ff)`` with any strides. ``linear.weight.T`` of two
            ``nn.Linear`` layers (separate or sharing one buffer) is the fastest layout on
            Hopper: one tensor descriptor then spans both weights (docs/design.md).
        activation: the gate's: ``"silu"`` (SwiGLU), ``"gelu_tanh"`` (GeGLU with the tanh
            approximation, Gemma's ``gelu_pytorch_tanh``) or ``"gelu"`` (exact GeGLU);
            :func:`swiglu_reference` gives each formula. Another name is a ValueError.
        fast_accum: float16 only: allow the projections to accumulate in float16. The
            autotuner uses float16 accumulators for a shape where they run faster on this GPU
            and float32 ones otherwise; precision is at worst float16 accumulation. Gradients
            always accumulate in float32.
        recompute: the backward recomputes both projections instead of keeping
            ``x @ w_gate`` and ``x @ w_up``: autograd holds nothing of size tokens x d_ff.
        fp8: ``True`` or a recipe name (``"rowwise"``, the one so far): every GEMM of the
            forward and the backward on float8_e4m3fn operands, each quantized along its K
            with one scale per token and per channel from the current values
            (fused_swiglu.fp8.training says which operand is scaled how). bfloat16 or float16
            inputs; the output and the gradients in their dtype; torch.compile traces it. Not
            with ``fast_accum`` (TypeError), ``torch.func`` (NotImplementedError), nor
            ``create_graph=True`` (RuntimeError); :func:`fused_swiglu.swiglu_fp8_reference`
            is its forward's specification.

    Dtypes: bfloat16, float16, float32 or float64, the same for all three. float32 runs in full
    float32 precision (no TF32); float64 runs plain PyTorch (:func:`swiglu_reference`) on any
    device. Under ``torch.autocast`` for x's device the inputs are cast to the autocast dtype
    first. CUDA tensors run the Triton kernels; in 16-bit dtypes above 32 tokens, where the
    weights' layout keeps them from the fused Hopper kernel (or up to 512 tokens, where cuBLAS
    tiles the work better), two cuBLAS GEMMs and a Triton elementwise pass. CPU tensors run the
    kernels under Triton's interpreter when ``TRITON_INTERPRET=1`` was set when fused_swiglu
    was imported, plain PyTorch otherwise. Meta and fake tensors, and the tensors of
    ``torch.func`` transforms (``vmap``, ``grad``), take plain PyTorch too.

    Autograd: gradients of gradients (``create_graph=True``) are exact: the backward then runs
    as differentiable PyTorch operations. A second backward through one graph
    (``retain_graph=True``) needs ``recompute=True``, since the default backward overwrites
    what it saved; without it the second backward raises a RuntimeError that says so.

    Returns:
        ``(..., d_ff)`` in x's dtype.
    """
    check_flags("swiglu", fast_accum=fast_accum, recompute=recompute)
    check_activation("swiglu", activation)
    recipe = fp8_recipe("swiglu", fp8, fast_accum)
    x, w_gate, w_up = _autocast(x, w_gate, w_up)
    check_swiglu_inputs(x, w_gate, w_up, fast_accum)
    if recipe is not None:
        check_fp8_inputs("swiglu", x, w_gate, w_up)
        y = swiglu_fp8_2d(_as_2d(x), w_gate, w_up, activation, recompute,
                          _needs_grad(x, w_gate, w_up))
        return y.reshape(*x.shape[:-1], w_gate.shape[1])
    if _takes_pytorch_path(x, w_gate, w_up):
        return swiglu_values(x, w_gate, w_up, activation)
    d_ff = w_gate.shape[1]
    needs_grad = _needs_grad(x, w_gate, w_up)
    y = ops.swiglu_2d(_as_2d(x), w_gate, w_up, fast_accum, needs_grad and not recompute,
                      needs_grad, activation)
    return y.reshape(*x.shape[:-1], d_ff)


def swiglu_mlp(x: Tensor, w_gate: Tensor, w_up: Tensor, w_down: Tensor, *,
               activation: str = "silu", fast_accum: bool = False,
               recompute: bool = False, fp8=False) -> Tensor:
    """The SwiGLU feed-forward block with its down projection:
    ``(silu(x @ w_gate) * (x @ w_up)) @ w_down``, differentiable in all four inputs.

    The same as ``swiglu(x, w_gate, w_up, ...) @ w_down`` except for memory: autograd does not
    keep the SwiGLU output for the down projection's weight gradient (the backward writes it
    again, in the pass that computes the gate gradients), so by default it keeps two tensors
    of size tokens x d_ff (g and u) instead of three, and with ``recompute=True`` none.

    Args:
        x, w_gate, w_up, activation, fast_accum, recompute, fp8: as for :func:`swiglu`; with
            fp8 the down projection and its gradients run in float8 too.
        w_down: ``(d_ff, d_model)`` with any strides (``down_proj.weight.T`` of an
            ``nn.Linear(d_ff, d_model)``).

    The down projection and its gradients are PyTorch matrix products (cuBLAS on a GPU), in
    PyTorch's precision settings for them. Under ``torch.compile`` the block is one custom op
    that keeps the same.

    Returns:
        ``(..., d_model)`` in x's dtype.
    """
    check_flags("swiglu_mlp", fast_accum=fast_accum, recompute=recompute)
    check_activation("swiglu_mlp", activation)
    recipe = fp8_recipe("swiglu_mlp", fp8, fast_accum)
    x, w_gate, w_up, w_down = _autocast(x, w_gate, w_up, w_down)
    check_swiglu_inputs(x, w_gate, w_up, fast_accum)
    check_down_projection(w_down, w_gate)
    if recipe is not None:
        check_fp8_inputs("swiglu_mlp", x, w_gate, w_up, w_down)
        out = swiglu_mlp_fp8_2d(_as_2d(x), w_gate, w_up, w_down, activation, recompute,
                                _needs_grad(x, w_gate, w_up, w_down))
        return out.reshape(*x.shape[:-1], w_gate.shape[0])
    if _takes_pytorch_path(x, w_gate, w_up, w_down):
        return swiglu_values(x, w_gate, w_up, activation) @ w_down
    d_model = w_gate.shape[0]
    out = ops.swiglu_mlp_2d(_as_2d(x), w_gate, w_up, w_down, fast_accum, recompute,
                            _needs_grad(x, w_gate, w_up, w_down), activation)
    return out.reshape(*x.shape[:-1], d_model)


def _takes_pytorch_path(x: Tensor, *weights: Tensor) -> bool:
    """Whether plain PyTorch computes the call instead of the kernels: float64 (the kernels
    stop at float32); tensors on a device the kernels do not run on (the CPU without the
    interpreter, meta tensors); and, outside torch.compile (whose tracing takes the custom ops
    and their fake implementations), fake tensors, which carry no data to launch on, and the
    tensors of torch.func transforms (vmap, grad), which PyTorch's own operations support."""
    if x.dtype == torch.float64:
        return True
    if not runs_kernels(x):
        return True
    if torch.compiler.is_compiling():
        return False
    return without_data(x, *weights)


def _as_2d(x: Tensor) -> Tensor:
    # the token count spelled out: reshape(-1, 0) cannot infer it when d_model is 0
    return x.reshape(math.prod(x.shape[:-1]), x.shape[-1])


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
