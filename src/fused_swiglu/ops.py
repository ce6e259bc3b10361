"""Autograd for the kernels: torch.library ops, which torch.compile traces (fullgraph), and
autograd.Functions that eager mode calls because their host overhead is a fraction of a custom
op's (measured: about 65 us per call on an H200 host). Eager training builds one node,
whose backward gives back the saved g's memory (dg by then) before the last weight
gradient's GEMM, so that it peaks no higher than a graph of separate projections."""

import torch
from torch import Tensor

from . import composite_backward, launch
from .activations import ACTIVATIONS, derivative
from .tuning import interpreting


def _runs_triton(*tensors: Tensor) -> bool:
    """Triton kernels need a GPU or the interpreter, and something to compute."""
    return (tensors[0].is_cuda or interpreting()) and all(t.numel() > 0 for t in tensors)


def _torch_preact(x: Tensor, w_gate: Tensor, w_up: Tensor):
    """(g, u) in float32, for calls with nothing to compute or no way to run Triton."""
    x = x.float()
    return x @ w_gate.float(), x @ w_up.float()


def _torch_gate_grad(dy: Tensor, gate: Tensor, up: Tensor, activation: str) -> Tensor:
    """dg in float32 from dy and g, u (both already rounded to the storage dtype)."""
    return dy.float() * up.float() * derivative(activation, gate.float())


def _torch_up_grad(dy: Tensor, gate: Tensor, activation: str) -> Tensor:
    """du in float32 from dy and g."""
    return dy.float() * ACTIVATIONS[activation](gate.float())


def _forward_values(x: Tensor, w_gate: Tensor, w_up: Tensor, fast_accum: bool,
                    store_preact: bool, activation: str):
    """(y, g, u) for 2-D x, for the custom ops; g and u are empty unless store_preact."""
    if _runs_triton(x, w_gate):
        y, gate, up = launch.swiglu_forward(x, w_gate, w_up, fast_accum, store_preact,
                                            activation)
    else:
        gate, up = _torch_preact(x, w_gate, w_up)
        y = (ACTIVATIONS[activation](gate) * up).to(x.dtype)
        gate, up = gate.to(x.dtype), up.to(x.dtype)
    if not store_preact:
        gate, up = x.new_empty((0,)), x.new_empty((0,))
    return y, gate, up


@torch.library.custom_op("fused_swiglu::swiglu_forward", mutates_args=())
def swiglu_forward(x: Tensor, w_gate: Tensor, w_up: Tensor, fast_accum: bool,
                   store_preact: bool, activation: str) -> tuple[Tensor, Tensor, Tensor]:
    """(y, g, u) for 2-D x; g and u are empty unless store_preact."""
    return _forward_values(x, w_gate, w_up, fast_accum, store_preact, activation)


@swiglu_forward.register_fake
def _(x, w_gate, w_up, fast_accum, store_preact, activation):
    shape = (x.shape[0], w_gate.shape[1])
    preact_shape = shape if store_preact else (0,)
    return x.new_empty(shape), x.new_empty(preact_shape), x.new_empty(preact_shape)


# The compiled backward's gate gradients are not computed in place, unlike the eager one's:
# in a compiled backward the saved g and u are inputs of the graph, which inductor does not let
# an op overwrite, so an in-place op runs after copies of both (measured: 0.3 ms, 5% of
# forward+backward at 8192 x 4096 x 11008 on an H200). Two ops instead, dg first: u is dead
# after it, so the graph frees it before du is allocated, and the backward holds at most one
# tokens x d_ff buffer more than in place would.

@torch.library.custom_op("fused_swiglu::gate_grad", mutates_args=())
def gate_grad(dy: Tensor, gate: Tensor, up: Tensor, activation: str) -> Tensor:
    """dg = dy * u * act'(g) from dy and the stored g and u, in a new tensor."""
    if _runs_triton(dy):
        return launch.gate_grad_from_preact(dy, gate, up, activation)
    return _torch_gate_grad(dy, gate, up, activation).to(gate.dtype)


@gate_grad.register_fake
def _(dy, gate, up, activation):
    return gate.new_empty(gate.shape)


@torch.library.custom_op("fused_swiglu::up_grad", mutates_args=())
def up_grad(dy: Tensor, gate: Tensor, activation: str) -> Tensor:
    """du = dy * act(g) from dy and the stored g, in a new tensor."""
    if _runs_triton(dy):
        return launch.up_grad_from_preact(dy, gate, activation)
    return _torch_up_grad(dy, gate, activation).to(gate.dtype)


@up_grad.register_fake
def _(dy, gate, activation):
    return gate.new_empty(gate.shape)


@torch.library.custom_op("fused_swiglu::gate_grads_recompute", mutates_args=())
def gate_grads_recompute(dy: Tensor, x: Tensor, w_gate: Tensor, w_up: Tensor,
                         fast_accum: bool, with_product: bool,
                         activation: str) -> tuple[Tensor, Tensor, Tensor]:
    """(dg, du, y), recomputing g and u from x and the weights; y = act(g) * u is empty
    unless with_product."""
    if _runs_triton(x, w_gate):
        grads = launch.swiglu_grads_recompute(dy, x, w_gate, w_up, fast_accum, with_product,
                                              activation)
        return grads if with_product else (*grads, x.new_empty((0,)))
    hidden, gate, up = _forward_values(x, w_gate, w_up, fast_accum, True, activation)
    hidden = hidden if with_product else x.new_empty((0,))
    return (_torch_gate_grad(dy, gate, up, activation).to(x.dtype),
            _torch_up_grad(dy, gate, activation).to(x.dtype), hidden)


@gate_grads_recompute.register_fake
def _(dy, x, w_gate, w_up, fast_accum, with_product, activation):
    shape = (x.shape[0], w_gate.shape[1])
    return x.new_empty(shape), x.new_empty(shape), x.new_empty(shape if with_product else (0,))


# torch.mm rather than @ below: the same GEMM with less host-side dispatch

def _input_grad(d_gate: Tensor, d_up: Tensor, w_gate: Tensor, w_up: Tensor) -> Tensor:
    # the second product accumulates onto the first in place: no sum pass, no second
    # tokens x d_model buffer
    dx = torch.mm(d_gate, w_gate.t())
    return dx.addmm_(d_up, w_up.t())


def _weight_grad(d_out: Tensor, x: Tensor, w: Tensor) -> Tensor:
    """The gradient of w in x @ w, in w's own layout: autograd copies a gradient whose strides
    differ from its parameter's into a new one (time, and a weight-sized buffer more at the
    peak). The transposed view of an nn.Linear weight gets the transposed view of a row-major
    (d_ff, d_model) matrix; row-major (d_model, d_ff) weights, and any other layout, a
    row-major (d_model, d_ff) one."""
    if w.stride(0) == 1 and w.stride(1) != 1:
        return torch.mm(d_out.t(), x).t()
    return torch.mm(x.t(), d_out)


def _projection_grads(grads: list, x: Tensor, w_gate: Tensor, w_up: Tensor, needs_input_grad,
                      saved_gate_grad: bool = False):
    """(dx, dw_gate, dw_up) from grads = [dg, du], None where not needed. dg's memory is free
    again before dw_up is computed, as in a graph of separate projections: dg is taken out of
    the list and dropped, and where it is the node's saved g, overwritten in place
    (saved_gate_grad), its memory is given back, since the node holds it until it returns."""
    need_dx, need_dw_gate, need_dw_up = needs_input_grad[:3]
    d_gate = grads.pop(0)
    d_up = grads[0]
    dx = _input_grad(d_gate, d_up, w_gate, w_up) if need_dx else None
    dw_gate = _weight_grad(d_gate, x, w_gate) if need_dw_gate else None
    if saved_gate_grad:
        _release_memory(d_gate)
    del d_gate
    dw_up = _weight_grad(d_up, x, w_up) if need_dw_up else None
    return dx, dw_gate, dw_up


def _release_memory(t: Tensor) -> None:
    """Give the memory of t, a saved tensor already overwritten, back to the allocator now,
    where t alone fills its storage (saved-tensor hooks may hand back a view of something
    larger, which is left alone). Kernels queued on the stream finish reading it first: the
    caching allocator hands freed blocks out again in stream order."""
    storage = t.untyped_storage()
    if storage.resizable() and storage.nbytes() == t.numel() * t.element_size():
        storage.resize_(0)


def _setup_context(ctx, inputs, output):
    x, w_gate, w_up, fast_accum, store_preact, activation = inputs
    _, gate, up = output
    ctx.mark_non_differentiable(gate, up)
    # else autograd hands the backward zero-filled gradients for g and u: tokens x 2 d_ff of
    # memory and a memset, for outputs nothing differentiates
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(x, w_gate, w_up, gate, up)
    ctx.fast_accum = fast_accum
    ctx.recompute = not store_preact
    ctx.activation = activation


def _backward(ctx, dy, _unused_gate_grad, _unused_up_grad):
    x, w_gate, w_up, gate, up = ctx.saved_tensors
    act = ctx.activation
    if torch.is_grad_enabled():  # create_graph=True: a backward autograd differentiates again
        return (*composite_backward.swiglu_backward(dy, x, w_gate, w_up, act,
                                                    ctx.needs_input_grad), None, None, None)
    if ctx.recompute:
        grads = list(gate_grads_recompute(dy, x, w_gate, w_up, ctx.fast_accum, False, act)[:2])
    else:
        grads = [gate_grad(dy, gate, up, act), up_grad(dy, gate, act)]
    del gate, up
    return *_projection_grads(grads, x, w_gate, w_up, ctx.needs_input_grad), None, None, None


swiglu_forward.register_autograd(_backward, setup_context=_setup_context)


def _gate_grads_in_place(dy: Tensor, gate: Tensor, up: Tensor, activation: str,
                         product=None, maxima=None) -> None:
    """Overwrite the saved g and u with dg and du, for the autograd.Functions below (and write
    y = act(g) * u into `product` unless it is None; maxima as
    launch.swiglu_grads_from_preact takes them)."""
    launch.swiglu_grads_from_preact(dy, gate, up, out=(gate, up), product=product,
                                    activation=activation, maxima=maxima)
    # the kernel wrote g and u behind autograd's back: say so, so that nothing else that saved
    # them reads dg and du as g and u
    torch.autograd.graph.increment_version((gate, up))


SECOND_BACKWARD_MESSAGE = (
    "fused_swiglu: this graph was already differentiated once, and its backward overwrote the "
    "saved projections g and u with their gradients (that saves two tokens x d_ff buffers). "
    "For a second backward through the same graph (retain_graph=True), call with "
    "recompute=True, which keeps nothing to overwrite; for gradients of gradients use "
    "create_graph=True.")


def _saved_for_eager_backward(ctx):
    """ctx.saved_tensors, or a clear error where an earlier backward overwrote them."""
    if getattr(ctx, "overwritten", False):
        raise RuntimeError(SECOND_BACKWARD_MESSAGE)
    return ctx.saved_tensors


class _EagerSwiGLU(torch.autograd.Function):
    """The same backward as the ops above, launching the kernels directly, in one node that
    returns y alone (g and u are saved intermediates). The forward takes ctx itself: with a
    separate setup_context, every apply() binds its arguments through inspect.signature, tens
    of microseconds of host time per call."""

    @staticmethod
    def forward(ctx, x, w_gate, w_up, fast_accum, store_preact, activation):
        y, gate, up = launch.swiglu_forward(x, w_gate, w_up, fast_accum, store_preact,
                                            activation)
        ctx.save_for_backward(x, w_gate, w_up, gate, up)
        ctx.fast_accum = fast_accum
        ctx.recompute = not store_preact
        ctx.activation = activation
        return y

    @staticmethod
    def backward(ctx, dy):
        x, w_gate, w_up, gate, up = _saved_for_eager_backward(ctx)
        act = ctx.activation
        if torch.is_grad_enabled():  # create_graph=True
            return (*composite_backward.swiglu_backward(dy, x, w_gate, w_up, act,
                                                        ctx.needs_input_grad), None, None, None)
        if ctx.recompute:
            grads = list(launch.swiglu_grads_recompute(dy, x, w_gate, w_up, ctx.fast_accum,
                                                       activation=act))
        else:
            _gate_grads_in_place(dy, gate, up, act)
            ctx.overwritten = True
            grads = [gate, up]
        del gate, up
        return (*_projection_grads(grads, x, w_gate, w_up, ctx.needs_input_grad,
                                   saved_gate_grad=not ctx.recompute), None, None, None)


def swiglu_2d(x: Tensor, w_gate: Tensor, w_up: Tensor, fast_accum: bool,
              store_preact: bool, needs_grad: bool, activation: str) -> Tensor:
    """The gated unit of 2-D x with autograd; keeps g and u for the backward when
    store_preact."""
    if torch.compiler.is_compiling() or not _runs_triton(x, w_gate):
        return swiglu_forward(x, w_gate, w_up, fast_accum, store_preact, activation)[0]
    if not needs_grad:
        # nothing to differentiate: no autograd node, and none of its host time
        return launch.swiglu_forward(x, w_gate, w_up, fast_accum, False, activation)[0]
    return _EagerSwiGLU.apply(x, w_gate, w_up, fast_accum, store_preact, activation)


def _down_projection_grads_in_place(d_out: Tensor, w_down: Tensor, gate: Tensor, up: Tensor,
                                     need_dw_down: bool, activation: str):
    """w_down's gradient (None unless needed), after turning the saved g and u into dg and du
    in place from dh = d_out @ w_down^T. The pass writes y = act(g) * u again for that
    gradient, which frees it with dh."""
    d_hidden = torch.mm(d_out, w_down.t())
    hidden = launch.new_output(gate.shape, gate) if need_dw_down else None
    _gate_grads_in_place(d_hidden, gate, up, activation, product=hidden)
    del d_hidden
    return _weight_grad(d_out, hidden, w_down) if need_dw_down else None


class _EagerSwiGLUMLP(torch.autograd.Function):
    """(act(x @ w_gate) * (x @ w_up)) @ w_down in one node that keeps g and u (with recompute,
    neither) but not the SwiGLU output y. Separate nodes would keep y from the forward to the
    backward, for the down projection's weight gradient: a third tokens x d_ff tensor. Here the
    backward's pass that computes dg and du writes y again (one tokens x d_ff write more) just
    before that gradient needs it, while the memory for the down projection's input gradient
    is held anyway: the backward peaks no higher than with separate nodes."""

    @staticmethod
    def forward(ctx, x, w_gate, w_up, w_down, fast_accum, recompute, activation):
        hidden, gate, up = launch.swiglu_forward(x, w_gate, w_up, fast_accum, not recompute,
                                                 activation)
        ctx.save_for_backward(x, w_gate, w_up, w_down, gate, up)
        ctx.fast_accum = fast_accum
        ctx.recompute = recompute
        ctx.activation = activation
        return torch.mm(hidden, w_down)

    @staticmethod
    def backward(ctx, d_out):
        x, w_gate, w_up, w_down, gate, up = _saved_for_eager_backward(ctx)
        act = ctx.activation
        if torch.is_grad_enabled():  # create_graph=True
            return (*composite_backward.swiglu_mlp_backward(
                d_out, x, w_gate, w_up, w_down, act, ctx.needs_input_grad), None, None, None)
        need_dw_down = ctx.needs_input_grad[3]
        if ctx.recompute:
            d_hidden = torch.mm(d_out, w_down.t())
            grads = list(launch.swiglu_grads_recompute(
                d_hidden, x, w_gate, w_up, ctx.fast_accum, with_product=need_dw_down,
                activation=act))
            del d_hidden
            dw_down = _weight_grad(d_out, grads.pop(), w_down) if need_dw_down else None
        else:
            dw_down = _down_projection_grads_in_place(d_out, w_down, gate, up, need_dw_down,
                                                      act)
            ctx.overwritten = True
            grads = [gate, up]
        del gate, up
        return (*_projection_grads(grads, x, w_gate, w_up, ctx.needs_input_grad,
                                   saved_gate_grad=not ctx.recompute), dw_down, None, None, None)


def swiglu_mlp_2d(x: Tensor, w_gate: Tensor, w_up: Tensor, w_down: Tensor, fast_accum: bool,
                  recompute: bool, needs_grad: bool, activation: str) -> Tensor:
    """The gated block with its down projection, for 2-D x, with autograd: swiglu_2d's node
    with the down projection inside."""
    if needs_grad and not torch.compiler.is_compiling() and _runs_triton(x, w_gate):
        return _EagerSwiGLUMLP.apply(x, w_gate, w_up, w_down, fast_accum, recompute,
                                     activation)
    if needs_grad:  # compiling, or nothing to compute
        return swiglu_mlp_forward(x, w_gate, w_up, w_down, fast_accum, recompute,
                                  activation)[0]
    return torch.mm(swiglu_2d(x, w_gate, w_up, fast_accum, False, False, activation), w_down)


@torch.library.custom_op("fused_swiglu::swiglu_mlp_forward", mutates_args=())
def swiglu_mlp_forward(x: Tensor, w_gate: Tensor, w_up: Tensor, w_down: Tensor,
                       fast_accum: bool, recompute: bool,
                       activation: str) -> tuple[Tensor, Tensor, Tensor]:
    """(out, g, u) of the block for 2-D x, out = (act(g) * u) @ w_down, g and u empty with
    recompute: the compiled graph's forward, whose backward (below) keeps g and u (or
    nothing) and writes y again, as the eager graphs do."""
    hidden, gate, up = _forward_values(x, w_gate, w_up, fast_accum, not recompute, activation)
    return torch.mm(hidden, w_down), gate, up


@swiglu_mlp_forward.register_fake
def _(x, w_gate, w_up, w_down, fast_accum, recompute, activation):
    preact_shape = (0,) if recompute else (x.shape[0], w_gate.shape[1])
    return (x.new_empty((x.shape[0], w_down.shape[1])), x.new_empty(preact_shape),
            x.new_empty(preact_shape))


def _mlp_setup_context(ctx, inputs, output):
    x, w_gate, w_up, w_down, fast_accum, recompute, activation = inputs
    _, gate, up = output
    ctx.mark_non_differentiable(gate, up)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(x, w_gate, w_up, w_down, gate, up)
    ctx.fast_accum = fast_accum
    ctx.recompute = recompute
    ctx.activation = activation


def _mlp_backward(ctx, d_out, _unused_gate_grad, _unused_up_grad):
    x, w_gate, w_up, w_down, gate, up = ctx.saved_tensors
    act = ctx.activation
    if torch.is_grad_enabled():  # create_graph=True
        return (*composite_backward.swiglu_mlp_backward(d_out, x, w_gate, w_up, w_down, act,
                                                        ctx.needs_input_grad), None, None, None)
    need_dw_down = ctx.needs_input_grad[3]
    d_hidden = torch.mm(d_out, w_down.t())
    dw_down = None
    if ctx.recompute:
        *grads, hidden = gate_grads_recompute(d_hidden, x, w_gate, w_up, ctx.fast_accum,
                                              need_dw_down, act)
        if need_dw_down:
            dw_down = _weight_grad(d_out, hidden, w_down)
    else:
        if need_dw_down:
            # y again from the saved g and u, rounded as the forward's y (a compiler fuses
            # this into one pass), and dead before dg and du are allocated
            hidden = (ACTIVATIONS[act](gate.float()) * up.float()).to(gate.dtype)
            dw_down = _weight_grad(d_out, hidden, w_down)
            del hidden
        grads = [gate_grad(d_hidden, gate, up, act), up_grad(d_hidden, gate, act)]
    del d_hidden, gate, up
    return (*_projection_grads(grads, x, w_gate, w_up, ctx.needs_input_grad), dw_down,
            None, None, None)


swiglu_mlp_forward.register_autograd(_mlp_backward, setup_context=_mlp_setup_context)
