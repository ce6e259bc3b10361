"""Autograd for the kernels, in two forms with one backward: torch.library ops, which
torch.compile traces (fullgraph), and an autograd.Function that eager mode calls because its
host overhead is a fraction of a custom op's (measured: about 65 us per call on an H200 host)."""

import torch
from torch import Tensor

from . import launch
from .tuning import interpreting


def _runs_triton(*tensors: Tensor) -> bool:
    """Triton kernels need a GPU or the interpreter, and something to compute."""
    return (tensors[0].is_cuda or interpreting()) and all(t.numel() > 0 for t in tensors)


def _torch_preact(x: Tensor, w_gate: Tensor, w_up: Tensor):
    """(g, u) in float32, for calls with nothing to compute or no way to run Triton."""
    x = x.float()
    return x @ w_gate.float(), x @ w_up.float()


def _torch_gate_grads(dy: Tensor, gate: Tensor, up: Tensor) -> Tensor:
    """[dg | du] in float32 from dy and g, u (both already rounded to the storage dtype)."""
    gate, up, dy = gate.float(), up.float(), dy.float()
    sig = torch.sigmoid(gate)
    return torch.cat([dy * up * sig * (1 + gate * (1 - sig)), dy * gate * sig], dim=1)


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


@torch.library.custom_op("fused_swiglu::gate_grads_inplace", mutates_args=("preact",))
def gate_grads_inplace(dy: Tensor, preact: Tensor) -> None:
    """Overwrite the stored [g | u] with [dg | du]: the backward needs no second buffer."""
    if _runs_triton(dy):
        launch.swiglu_grad_from_preact(dy, preact, out=preact)
    else:
        n = dy.shape[1]
        preact.copy_(_torch_gate_grads(dy, preact[:, :n], preact[:, n:]))


@gate_grads_inplace.register_fake
def _(dy, preact):
    return None


@torch.library.custom_op("fused_swiglu::gate_grads_recompute", mutates_args=())
def gate_grads_recompute(dy: Tensor, x: Tensor, w_gate: Tensor, w_up: Tensor,
                         fast_accum: bool) -> Tensor:
    """[dg | du], recomputing g and u from x and the weights."""
    if _runs_triton(x, w_gate):
        return launch.swiglu_grad_recompute(dy, x, w_gate, w_up, fast_accum)
    gate, up = (t.to(x.dtype) for t in _torch_preact(x, w_gate, w_up))
    return _torch_gate_grads(dy, gate, up).to(x.dtype)


@gate_grads_recompute.register_fake
def _(dy, x, w_gate, w_up, fast_accum):
    return x.new_empty((x.shape[0], 2 * w_gate.shape[1]))


def _input_and_weight_grads(grads: Tensor, x: Tensor, w_gate: Tensor, w_up: Tensor,
                            needs_input_grad):
    """(dx, dw_gate, dw_up) from [dg | du]; None where not needed."""
    need_dx, need_dw_gate, need_dw_up = needs_input_grad[:3]
    n = w_gate.shape[1]
    d_gate, d_up = grads[:, :n], grads[:, n:]
    dx = dw_gate = dw_up = None
    # torch.mm rather than @: the same GEMM with less host-side dispatch
    if need_dx:
        # the second product accumulates onto the first in place: no sum pass, no second
        # tokens x d_model buffer
        dx = torch.mm(d_gate, w_gate.t())
        dx.addmm_(d_up, w_up.t())
    # weight gradients reduce over all tokens in one GEMM, [dg | du]^T @ x, whose (2 d_ff,
    # d_model) result holds both: its halves are nn.Linear-layout gradients, transposed here
    if need_dw_gate and need_dw_up:
        dw = torch.mm(grads.t(), x)
        dw_gate, dw_up = dw[:n].t(), dw[n:].t()
    elif need_dw_gate:
        dw_gate = torch.mm(d_gate.t(), x).t()
    elif need_dw_up:
        dw_up = torch.mm(d_up.t(), x).t()
    return dx, dw_gate, dw_up


def _setup_context(ctx, inputs, output):
    x, w_gate, w_up, fast_accum, store_preact = inputs
    _, preact = output
    ctx.mark_non_differentiable(preact)
    # else autograd hands the backward a zero-filled gradient for [g | u]: tokens x 2 d_ff of
    # memory and a memset, for an output nothing differentiates
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(x, w_gate, w_up, preact)
    ctx.fast_accum = fast_accum
    ctx.recompute = not store_preact


def _backward(ctx, dy, _unused_preact_grad):
    x, w_gate, w_up, preact = ctx.saved_tensors
    if ctx.recompute:
        grads = gate_grads_recompute(dy, x, w_gate, w_up, ctx.fast_accum)
    else:
        # a second backward through this graph (retain_graph=True) finds preact modified and
        # autograd's version check raises; recompute=True supports it
        gate_grads_inplace(dy, preact)
        grads = preact
    return *_input_and_weight_grads(grads, x, w_gate, w_up, ctx.needs_input_grad), None, None


swiglu_forward.register_autograd(_backward, setup_context=_setup_context)


class _EagerSwiGLU(torch.autograd.Function):
    """The same forward and backward as the ops above, launching the kernels directly. The
    forward takes ctx itself: with a separate setup_context, every apply() binds its arguments
    through inspect.signature, tens of microseconds of host time per call."""

    @staticmethod
    def forward(ctx, x, w_gate, w_up, fast_accum, store_preact):
        output = launch.swiglu_forward(x, w_gate, w_up, fast_accum, store_preact)
        _setup_context(ctx, (x, w_gate, w_up, fast_accum, store_preact), output)
        return output

    @staticmethod
    def backward(ctx, dy, _unused_preact_grad):
        x, w_gate, w_up, preact = ctx.saved_tensors
        if ctx.recompute:
            grads = launch.swiglu_grad_recompute(dy, x, w_gate, w_up, ctx.fast_accum)
        else:
            grads = launch.swiglu_grad_from_preact(dy, preact, out=preact)
            # the kernel wrote preact behind autograd's back: say so, so that a second
            # backward (retain_graph=True) raises instead of reading [dg | du] as [g | u]
            torch.autograd.graph.increment_version(preact)
        return *_input_and_weight_grads(grads, x, w_gate, w_up, ctx.needs_input_grad), None, None


def swiglu_2d(x: Tensor, w_gate: Tensor, w_up: Tensor, fast_accum: bool,
              store_preact: bool, needs_grad: bool = True) -> Tensor:
    """SwiGLU of 2-D x with autograd; keeps [g | u] for the backward when store_preact."""
    if torch.compiler.is_compiling() or not _runs_triton(x, w_gate):
        return swiglu_forward(x, w_gate, w_up, fast_accum, store_preact)[0]
    if not needs_grad:
        # nothing to differentiate: no autograd node, and none of its host time
        return launch.swiglu_forward(x, w_gate, w_up, fast_accum, False)[0]
    return _EagerSwiGLU.apply(x, w_gate, w_up, fast_accum, store_preact)[0]
