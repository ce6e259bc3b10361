"""The dual GEMM as one GEMM, for Hopper's tensor descriptors (TMA): a (2, N, K) descriptor
stacks the two weights, so each k-step is ONE MMA of width 2 * BLOCK_N whose accumulator
splits into g and u in the epilogue. With two half-width MMAs per k-step (kernels/dual_gemm.py)
the forward ran 1.03-1.19x the cuBLAS packed GEMM on an H200 (geometric mean 1.08); this kernel
runs 0.98-1.08x (geometric mean 1.01; NOTES.md, v5).

A persistent grid walks the tiles in one flattened loop, so the compiler issues the next
tile's loads before this tile's epilogue, and the epilogue stores through tensor descriptors."""

import triton
import triton.language as tl

from .common import activation, glu_grads, grouped_tile, mma, rounded


@triton.jit
def stacked_gemm_kernel(
    # tensor descriptors: A (M, K); the weights as one (2, N, K) tensor, gate first unless
    # UP_FIRST; y, dy and the pair (gate, up), g and u or dg and du, all (M, N). Unused ones
    # are None: y in the backward unless EPILOGUE is 2, dy in the forward, gate and up
    # without STORE_PREACT.
    a, w, y, gate_out, up_out, dy,
    M, N, K, M_BUCKET, NUM_SMS,
    # the same meaning as dual_gemm_kernel's
    EPILOGUE: tl.constexpr, ACTIVATION: tl.constexpr, STORE_PREACT: tl.constexpr,
    UP_FIRST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    num_tiles = tl.cdiv(M, BLOCK_M) * tl.cdiv(N, BLOCK_N)
    # the epilogue keeps its own tile counter, one tile behind the loads': with the two
    # independent, the flattened loop can prefetch the next tile while this one is stored
    tile_stored = tl.program_id(0) - NUM_SMS
    for tile in tl.range(tl.program_id(0), num_tiles, NUM_SMS, flatten=True):
        pid_m, pid_n = grouped_tile(tile, M, N, BLOCK_M, BLOCK_N, GROUP_M)
        # float32 accumulators only: Hopper's tensor cores run float16 ones no faster
        acc = tl.zeros((BLOCK_M, 2 * BLOCK_N), dtype=tl.float32)
        for k in range(tl.cdiv(K, BLOCK_K)):
            a_tile = a.load([pid_m * BLOCK_M, k * BLOCK_K])
            w_tile = w.load([0, pid_n * BLOCK_N, k * BLOCK_K]).reshape(2 * BLOCK_N, BLOCK_K)
            acc = mma(a_tile, w_tile.T, acc, tl.float32)

        tile_stored += NUM_SMS
        pid_m, pid_n = grouped_tile(tile_stored, M, N, BLOCK_M, BLOCK_N, GROUP_M)
        off_m = pid_m * BLOCK_M
        off_n = pid_n * BLOCK_N
        left, right = tl.split(tl.permute(tl.reshape(acc, (BLOCK_M, 2, BLOCK_N)), (0, 2, 1)))
        if UP_FIRST:
            gate, up = right, left
        else:
            gate, up = left, right
        if EPILOGUE == 0:
            y.store([off_m, off_n], rounded(activation(gate, ACTIVATION) * up, y.dtype))
            if STORE_PREACT:
                gate_out.store([off_m, off_n], rounded(gate, gate_out.dtype))
                up_out.store([off_m, off_n], rounded(up, up_out.dtype))
        else:
            if EPILOGUE == 2:  # from the unrounded g and u, as the forward computed it
                y.store([off_m, off_n], rounded(activation(gate, ACTIVATION) * up, y.dtype))
            # the backward sees g and u rounded to the storage dtype, as a stored forward would
            gate = rounded(gate, gate_out.dtype).to(tl.float32)
            up = rounded(up, up_out.dtype).to(tl.float32)
            d_gate, d_up = glu_grads(dy.load([off_m, off_n]).to(tl.float32), gate, up,
                                     ACTIVATION)
            gate_out.store([off_m, off_n], rounded(d_gate, gate_out.dtype))
            up_out.store([off_m, off_n], rounded(d_up, up_out.dtype))
