"""Elementwise SwiGLU backward: from dy and the stored pre-activations g, u to dg and du."""

import triton
import triton.language as tl

from .common import swiglu_grads


@triton.jit
def glu_backward_kernel(
    # pointers: preact holds [g | u], grads receives [dg | du] (it may be preact itself)
    dy, preact, grads,
    # sizes: dy is M x N, preact and grads M x 2N
    M, N,
    # strides (preact and grads share theirs)
    stride_dym, stride_dyn, stride_m, stride_n,
    # meta-parameters
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (rows[:, None] < M) & (cols[None, :] < N)
    offsets = rows[:, None] * stride_m + cols[None, :] * stride_n
    up_offsets = offsets + N * stride_n
    grad = tl.load(dy + rows[:, None] * stride_dym + cols[None, :] * stride_dyn,
                   mask=mask, other=0.0).to(tl.float32)
    g = tl.load(preact + offsets, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(preact + up_offsets, mask=mask, other=0.0).to(tl.float32)
    d_gate, d_up = swiglu_grads(grad, g, u)
    out_dtype = grads.dtype.element_ty
    tl.store(grads + offsets, d_gate.to(out_dtype), mask=mask)
    tl.store(grads + up_offsets, d_up.to(out_dtype), mask=mask)
