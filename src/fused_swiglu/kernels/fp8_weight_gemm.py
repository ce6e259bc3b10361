"""The decode step's GEMM on float8 weights: out = A @ (W * scales)^T with A in 16 bits and W
float8_e4m3 in nn.Linear's (N, K) layout with one float32 scale per output channel. A few
tokens make this step a read of the weights, so only the weights are in float8 (half the
bytes); each tile of W is widened to A's dtype (exactly: every e4m3 value is a bfloat16 and a
float16) for a 16-bit MMA, and the scales multiply the sums. With GATED the weight buffer holds
two planes (gate, then up) and the epilogue writes y = act(g) * u."""

import triton
import triton.language as tl

from .common import INTERPRETING, activation, mma, rounded


@triton.jit
def fp8_weight_gemm_kernel(
    # A (M x K, 16-bit); W (planes x N x K, float8) and its scales (planes x N, float32); out
    # (M x N, A's dtype)
    a, w, w_scales, out,
    M, N, K,
    stride_am, stride_ak,
    # strides of W: between the planes (gate, up), along N and along K
    stride_wp, stride_wn, stride_wk,
    stride_sp, stride_sn,
    stride_om, stride_on,
    # meta-parameters: GATED reads two planes and writes act(g) * u; ACTIVATION is the gate's
    # (kernels/common.py)
    GATED: tl.constexpr, ACTIVATION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # int64 offsets: N * K passes 2**31 elements in the largest models
    # the row tiles of one column tile are neighbours in launch order: the second reads the
    # weights' tile from L2
    pid = tl.program_id(0)
    row_tiles = tl.cdiv(M, BLOCK_M)
    cols = (pid // row_tiles).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = (pid % row_tiles).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < M
    col_mask = cols < N

    acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_u = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        ks = k * BLOCK_K + tl.arange(0, BLOCK_K).to(tl.int64)
        k_mask = ks < K
        a_tile = tl.load(a + rows[:, None] * stride_am + ks[None, :] * stride_ak,
                         mask=row_mask[:, None] & k_mask[None, :], other=0.0)
        if INTERPRETING:
            # float32 operands, which mma multiplies exactly, as fp8_gemm.fp8_mma does there
            a_tile = a_tile.to(tl.float32)
        # (BLOCK_K, BLOCK_N) tiles of W^T, read along K
        w_ptrs = w + cols[None, :] * stride_wn + ks[:, None] * stride_wk
        w_mask = k_mask[:, None] & col_mask[None, :]
        gate_tile = tl.load(w_ptrs, mask=w_mask, other=0.0).to(a_tile.dtype)
        acc_g = mma(a_tile, gate_tile, acc_g, tl.float32)
        if GATED:
            up_tile = tl.load(w_ptrs + stride_wp, mask=w_mask, other=0.0).to(a_tile.dtype)
            acc_u = mma(a_tile, up_tile, acc_u, tl.float32)

    out_v = acc_g * tl.load(w_scales + cols * stride_sn, mask=col_mask, other=0.0)[None, :]
    if GATED:
        up_scale = tl.load(w_scales + stride_sp + cols * stride_sn, mask=col_mask, other=0.0)
        out_v = activation(out_v, ACTIVATION) * (acc_u * up_scale[None, :])
    tl.store(out + rows[:, None] * stride_om + cols[None, :] * stride_on,
             rounded(out_v, out.dtype.element_ty), mask=row_mask[:, None] & col_mask[None, :])

