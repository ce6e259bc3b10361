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
    # None, or for each of dg, du and y an int32 buffer of M + N, zero before the launch, that
    # receives the float32 bits of max |stored value| of each row, then of each column (as
    # kernels/quantize.py's row_column_amax_kernel records them), for their float8 quantization
    d_gate_amax, d_up_amax, product_amax,
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
            dg = rounded(dg, d_gate.dtype.element_ty)
            tl.store(d_gate + offsets, dg, mask=mask)
            if d_gate_amax is not None:
                _record_amax(d_gate_amax, dg, rows, cols, M, N, mask)
        if d_up is not None:
            du = rounded(du, d_up.dtype.element_ty)
            tl.store(d_up + offsets, du, mask=mask)
            if d_up_amax is not None:
                _record_amax(d_up_amax, du, rows, cols, M, N, mask)
    if product is not None:
        y = rounded(activation(g, ACTIVATION) * u, product.dtype.element_ty)
        tl.store(product + offsets, y, mask=mask)
        if product_amax is not None:
            _record_amax(product_amax, y, rows, cols, M, N, mask)


@triton.jit
def _record_amax(amax, stored, rows, cols, M, N, mask):
    """The tile's row and column maxima of |stored| into amax (rows, then columns): the bits of
    non-negative float32 values order as their int32 values do, so an integer atomic maximum
    over the tiles is the exact float maximum, in any order."""
    magnitude = tl.where(mask, tl.abs(stored.to(tl.float32)), 0.0)
    tl.atomic_max(amax + rows, tl.max(magnitude, axis=1).to(tl.int32, bitcast=True),
                  mask=rows < M)
    tl.atomic_max(amax + M + cols, tl.max(magnitude, axis=0).to(tl.int32, bitcast=True),
                  mask=cols < N)
