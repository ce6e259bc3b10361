"""float8 training and inference of the gated projections and the block, recipe "rowwise":
every GEMM of the forward and the backward on float8_e4m3fn operands, each quantized along its
GEMM's K with one float32 scale per row (per token, per channel), computed from the current
values on each call (fused_swiglu.fp8.recipe). Per GEMM, with x (M, K), the weights (K, N),
g, u, y and their gradients (M, N):

- forward ``[g, u] = x @ [w_gate, w_up]``: x per token along K, each weight per output
  channel along K; the fused kernel (the stacked one where tensor descriptors can describe x)
  computes y = act(g) * u in its epilogue, and keeps g and u in the input dtype.
- ``dx = dg @ w_gate^T + du @ w_up^T``: dg and du per token along N, the weights per input
  channel along N (two GEMMs, summed).
- ``dw = x^T @ dg``: x^T and dg^T per channel along the tokens.
- the block's down projection ``out = y @ w_down`` and its gradients alike; its backward's
  pass that computes dg and du writes y again from g and u (as the 16-bit block's does), then
  quantizes y^T.

dg and du are computed in the input dtype from the stored g and u by the 16-bit backward's
pass, which overwrites g and u with them where the kernels run eagerly (as the 16-bit backward
does; a second backward through the graph then asks for recompute=True), then quantized.
Autograd keeps what the 16-bit path keeps (x, the weights, and g and u unless recompute); the
operands are quantized when their GEMMs run, both ways in one pair of passes where two GEMMs
read one tensor along different axes (dg, du; fp8/rows_columns.py; d_out's two are made apart,
the second after the gate-gradient pass, whose peak it would raise). On the CPU without
Triton's interpreter every step runs in PyTorch (the recipe's quantization, bit for bit the
kernels'; float32 products of the dequantized operands), with the interpreter the kernels run
and the GEMMs of the backward in PyTorch."""

import torch

from .. import launch, ops
from ..activations import ACTIVATIONS
from ..tuning import runs_kernels
from . import ops as fp8_ops
from .ops import quantize_both_ways, quantize_rows, scaled_matmul


def _preact(x_q, x_s, dtype, w_gate, w_up, activation, store_preact):
    """(y, g, u) with the (K, N) weights quantized now; g and u None without store_preact."""
    y, gate, up = fp8_ops.gated_forward(x_q, x_s, w_gate, w_up, dtype, activation,
                                        store_preact)
    return (y, gate, up) if store_preact else (y, None, None)


def _gate_grads(ctx, dy, gate, up, with_product=False):
    """(dg, du, y, maxima) in dy's dtype from dy and g and u, by the 16-bit backward's pass;
    y = act(g) * u only with_product, else None. Where the kernels run eagerly the pass
    overwrites g and u with dg and du and writes y beside them, as the 16-bit block's backward
    does: new tensors would hold two tokens x d_ff buffers more at the backward's peak, and y
    computed in PyTorch four float32 ones. Overwritten saved tensors refuse a second backward
    (ops.SECOND_BACKWARD_MESSAGE). There the pass also records the row and column maxima of
    dg, du and y, for their quantization (a read of each fewer): maxima is those three, else
    (None, None, None)."""
    if runs_kernels(gate) and gate.numel() and not torch.compiler.is_compiling():
        product = launch.new_output(gate.shape, gate) if with_product else None
        m, n = gate.shape
        # one zeroed allocation for all three
        maxima = torch.zeros(3, m + n, dtype=torch.int32, device=gate.device).unbind()
        if not with_product:
            maxima = (*maxima[:2], None)
        ops._gate_grads_in_place(dy, gate, up, ctx.activation, product=product, maxima=maxima)
        ctx.overwritten = not ctx.recompute
        ctx.grads_in_place = True
        return gate, up, product, maxima
    product = _product(gate, up, ctx.activation) if with_product else None
    return (ops.gate_grad(dy, gate, up, ctx.activation),
            ops.up_grad(dy, gate, ctx.activation), product, (None, None, None))


def _product(gate, up, activation):
    """y = act(g) * u from g and u, in their dtype (a compiler fuses it into one pass)."""
    return (ACTIVATIONS[activation](gate.float()) * up.float()).to(gate.dtype)


def _weight_grad(d_out_t, a_t, w):
    """The gradient of w in a @ w from the quantized transposes d_out^T (N, M) and a^T (K, M),
    in w's own layout (as ops._weight_grad builds it)."""
    if w.stride(0) == 1 and w.stride(1) != 1:
        return scaled_matmul(*d_out_t, *a_t, w.dtype).t()
    return scaled_matmul(*a_t, *d_out_t, w.dtype)


def _input_grad_part(d_out_rows, w, dtype):
    """d_out @ w^T from d_out quantized per row along N, with w (K, N) quantized per row along
    N here."""
    return scaled_matmul(*d_out_rows, *quantize_rows(w), dtype)


def _backward_inputs(ctx, caller, x, w_gate, w_up, gate, up, dtype):
    """(g, u, x^T quantized per channel or None): g and u saved, or with recompute computed
    again from x, whose quantization both ways then comes from one pair of passes (without
    recompute x^T is quantized later, when the weight gradients need it); RuntimeError for a
    backward that autograd would differentiate (create_graph=True)."""
    if torch.is_grad_enabled():
        raise RuntimeError(f"{caller}(fp8=...): gradients of gradients (create_graph=True) "
                           f"are not supported with float8; use fp8=False")
    if not ctx.recompute:
        return gate, up, None
    need_weight_grads = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
    x_rows, x_t = quantize_both_ways(x, True, need_weight_grads)
    _, gate, up = _preact(*x_rows, dtype, w_gate, w_up, ctx.activation, True)
    return gate, up, x_t


class Fp8SwiGLU(torch.autograd.Function):
    """act(x @ w_gate) * (x @ w_up) for 2-D x, every GEMM in float8 (the module docstring).
    Keeps what the 16-bit node keeps: x and the weights (inputs), and g and u unless
    recompute; the backward quantizes x again, as each of its GEMMs needs it."""

    @staticmethod
    def forward(ctx, x, w_gate, w_up, activation, recompute):
        y, gate, up = _preact(*quantize_rows(x), x.dtype, w_gate, w_up, activation,
                              not recompute)
        ctx.activation, ctx.recompute = activation, recompute
        ctx.save_for_backward(x, w_gate, w_up, gate, up)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, w_gate, w_up, gate, up = ops._saved_for_eager_backward(ctx)
        gate, up, x_t = _backward_inputs(ctx, "swiglu", x, w_gate, w_up, gate, up, dy.dtype)
        d_gate, d_up, _, maxima = _gate_grads(ctx, dy.contiguous(), gate, up)
        del gate, up
        return (*_projection_grads(ctx, d_gate, d_up, x, x_t, w_gate, w_up, maxima[:2]),
                None, None)


def _projection_grads(ctx, d_gate, d_up, x, x_t, w_gate, w_up, maxima):
    """(dx, dw_gate, dw_up), None where not needed, in float8 GEMMs; x_t is x^T quantized per
    channel, or None to quantize it here; maxima: dg's and du's row and column maxima, or
    None each."""
    need_x, need_wg, need_wu = ctx.needs_input_grad[:3]
    if x_t is None and (need_wg or need_wu):
        x_t = quantize_both_ways(x, False, True)[1]
    dx, weight_grads = None, []
    # each of dg and du quantized both ways at once (two reads), its float8 copies dropped
    # before the other's are made
    for d_pre, w, need_w, d_pre_maxima in ((d_gate, w_gate, need_wg, maxima[0]),
                                           (d_up, w_up, need_wu, maxima[1])):
        by_rows, by_columns = quantize_both_ways(d_pre, need_x, need_w, d_pre_maxima)
        if getattr(ctx, "grads_in_place", False):
            # dg and du live in g's and u's memory, which the node holds until it returns; the
            # GEMMs read only their float8 copies, so each is given back now, before the GEMMs
            # allocate (the 16-bit backward, whose GEMMs read dg itself, gives it back after)
            ops._release_memory(d_pre)
        if need_x:
            part = _input_grad_part(by_rows, w, x.dtype)
            dx = part if dx is None else dx.add_(part)
        weight_grads.append(_weight_grad(by_columns, x_t, w) if need_w else None)
        del by_rows, by_columns
    return dx, *weight_grads


def _down_projection(y, w_down, dtype):
    """y @ w_down in float8: y per token along d_ff, w_down per output channel."""
    return scaled_matmul(*quantize_rows(y), *quantize_rows(w_down.t()), dtype)


class Fp8SwiGLUMLP(torch.autograd.Function):
    """(act(x @ w_gate) * (x @ w_up)) @ w_down for 2-D x, every GEMM in float8, keeping x, the
    weights and, unless recompute, g and u, but not y, as the 16-bit block does."""

    @staticmethod
    def forward(ctx, x, w_gate, w_up, w_down, activation, recompute):
        y, gate, up = _preact(*quantize_rows(x), x.dtype, w_gate, w_up, activation,
                              not recompute)
        ctx.activation, ctx.recompute = activation, recompute
        ctx.save_for_backward(x, w_gate, w_up, w_down, gate, up)
        return _down_projection(y, w_down, x.dtype)

    @staticmethod
    def backward(ctx, d_out):
        x, w_gate, w_up, w_down, gate, up = ops._saved_for_eager_backward(ctx)
        gate, up, x_t = _backward_inputs(ctx, "swiglu_mlp", x, w_gate, w_up, gate, up,
                                         d_out.dtype)
        d_out = d_out.contiguous()
        need_dw_down = ctx.needs_input_grad[3]
        d_hidden = _input_grad_part(quantize_rows(d_out), w_down, d_out.dtype)
        # the pass that computes dg and du writes y again for w_down's gradient
        d_gate, d_up, hidden, maxima = _gate_grads(ctx, d_hidden, gate, up, need_dw_down)
        del gate, up, d_hidden
        dw_down = None
        if need_dw_down:
            # d_out^T quantized only now, not with d_out's rows (one more read of d_out): the
            # backward's peak is the pass above, which its copy would have grown
            out_columns = quantize_both_ways(d_out, False, True)[1]
            hidden_t = quantize_both_ways(hidden, False, True, maxima[2])[1]
            del hidden
            dw_down = _weight_grad(out_columns, hidden_t, w_down)
            del hidden_t, out_columns
        return (*_projection_grads(ctx, d_gate, d_up, x, x_t, w_gate, w_up, maxima[:2]),
                dw_down, None, None)


def swiglu_fp8_2d(x, w_gate, w_up, activation, recompute, needs_grad):
    """swiglu(fp8=...) of 2-D x: the Function where autograd needs it, the forward alone
    otherwise."""
    if needs_grad:
        return Fp8SwiGLU.apply(x, w_gate, w_up, activation, recompute)
    return _preact(*quantize_rows(x), x.dtype, w_gate, w_up, activation, False)[0]


def swiglu_mlp_fp8_2d(x, w_gate, w_up, w_down, activation, recompute, needs_grad):
    """swiglu_mlp(fp8=...) of 2-D x."""
    if needs_grad:
        return Fp8SwiGLUMLP.apply(x, w_gate, w_up, w_down, activation, recompute)
    y = _preact(*quantize_rows(x), x.dtype, w_gate, w_up, activation, False)[0]
    return _down_projection(y, w_down, x.dtype)
