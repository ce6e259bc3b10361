"""The forward and backward as torch.library ops with autograd, so that torch.compile traces
through them (fullgraph) and autograd saves only what the backward needs."""

import torch
from torch import Tensor

from . import launch
from .tuning import interpreting


def _runs_triton(*tensors: Tensor) -> bool:
    """Triton kernels need a GPU or the interpreter, and something to compute."""
    x = tensors[0]
    return (x.is_cuda or interpreting()) and all(t.numel() > 0 for t in tensors)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _torch_preact(x: Tensor, w_gate: Tensor, w_up: Tensor):
    compute = _compute_dtype(x.dtype)
    return x.to(compute) @ w_gate.to(compute), x.to(compute) @ w_up.to(compute)


def _torch_glu_grad(dy: Tensor, gate: Tensor, up: Tensor) -> Tensor:
    dy = dy.to(gate.dtype)
    sig = torch.sigmoid(gate)
    d_gate = dy * up * sig * (1 + gate * (1 - sig))
    d_up = dy * gate * sig
    return torch.cat([d_gate, d_up], dim=1)


@torch.library.custom_op("fused_swiglu::swiglu_forward", mutates_args=())
def swiglu_forward(x: Tensor, w_gate: Tensor, w_up: Tensor, fast_accum: bool,
                   store_preact: bool) -> tuple[Tensor, Tensor]:
    """(y, [g | u]) for 2-D x; [g | u] is empty unless store_preact."""
    if _runs_triton(x, w_gate):
        return launch.swiglu_forward(x, w_gate, w_up, fast_accum, store_preact)
    gate, up = _torch_preact(x, w_gate, w_up)
    y = (torch.nn.functional.silu(gate) * up).to(x.dtype)
    preact = torch.cat([gate, up], dim=1).to(x.dtype) if store_preact else x.new_empty((0,))
    return y, preact


@swiglu_forward.register_fake
def _(x, w_gate, w_up, fast_accum, store_preact):
    n = w_gate.shape[1]
    preact = x.new_empty((x.shape[0], 2 * n)) if store_preact else x.new_empty((0,))
    return x.new_empty((x.shape[0], n)), preact


@torch.library.custom_op("fused_swiglu::swiglu_backward", mutates_args=())
def swiglu_backward(dy: Tensor, x: Tensor, w_gate: Tensor, w_up: Tensor, preact: Tensor,
                    fast_accum: bool, recompute: bool, need_dx: bool, need_dw_gate: bool,
                    need_dw_up: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(dx, dw_gate, dw_up); a gradient that is not needed comes back empty."""
    n = w_gate.shape[1]
    if _runs_triton(x, w_gate):
        if recompute:
            grads = launch.swiglu_grad_recompute(dy, x, w_gate, w_up, fast_accum)
        else:
            grads = launch.swiglu_grad_from_preact(dy, preact)
    else:
        if recompute:
            gate, up = _torch_preact(x, w_gate, w_up)
            # round like a stored forward would, so both paths see the same g and u
            gate, up = gate.to(x.dtype).to(gate.dtype), up.to(x.dtype).to(up.dtype)
        else:
            gate, up = preact[:, :n].to(_compute_dtype(x.dtype)), preact[:, n:].to(_compute_dtype(x.dtype))
        grads = _torch_glu_grad(dy, gate, up).to(x.dtype)
    d_gate, d_up = grads[:, :n], grads[:, n:]
    dx = dw_gate = dw_up = None
    if need_dx:
        # one output, the second product accumulated onto the first: no separate sum pass
        dx = torch.mm(d_gate, w_gate.t())
        dx.addmm_(d_up, w_up.t())
    # each weight gradient is one GEMM over all tokens: no per-batch partial buffers
    if need_dw_gate:
        dw_gate = torch.mm(x.t(), d_gate)
    if need_dw_up:
        dw_up = torch.mm(x.t(), d_up)
    # outputs may not alias each other: every gradient not asked for is its own empty tensor
    return tuple(x.new_empty((0,)) if g is None else g for g in (dx, dw_gate, dw_up))


@swiglu_backward.register_fake
def _(dy, x, w_gate, w_up, preact, fast_accum, recompute, need_dx, need_dw_gate, need_dw_up):
    return (x.new_empty(x.shape if need_dx else (0,)),
            x.new_empty(w_gate.shape if need_dw_gate else (0,)),
            x.new_empty(w_up.shape if need_dw_up else (0,)))


def _setup_context(ctx, inputs, output):
    x, w_gate, w_up, fast_accum, store_preact = inputs
    _, preact = output
    ctx.mark_non_differentiable(preact)
    ctx.save_for_backward(x, w_gate, w_up, preact)
    ctx.fast_accum = fast_accum
    ctx.recompute = not store_preact


def _backward(ctx, dy, _unused_preact_grad):
    x, w_gate, w_up, preact = ctx.saved_tensors
    need_dx, need_dw_gate, need_dw_up = ctx.needs_input_grad[:3]
    dx, dw_gate, dw_up = swiglu_backward(dy, x, w_gate, w_up, preact, ctx.fast_accum,
                                         ctx.recompute, need_dx, need_dw_gate, need_dw_up)
    return (dx if need_dx else None, dw_gate if need_dw_gate else None,
            dw_up if need_dw_up else None, None, None)


swiglu_forward.register_autograd(_backward, setup_context=_setup_context)
