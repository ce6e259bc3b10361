"""One GEMM with two right-hand sides: acc_g = A @ B_gate and acc_u = A @ B_up share every tile
of A, and an epilogue turns the pair into the SwiGLU output or its gradients."""

import triton
import triton.language as tl

from .common import activation, glu_grads, grouped_tile, load_tile, mma, rounded

# Epilogues (values of EPILOGUE).
SWIGLU_FORWARD = 0  # out_a = act(g) * u; with STORE_PREACT also out_b = g, out_c = u
SWIGLU_BACKWARD = 1  # out_a = dy * u * act'(g), out_b = dy * act(g): recomputed g, u
# the backward's outputs, and out_c = act(g) * u: the SwiGLU output again, for the weight
# gradient of a down projection that did not keep it
SWIGLU_BACKWARD_AND_PRODUCT = 2


@triton.jit
def dual_gemm_kernel(
    # operands: pointers, or tensor descriptors of their storage when USE_TMA
    a, b_gate, b_up,
    # outputs (out_b and out_c share strides) and the incoming gradient of the backward
    out_a, out_b, out_c, dy,
    # sizes: A is M x K, B_gate and B_up are K x N; M_BUCKET only keys the autotuner
    M, N, K, M_BUCKET,
    # strides of the logical matrices
    stride_am, stride_ak,
    stride_gk, stride_gn,
    stride_uk, stride_un,
    stride_am_out, stride_an_out,
    stride_bm_out, stride_bn_out,
    stride_dym, stride_dyn,
    # meta-parameters; FAST_ACCUM (the caller allows float16 accumulators) only keys the
    # autotuner, which sets FP16_ACC by timing both kinds of accumulator; ACTIVATION is the
    # gate's (kernels/common.py)
    EPILOGUE: tl.constexpr, ACTIVATION: tl.constexpr, STORE_PREACT: tl.constexpr, FAST_ACCUM: tl.constexpr,
    USE_TMA: tl.constexpr, A_TRANSPOSED: tl.constexpr, B_TRANSPOSED: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    FP16_ACC: tl.constexpr,
):
    pid_m, pid_n = grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    off_m = pid_m * BLOCK_M
    off_n = pid_n * BLOCK_N

    ACC_DTYPE: tl.constexpr = tl.float16 if FP16_ACC else tl.float32
    acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    acc_u = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        off_k = k * BLOCK_K
        a_tile = load_tile(a, off_m, off_k, M, K, stride_am, stride_ak,
                           BLOCK_M, BLOCK_K, USE_TMA, A_TRANSPOSED)
        g_tile = load_tile(b_gate, off_k, off_n, K, N, stride_gk, stride_gn,
                           BLOCK_K, BLOCK_N, USE_TMA, B_TRANSPOSED)
        u_tile = load_tile(b_up, off_k, off_n, K, N, stride_uk, stride_un,
                           BLOCK_K, BLOCK_N, USE_TMA, B_TRANSPOSED)
        acc_g = mma(a_tile, g_tile, acc_g, ACC_DTYPE)
        acc_u = mma(a_tile, u_tile, acc_u, ACC_DTYPE)

    # int64 offsets: M * N can pass 2**31 elements
    rows = off_m.to(tl.int64) + tl.arange(0, BLOCK_M)
    cols = off_n.to(tl.int64) + tl.arange(0, BLOCK_N)
    mask = (rows[:, None] < M) & (cols[None, :] < N)
    a_offsets = rows[:, None] * stride_am_out + cols[None, :] * stride_an_out
    b_offsets = rows[:, None] * stride_bm_out + cols[None, :] * stride_bn_out
    gate = acc_g.to(tl.float32)
    up = acc_u.to(tl.float32)
    if EPILOGUE == 0:
        y = activation(gate, ACTIVATION) * up
        tl.store(out_a + a_offsets, rounded(y, out_a.dtype.element_ty), mask=mask)
        if STORE_PREACT:
            tl.store(out_b + b_offsets, rounded(acc_g, out_b.dtype.element_ty), mask=mask)
            tl.store(out_c + b_offsets, rounded(acc_u, out_c.dtype.element_ty), mask=mask)
    else:
        if EPILOGUE == 2:  # from the unrounded g and u, as the forward computed it
            y = activation(gate, ACTIVATION) * up
            tl.store(out_c + b_offsets, rounded(y, out_c.dtype.element_ty), mask=mask)
        # the backward sees g and u rounded to the storage dtype, as a stored forward would
        gate = rounded(gate, out_a.dtype.element_ty).to(tl.float32)
        up = rounded(up, out_a.dtype.element_ty).to(tl.float32)
        dy_tile = tl.load(dy + rows[:, None] * stride_dym + cols[None, :] * stride_dyn,
                          mask=mask, other=0.0).to(tl.float32)
        d_gate, d_up = glu_grads(dy_tile, gate, up, ACTIVATION)
        tl.store(out_a + a_offsets, rounded(d_gate, out_a.dtype.element_ty), mask=mask)
        tl.store(out_b + b_offsets, rounded(d_up, out_b.dtype.element_ty), mask=mask)
