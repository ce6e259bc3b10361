"""The float8 forward GEMM with the SwiGLU epilogue on Hopper's tensor descriptors: the bf16
stacked kernel's design (kernels/stacked_gemm.py: one (2, N, K) descriptor of both weights, one
MMA of width 2 * BLOCK_N per k-step, a persistent grid whose flattened loop prefetches the next
tile during this one's epilogue) with float8_e4m3 operands and rowwise scales: one float32 scale
per token of A and one per output channel of each weight, applied once to the float32 sums in
the epilogue. kernels/fp8_gemm.py is the pointer-load kernel for what descriptors cannot
describe (rows not 16-byte aligned) and for 1 x 128 / 128 x 128 block scales."""

import triton
import triton.language as tl

from .common import activation, grouped_tile, rounded
from .fp8_gemm import fp8_mma


@triton.jit
def fp8_stacked_swiglu_kernel(
    # tensor descriptors: A (M, K) float8; both weights as one (2, N, K) float8 tensor, gate
    # first; y and, with STORE_PREACT, g and u (M, N) in the output dtype (else None)
    a, w, y, gate_out, up_out,
    # pointers to float32 scales: A's (M,) with stride a_scale_stride, the weights' (2, N),
    # gate's then up's, with strides w_scale_stride_w (between the two) and w_scale_stride_n
    a_scales, w_scales, a_scale_stride, w_scale_stride_w, w_scale_stride_n,
    M, N, K, NUM_SMS,
    ACTIVATION: tl.constexpr, STORE_PREACT: tl.constexpr, PRECISE_ACC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    num_tiles = tl.cdiv(M, BLOCK_M) * tl.cdiv(N, BLOCK_N)
    # as in the bf16 kernel: the epilogue's tile counter runs one tile behind the loads'
    tile_stored = tl.program_id(0) - NUM_SMS
    for tile in tl.range(tl.program_id(0), num_tiles, NUM_SMS, flatten=True):
        pid_m, pid_n = grouped_tile(tile, M, N, BLOCK_M, BLOCK_N, GROUP_M)
        acc = tl.zeros((BLOCK_M, 2 * BLOCK_N), dtype=tl.float32)
        for k in range(tl.cdiv(K, BLOCK_K)):
            a_tile = a.load([pid_m * BLOCK_M, k * BLOCK_K])
            w_tile = w.load([0, pid_n * BLOCK_N, k * BLOCK_K]).reshape(2 * BLOCK_N, BLOCK_K)
            acc = fp8_mma(a_tile, w_tile.T, acc, PRECISE_ACC)

        tile_stored += NUM_SMS
        pid_m, pid_n = grouped_tile(tile_stored, M, N, BLOCK_M, BLOCK_N, GROUP_M)
        off_m = pid_m * BLOCK_M
        off_n = pid_n * BLOCK_N
        gate, up = tl.split(tl.permute(tl.reshape(acc, (BLOCK_M, 2, BLOCK_N)), (0, 2, 1)))
        # the scales of this tile's tokens and channels; rows and columns past the matrix
        # get 0, and their results are clipped by the stores
        rows = off_m + tl.arange(0, BLOCK_M)
        cols = (off_n + tl.arange(0, BLOCK_N)).to(tl.int64)
        a_scale = tl.load(a_scales + rows.to(tl.int64) * a_scale_stride, mask=rows < M,
                          other=0.0)
        gate_scale = tl.load(w_scales + cols * w_scale_stride_n, mask=cols < N, other=0.0)
        up_scale = tl.load(w_scales + w_scale_stride_w + cols * w_scale_stride_n,
                           mask=cols < N, other=0.0)
        # sums of exact float8 products (float32, or the tensor cores' accumulator without
        # PRECISE_ACC), then two float32 roundings for the scales
        gate = gate * a_scale[:, None] * gate_scale[None, :]
        up = up * a_scale[:, None] * up_scale[None, :]
        y.store([off_m, off_n], rounded(activation(gate, ACTIVATION) * up, y.dtype))
        if STORE_PREACT:
            gate_out.store([off_m, off_n], rounded(gate, gate_out.dtype))
            up_out.store([off_m, off_n], rounded(up, up_out.dtype))
