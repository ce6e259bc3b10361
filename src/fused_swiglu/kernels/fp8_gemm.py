"""The float8 forward GEMM with the SwiGLU epilogue: g = A @ W_gate^T and u = A @ W_up^T from
float8_e4m3 operands with float32 scales, accumulated in float32, then y = act(g) * u.
fused_swiglu.fp8.reference is the specification; fused_swiglu.fp8.recipe makes the operands."""

import triton
import triton.language as tl

from .common import INTERPRETING, activation, grouped_tile, rounded

# Scaling granularities (values of GRANULARITY).
ROWWISE = 0  # a_scales (M, 1) per token, weight scales (N, 1) per output channel
# DeepSeek-V3: a_scales (M, ceil(K / 128)) per 1 x 128 group of a token, weight scales
# (ceil(N / 128), ceil(K / 128)) per 128 x 128 block; needs BLOCK_K == SCALE_GROUP and a
# BLOCK_N that divides SCALE_GROUP, so that one weight scale covers a tile's columns
BLOCKWISE = 1

SCALE_GROUP = 128  # columns (along K) per scale, and rows (along N) per weight block


@triton.jit
def fp8_mma(a, b, acc, PRECISE: tl.constexpr):
    """acc + a @ b of float8 tiles: PRECISE adds the dot's sum into float32 acc; without it,
    on sm_90, Triton leaves the tensor cores' reduced-precision accumulator running over the
    whole K loop."""
    if INTERPRETING:
        # Triton 3.9's interpreter decodes float8 dot operands exactly (through float16;
        # checked against float64 for e4m3 and e5m2); the float32 upcast keeps the CPU tests
        # independent of that, as mma does for bfloat16
        a = a.to(tl.float32)
        b = b.to(tl.float32)
        return tl.dot(a, b, acc, input_precision="ieee", out_dtype=tl.float32)
    # On sm_90 Triton lets the float8 tensor cores accumulate a whole dot in their reduced-
    # precision accumulator unless told otherwise (max_num_imprecise_acc defaults to 2**30
    # there); DeepSeek-V3 found that loses accuracy over long K and adds the partial sums into
    # float32 every 128 products along K. PRECISE asks for the same, once per K step: v15
    # measured it 1.31-1.40x slower in the stacked kernel, and g's extra error without it at
    # 2.8e-5 * sqrt(K) norm-wise (fp8/stacked.PRECISE_ACCUMULATION).
    if PRECISE:
        return tl.dot(a, b, acc, max_num_imprecise_acc=a.shape[1], out_dtype=tl.float32)
    return tl.dot(a, b, acc, out_dtype=tl.float32)


@triton.jit
def fp8_swiglu_kernel(
    # operands: A (M x K, float8) and its float32 scales; the two weights in nn.Linear's
    # layout (N x K, float8, contiguous along K as the tensor cores need B) and their scales
    a, a_scales, w_gate, gate_scales, w_up, up_scales,
    # outputs: y, and with STORE_PREACT g and u (the three share strides)
    y, gate, up,
    # sizes: A is M x K, each weight N x K
    M, N, K,
    # strides of the operands, the scales and the outputs
    stride_am, stride_ak,
    stride_gn, stride_gk,
    stride_un, stride_uk,
    stride_asm, stride_ask,
    stride_gsn, stride_gsk,
    stride_usn, stride_usk,
    stride_ym, stride_yn,
    # meta-parameters: GRANULARITY of the scales (ROWWISE or BLOCKWISE above); ACTIVATION is
    # the gate's (kernels/common.py)
    GRANULARITY: tl.constexpr, ACTIVATION: tl.constexpr, STORE_PREACT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    pid_m, pid_n = grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    # int64 offsets: M * K, N * K and M * N can pass 2**31 elements
    rows = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < M
    col_mask = cols < N
    if GRANULARITY == 1:
        tl.static_assert(BLOCK_K == 128 and 128 % BLOCK_N == 0)
    # the weight block (of SCALE_GROUP rows) of the tile's columns, for BLOCKWISE
    n_block = (pid_n.to(tl.int64) * BLOCK_N) // 128

    acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_u = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        ks = k * BLOCK_K + tl.arange(0, BLOCK_K).to(tl.int64)
        k_mask = ks < K
        a_tile = tl.load(a + rows[:, None] * stride_am + ks[None, :] * stride_ak,
                         mask=row_mask[:, None] & k_mask[None, :], other=0.0)
        # the weights' (BLOCK_K, BLOCK_N) tiles of W^T, read along K
        w_mask = k_mask[:, None] & col_mask[None, :]
        g_tile = tl.load(w_gate + cols[None, :] * stride_gn + ks[:, None] * stride_gk,
                         mask=w_mask, other=0.0)
        u_tile = tl.load(w_up + cols[None, :] * stride_un + ks[:, None] * stride_uk,
                         mask=w_mask, other=0.0)
        if GRANULARITY == 1:
            # one scale per row of A and one per weight for this K step: the products are
            # scaled and added into float32 here, which also bounds the tensor cores'
            # reduced-precision accumulation to one step of 128 along K
            a_scale = tl.load(a_scales + rows * stride_asm + k * stride_ask, mask=row_mask,
                              other=0.0)
            g_scale = tl.load(gate_scales + n_block * stride_gsn + k * stride_gsk)
            u_scale = tl.load(up_scales + n_block * stride_usn + k * stride_usk)
            zeros = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            acc_g += fp8_mma(a_tile, g_tile, zeros, True) * (a_scale * g_scale)[:, None]
            acc_u += fp8_mma(a_tile, u_tile, zeros, True) * (a_scale * u_scale)[:, None]
        else:
            acc_g = fp8_mma(a_tile, g_tile, acc_g, True)
            acc_u = fp8_mma(a_tile, u_tile, acc_u, True)
    if GRANULARITY == 0:
        # rowwise scales are constant along K: applied once, to the sums
        a_scale = tl.load(a_scales + rows * stride_asm, mask=row_mask, other=0.0)
        g_scale = tl.load(gate_scales + cols * stride_gsn, mask=col_mask, other=0.0)
        u_scale = tl.load(up_scales + cols * stride_usn, mask=col_mask, other=0.0)
        acc_g = acc_g * a_scale[:, None] * g_scale[None, :]
        acc_u = acc_u * a_scale[:, None] * u_scale[None, :]

    mask = row_mask[:, None] & col_mask[None, :]
    offsets = rows[:, None] * stride_ym + cols[None, :] * stride_yn
    out = activation(acc_g, ACTIVATION) * acc_u
    tl.store(y + offsets, rounded(out, y.dtype.element_ty), mask=mask)
    if STORE_PREACT:
        tl.store(gate + offsets, rounded(acc_g, gate.dtype.element_ty), mask=mask)
        tl.store(up + offsets, rounded(acc_u, up.dtype.element_ty), mask=mask)
