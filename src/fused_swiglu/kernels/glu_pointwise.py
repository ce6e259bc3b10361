"""Elementwise SwiGLU pass over the pre-activations g, u: the backward's dg and du from dy,
and the SwiGLU output y = act(g) * u (for a down projection that did not keep it, and for the
forward where cuBLAS computed g and u)."""

import triton
import triton.language as tl

from .common import activation, glu_grads, rounded


@triton.jit
def glu_pointwise_kernel(
    # pointers: g and u in, dg and du out (which may be g and u themselves). d_gate or d_up
    # may be None, for a pass that writes only the other; up is None where d_gate is, since du
    # does not depend on u. product: y, or None. dy None: y alone (dg and du are None)
    dy, gate, up, d_gate, d_up, product,
    # sizes: every matrix is M x N
    M, N,
    # strides (gate, up, d_gate, d_up and product share theirs)
    stride_dym, stride_dyn, stride_m, stride_n,
    # meta-parameters; ACTIVATION is the gate's (kernels/common.py)
    ACTIVATION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (rows[:, None] < M) & (cols[None, :] < N)
    offsets = rows[:, None] * stride_m + cols[None, :] * stride_n
    g = tl.load(gate + offsets, mask=mask, other=0.0).to(tl.float32)
    if up is not None:
        u = tl.load(up + offsets, mask=mask, other=0.0).to(tl.float32)
    else:
        u = g  # only du is written, which does not read u
    if dy is not None:
        grad = tl.load(dy + rows[:, None] * stride_dym + cols[None, :] * stride_dyn,
                       mask=mask, other=0.0).to(tl.float32)
        dg, du = glu_grads(grad, g, u, ACTIVATION)
        if d_gate is not None:
            tl.store(d_gate + offsets, rounded(dg, d_gate.dtype.element_ty), mask=mask)
        if d_up is not None:
            tl.store(d_up + offsets, rounded(du, d_up.dtype.element_ty), mask=mask)
    if product is not None:
        tl.store(product + offsets, rounded(activation(g, ACTIVATION) * u, product.dtype.element_ty), mask=mask)
