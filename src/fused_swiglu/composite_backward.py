"""The backward as differentiable PyTorch operations, for a backward that builds a graph of its
own (``create_graph=True``: gradient penalties, Hessian-vector products). The kernels'
backward overwrites saved tensors and launches kernels that autograd cannot see through, so
differentiating it again would be silently wrong; this one recomputes the projections from the
saved inputs, so that every gradient it returns is a function of x and the weights that
autograd can differentiate once more. It runs on every device, and costs two GEMMs and a few
elementwise passes more than the fused backward."""

import torch
from torch import Tensor

from .activations import ACTIVATIONS, derivative


def _compute_dtype(x: Tensor) -> torch.dtype:
    # 16-bit inputs are computed in float32 and rounded once, as the kernels do
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _preact_and_gate_grads(d_hidden, x, w_gate, w_up, activation):
    """(g, u, dg, du) in the compute dtype, from the incoming gradient of y = act(g) * u."""
    gate, up = x @ w_gate, x @ w_up
    d_gate = d_hidden * up * derivative(activation, gate)
    d_up = d_hidden * ACTIVATIONS[activation](gate)
    return gate, up, d_gate, d_up


def _projection_grads(d_gate, d_up, x, w_gate, w_up, needs_input_grad):
    dx = d_gate @ w_gate.t() + d_up @ w_up.t() if needs_input_grad[0] else None
    dw_gate = x.t() @ d_gate if needs_input_grad[1] else None
    dw_up = x.t() @ d_up if needs_input_grad[2] else None
    return dx, dw_gate, dw_up


def _cast_like(grads, inputs):
    return tuple(None if g is None else g.to(t.dtype) for g, t in zip(grads, inputs))


def swiglu_backward(dy: Tensor, x: Tensor, w_gate: Tensor, w_up: Tensor, activation: str,
                    needs_input_grad):
    """(dx, dw_gate, dw_up) of y = act(x @ w_gate) * (x @ w_up) for 2-D x, None where
    needs_input_grad says no."""
    compute = _compute_dtype(x)
    xc, gc, uc, dyc = (t.to(compute) for t in (x, w_gate, w_up, dy))
    _, _, d_gate, d_up = _preact_and_gate_grads(dyc, xc, gc, uc, activation)
    grads = _projection_grads(d_gate, d_up, xc, gc, uc, needs_input_grad)
    return _cast_like(grads, (x, w_gate, w_up))


def swiglu_mlp_backward(d_out: Tensor, x: Tensor, w_gate: Tensor, w_up: Tensor, w_down: Tensor,
                        activation: str, needs_input_grad):
    """(dx, dw_gate, dw_up, dw_down) of (act(x @ w_gate) * (x @ w_up)) @ w_down for 2-D x."""
    compute = _compute_dtype(x)
    xc, gc, uc, dc, d_outc = (t.to(compute) for t in (x, w_gate, w_up, w_down, d_out))
    d_hidden = d_outc @ dc.t()
    gate, up, d_gate, d_up = _preact_and_gate_grads(d_hidden, xc, gc, uc, activation)
    grads = _projection_grads(d_gate, d_up, xc, gc, uc, needs_input_grad)
    hidden = ACTIVATIONS[activation](gate) * up
    dw_down = hidden.t() @ d_outc if needs_input_grad[3] else None
    return _cast_like((*grads, dw_down), (x, w_gate, w_up, w_down))
