"""Forward kernel variants against the cuBLAS packed GEMM, one variant per process (a variant
that hangs is killed by the caller's timeout without losing the others). GPU only:

    python benchmarks/forward_variants.py VARIANT        # see VARIANTS below

Besides the package's kernel, the variants are a plain TMA GEMM of the packed weight (what
Triton reaches on one GEMM, without the SwiGLU epilogue) and the dual GEMM with two half-width
MMAs per k-step, persistent or not, storing through tensor descriptors: the comparison that
led to the stacked kernel (NOTES.md, v5); and the stacked kernel with its epilogue's stores
made in different ways, for the training forward that also stores [g | u] (NOTES.md, v6)."""

import sys

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from fused_swiglu import launch
from fused_swiglu.bench import interleaved_medians, linear_layout_operands, median_ms
from fused_swiglu.kernels.common import grouped_tile, silu
from fused_swiglu.kernels.dual_gemm import SWIGLU_FORWARD
from fused_swiglu.tuning import make_stacked_config

SHAPES = [(8192, 4096, 11008), (8192, 4096, 14336), (4096, 8192, 28672), (8192, 2048, 5632)]


@triton.jit
def _store_tile(desc, off_m, off_n, tile, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                SUBTILE: tl.constexpr):
    if SUBTILE:
        # two half-width stores: half the shared-memory staging buffer
        halves = tl.permute(tl.reshape(tile, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1))
        left, right = tl.split(halves)
        desc.store([off_m, off_n], left)
        desc.store([off_m, off_n + BLOCK_N // 2], right)
    else:
        desc.store([off_m, off_n], tile)


@triton.jit
def plain_gemm_kernel(a_desc, b_desc, c_desc, M, N, K,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                      GROUP_M: tl.constexpr, NUM_SMS: tl.constexpr, PERSISTENT: tl.constexpr,
                      SUBTILE: tl.constexpr):
    """C = A @ B^T with B stored (N, K): the reference for what Triton's main loop reaches."""
    num_tiles = tl.cdiv(M, BLOCK_M) * tl.cdiv(N, BLOCK_N)
    first = tl.program_id(0)
    step = NUM_SMS if PERSISTENT else num_tiles
    tile_c = first - step
    for tile in tl.range(first, num_tiles, step, flatten=PERSISTENT):
        pid_m, pid_n = grouped_tile(tile, M, N, BLOCK_M, BLOCK_N, GROUP_M)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k in range(tl.cdiv(K, BLOCK_K)):
            a = a_desc.load([pid_m * BLOCK_M, k * BLOCK_K])
            b = b_desc.load([pid_n * BLOCK_N, k * BLOCK_K])
            acc = tl.dot(a, b.T, acc)
        # the epilogue's own tile counter: keeps it independent of the prefetching loop's
        tile_c += step
        pid_m, pid_n = grouped_tile(tile_c, M, N, BLOCK_M, BLOCK_N, GROUP_M)
        _store_tile(c_desc, pid_m * BLOCK_M, pid_n * BLOCK_N, acc.to(c_desc.dtype),
                    BLOCK_M, BLOCK_N, SUBTILE)


@triton.jit
def dual_gemm_store_kernel(a_desc, g_desc, u_desc, y_desc, M, N, K,
                           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                           GROUP_M: tl.constexpr, NUM_SMS: tl.constexpr,
                           PERSISTENT: tl.constexpr, SUBTILE: tl.constexpr,
                           WARP_SPECIALIZE: tl.constexpr):
    """y = silu(A @ G^T) * (A @ U^T), G and U stored (N, K), y through a tensor descriptor."""
    num_tiles = tl.cdiv(M, BLOCK_M) * tl.cdiv(N, BLOCK_N)
    first = tl.program_id(0)
    step = NUM_SMS if PERSISTENT else num_tiles
    tile_c = first - step
    for tile in tl.range(first, num_tiles, step, flatten=PERSISTENT,
                         warp_specialize=WARP_SPECIALIZE):
        pid_m, pid_n = grouped_tile(tile, M, N, BLOCK_M, BLOCK_N, GROUP_M)
        acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        acc_u = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k in range(tl.cdiv(K, BLOCK_K)):
            a = a_desc.load([pid_m * BLOCK_M, k * BLOCK_K])
            g = g_desc.load([pid_n * BLOCK_N, k * BLOCK_K])
            u = u_desc.load([pid_n * BLOCK_N, k * BLOCK_K])
            acc_g = tl.dot(a, g.T, acc_g)
            acc_u = tl.dot(a, u.T, acc_u)
        tile_c += step
        pid_m, pid_n = grouped_tile(tile_c, M, N, BLOCK_M, BLOCK_N, GROUP_M)
        y = (silu(acc_g) * acc_u).to(y_desc.dtype)
        _store_tile(y_desc, pid_m * BLOCK_M, pid_n * BLOCK_N, y, BLOCK_M, BLOCK_N, SUBTILE)


@triton.jit
def _halves(tile, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """The left and right (BLOCK_M, BLOCK_N // 2) halves of a tile."""
    return tl.split(tl.permute(tl.reshape(tile, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1)))


@triton.jit
def stacked_store_kernel(a_desc, w_desc, y_desc, gu_desc, M, N, K,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                         GROUP_M: tl.constexpr, NUM_SMS: tl.constexpr,
                         STORE_PREACT: tl.constexpr, ONE_GU_STORE: tl.constexpr,
                         WARP_SPECIALIZE: tl.constexpr, y_ptr, gu_ptr,
                         POINTER_STORES: tl.constexpr, SUBTILE: tl.constexpr):
    """The package's stacked kernel (gate first in memory), forward only, with variants of
    its epilogue: [g | u] stored as one (BLOCK_M, 2, BLOCK_N) block straight from the
    accumulator, or as two tiles after the split (as the package does); warp specialization;
    stores from registers through pointers (no shared-memory staging) for [g | u] (1) or for
    y too (2); descriptor stores in half-width sub-tiles (smaller staging buffers)."""
    num_tiles = tl.cdiv(M, BLOCK_M) * tl.cdiv(N, BLOCK_N)
    tile_c = tl.program_id(0) - NUM_SMS
    for tile in tl.range(tl.program_id(0), num_tiles, NUM_SMS, flatten=True,
                         warp_specialize=WARP_SPECIALIZE):
        pid_m, pid_n = grouped_tile(tile, M, N, BLOCK_M, BLOCK_N, GROUP_M)
        acc = tl.zeros((BLOCK_M, 2 * BLOCK_N), dtype=tl.float32)
        for k in range(tl.cdiv(K, BLOCK_K)):
            a = a_desc.load([pid_m * BLOCK_M, k * BLOCK_K])
            w = w_desc.load([0, pid_n * BLOCK_N, k * BLOCK_K]).reshape(2 * BLOCK_N, BLOCK_K)
            acc = tl.dot(a, w.T, acc)
        tile_c += NUM_SMS
        pid_m, pid_n = grouped_tile(tile_c, M, N, BLOCK_M, BLOCK_N, GROUP_M)
        off_m = pid_m * BLOCK_M
        off_n = pid_n * BLOCK_N
        pair = tl.reshape(acc, (BLOCK_M, 2, BLOCK_N))
        gate, up = tl.split(tl.permute(pair, (0, 2, 1)))
        rows = off_m.to(tl.int64) + tl.arange(0, BLOCK_M)
        cols = off_n + tl.arange(0, BLOCK_N)
        mask = (rows[:, None] < M) & (cols[None, :] < N)
        if SUBTILE:
            _store_halves(y_desc, gu_desc, off_m, off_n, silu(gate) * up, gate, up,
                          STORE_PREACT, BLOCK_M, BLOCK_N)
        else:
            if POINTER_STORES == 2:
                tl.store(y_ptr + rows[:, None] * N + cols[None, :],
                         (silu(gate) * up).to(y_desc.dtype), mask=mask)
            else:
                y_desc.store([off_m, off_n], (silu(gate) * up).to(y_desc.dtype))
            if STORE_PREACT and POINTER_STORES > 0:
                offsets = rows[:, None] * (2 * N) + cols[None, :]
                tl.store(gu_ptr + offsets, gate.to(gu_desc.dtype), mask=mask)
                tl.store(gu_ptr + offsets + N, up.to(gu_desc.dtype), mask=mask)
            elif STORE_PREACT and ONE_GU_STORE:
                gu_desc.store([off_m, 0, off_n], pair.to(gu_desc.dtype))
            elif STORE_PREACT:
                dtype: tl.constexpr = gu_desc.dtype
                gu_desc.store([off_m, 0, off_n], gate.to(dtype).reshape(BLOCK_M, 1, BLOCK_N))
                gu_desc.store([off_m, 1, off_n], up.to(dtype).reshape(BLOCK_M, 1, BLOCK_N))


@triton.jit
def _store_halves(y_desc, gu_desc, off_m, off_n, y, gate, up, STORE_PREACT: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """y, and with STORE_PREACT g and u, each stored as two half-width sub-tiles."""
    half: tl.constexpr = BLOCK_N // 2
    dtype: tl.constexpr = y_desc.dtype
    y0, y1 = _halves(y.to(dtype), BLOCK_M, BLOCK_N)
    y_desc.store([off_m, off_n], y0)
    y_desc.store([off_m, off_n + half], y1)
    if STORE_PREACT:
        g0, g1 = _halves(gate.to(dtype), BLOCK_M, BLOCK_N)
        gu_desc.store([off_m, 0, off_n], g0.reshape(BLOCK_M, 1, half))
        gu_desc.store([off_m, 0, off_n + half], g1.reshape(BLOCK_M, 1, half))
        u0, u1 = _halves(up.to(dtype), BLOCK_M, BLOCK_N)
        gu_desc.store([off_m, 1, off_n], u0.reshape(BLOCK_M, 1, half))
        gu_desc.store([off_m, 1, off_n + half], u1.reshape(BLOCK_M, 1, half))


def stacked_store(store_preact, one_gu_store, warp_specialize, bm=128, bn=128, bk=64, stages=3,
                  warps=8, pointer_stores=0, subtile=False):
    def build(x, w_gate, w_up, packed, y):
        m, k = x.shape
        n = w_gate.shape[1]
        gate, up = w_gate.T, w_up.T
        assert gate.data_ptr() < up.data_ptr()
        distance = (up.data_ptr() - gate.data_ptr()) // gate.element_size()
        w_desc = TensorDescriptor(gate, [2, n, k], [distance, k, 1], [2, bn, bk])
        a_desc = TensorDescriptor.from_tensor(x, [bm, bk])
        store_n = bn // 2 if subtile else bn
        y_desc = TensorDescriptor.from_tensor(y, [bm, store_n])
        preact = torch.empty(m, 2 * n, device=x.device, dtype=x.dtype)
        gu_desc = TensorDescriptor.from_tensor(preact.view(m, 2, n),
                                               [bm, 2 if one_gu_store else 1, store_n])
        grid = (min(_num_sms(), -(-m // bm) * -(-n // bn)),)

        def run():
            stacked_store_kernel[grid](a_desc, w_desc, y_desc, gu_desc, m, n, k, bm, bn, bk, 8,
                                       _num_sms(), store_preact, one_gu_store, warp_specialize,
                                       y, preact, pointer_stores, subtile,
                                       num_stages=stages, num_warps=warps)

        def result():
            if not store_preact:
                return y
            # y and [g | u] checked together
            return torch.cat([y, preact], dim=1)

        def reference():
            g, u = (x @ w_gate).float(), (x @ w_up).float()
            ref = torch.nn.functional.silu(g) * u
            return torch.cat([ref, g, u], dim=1) if store_preact else ref
        return run, result, reference
    return build


def package_training(x, w_gate, w_up, packed, y):
    """The package's training forward: y, g and u."""
    out = {}

    def run():
        out["y"], out["g"], out["u"] = launch.swiglu_forward(x, w_gate, w_up, False, True)

    def reference():
        g, u = (x @ w_gate).float(), (x @ w_up).float()
        return torch.cat([torch.nn.functional.silu(g) * u, g, u], dim=1)
    return run, lambda: torch.cat([out["y"], out["g"], out["u"]], dim=1), reference


def _num_sms():
    return torch.cuda.get_device_properties(0).multi_processor_count


def plain(bm, bn, bk, stages, warps, persistent, subtile):
    def build(x, w_gate, w_up, packed, y):
        m, k = x.shape
        n = packed.shape[1]
        c = torch.empty(m, n, device=x.device, dtype=x.dtype)
        a_desc = TensorDescriptor.from_tensor(x, [bm, bk])
        b_desc = TensorDescriptor.from_tensor(packed.T, [bn, bk])
        c_desc = TensorDescriptor.from_tensor(c, [bm, bn // 2 if subtile else bn])
        tiles = -(-m // bm) * -(-n // bn)
        grid = (min(_num_sms(), tiles) if persistent else tiles,)

        def run():
            plain_gemm_kernel[grid](a_desc, b_desc, c_desc, m, n, k, bm, bn, bk, 8, _num_sms(),
                                    persistent, subtile, num_stages=stages, num_warps=warps)
        return run, lambda: c, lambda: x.float() @ packed.float()
    return build


def dual_store(bm, bn, bk, stages, warps, persistent, subtile, warp_specialize=False):
    def build(x, w_gate, w_up, packed, y):
        m, k = x.shape
        n = w_gate.shape[1]
        a_desc = TensorDescriptor.from_tensor(x, [bm, bk])
        g_desc = TensorDescriptor.from_tensor(w_gate.T, [bn, bk])
        u_desc = TensorDescriptor.from_tensor(w_up.T, [bn, bk])
        y_desc = TensorDescriptor.from_tensor(y, [bm, bn // 2 if subtile else bn])
        tiles = -(-m // bm) * -(-n // bn)
        grid = (min(_num_sms(), tiles) if persistent else tiles,)

        def run():
            dual_gemm_store_kernel[grid](a_desc, g_desc, u_desc, y_desc, m, n, k, bm, bn, bk, 8,
                                         _num_sms(), persistent, subtile, warp_specialize,
                                         num_stages=stages, num_warps=warps)
        return run, lambda: y, None
    return build


def package(bm, bn, bk, stages, warps):
    def build(x, w_gate, w_up, packed, y):
        config = make_stacked_config(bm, bn, bk, stages, warps)

        def run():
            launch._dual_gemm(x, w_gate, w_up, y, None, None, SWIGLU_FORWARD, False,
                              config=config)
        return run, lambda: y, None
    return build


VARIANTS = {
    # the package's kernel for these operands (the stacked kernel since v5)
    "package": package(128, 128, 64, 3, 8),
    "plain_np_128x256_s3": plain(128, 256, 64, 3, 8, False, False),
    "plain_p_128x256_s3": plain(128, 256, 64, 3, 8, True, True),
    "plain_p_128x256_s4": plain(128, 256, 64, 4, 8, True, True),
    "dual_np_store_s4": dual_store(128, 128, 64, 4, 8, False, True),
    "dual_np_store_s3": dual_store(128, 128, 64, 3, 8, False, False),
    "dual_p_store_s3": dual_store(128, 128, 64, 3, 8, True, True),
    "dual_p_store_s4": dual_store(128, 128, 64, 4, 8, True, True),
    "dual_p_store_s3_ws": dual_store(128, 128, 64, 3, 8, True, True, warp_specialize=True),
    # the stacked kernel's epilogue (NOTES.md, v6)
    "package_training": package_training,
    "stacked_y": stacked_store(False, False, False),
    "stacked_y_ws": stacked_store(False, False, True),
    "stacked_train_two_stores": stacked_store(True, False, False),
    "stacked_train_pointer_gu": stacked_store(True, False, False, pointer_stores=1),
    "stacked_train_pointer_all": stacked_store(True, False, False, pointer_stores=2),
    "stacked_train_pointer_all_s4": stacked_store(True, False, False, stages=4,
                                                  pointer_stores=2),
    "stacked_y_pointer": stacked_store(False, False, False, pointer_stores=2),
    "stacked_train_k32_s5": stacked_store(True, False, False, bk=32, stages=5),
    "stacked_train_one_store_s2": stacked_store(True, True, False, stages=2),
    "stacked_train_subtile": stacked_store(True, False, False, subtile=True),
    "stacked_y_subtile": stacked_store(False, False, False, subtile=True),
    "stacked_train_m64_s4": stacked_store(True, False, False, bm=64, stages=4, warps=4),
    "stacked_y_m64_s4": stacked_store(False, False, False, bm=64, stages=4, warps=4),
    "stacked_train_n64_s4": stacked_store(True, False, False, bn=64, stages=4, warps=4),
    "stacked_train_n64_s4_w8": stacked_store(True, False, False, bn=64, stages=4),
}


def main(name):
    print(torch.cuda.get_device_name(), "triton", triton.__version__, "variant", name)
    for m, d_model, d_ff in SHAPES:
        x, w_gate, w_up = linear_layout_operands(m, d_model, d_ff, torch.bfloat16)
        packed = torch.cat([w_gate.T, w_up.T]).T
        y = torch.empty(m, d_ff, device="cuda", dtype=torch.bfloat16)
        run, result, reference = VARIANTS[name](x, w_gate, w_up, packed, y)
        if reference is None:
            def reference():
                return (torch.nn.functional.silu((x @ w_gate).float())
                        * (x @ w_up).float())
        y.fill_(float("nan"))
        run()
        ref = reference()
        err = ((result().float() - ref).norm() / ref.norm()).item()
        if not err < 1e-2:
            print(f"  M={m} {d_model}x{d_ff}: WRONG, relative error {err}")
            continue
        ms = interleaved_medians(median_ms, {"cuBLAS": lambda: x @ packed, name: run})
        print(f"  M={m} {d_model}x{d_ff}: cuBLAS {ms['cuBLAS']:.3f} ms, {name} {ms[name]:.3f} ms"
              f" = {ms[name] / ms['cuBLAS']:.3f}x")


if __name__ == "__main__":
    main(sys.argv[1])
