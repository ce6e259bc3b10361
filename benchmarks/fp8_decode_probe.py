"""Why the float8 decode step reads its weights at 1.9-3.1 TB/s where the bf16 decode kernel
reaches ~4.1 (NOTES.md, v16, open lead 1): fp8/decode.py's kernel against two variants of
the same product, each checked against float64 first.

- "weights as A": out^T = W @ x^T, so that the widened float8 tile is the MMA's A operand,
  which Hopper's tensor cores may take from registers (B must sit in shared memory: the
  current kernel widens B, which then has to go back there).
- "CUDA cores": no MMA at all for a few tokens: the products summed along K in float32 on
  the CUDA cores, so nothing is widened into a 16-row tile.

GPU for the timings (CUDA-graph replays, as decode steps run); on a CPU with
TRITON_INTERPRET=1 it runs the correctness checks alone, on small shapes:

    python benchmarks/fp8_decode_probe.py"""

import itertools
import os
import sys

import torch

if not torch.cuda.is_available():
    # before triton is imported: the CPU runs the kernels under the interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")

import triton
import triton.language as tl

from fused_swiglu import SwiGLUMLP, quantize_fp8
from fused_swiglu.fp8 import decode
from fused_swiglu.kernels.common import INTERPRETING, activation, mma, rounded
from fused_swiglu.launch import ACTIVATION_CODES


@triton.jit
def weights_as_a_kernel(a, w, w_scales, out, M, N, K,
                        stride_am, stride_ak, stride_wp, stride_wn, stride_wk,
                        stride_sp, stride_sn, stride_om, stride_on,
                        GATED: tl.constexpr, ACTIVATION: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # one program: BLOCK_N output channels (the MMA's rows) for every token (M <= BLOCK_M)
    cols = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = tl.arange(0, BLOCK_M).to(tl.int64)
    col_mask = cols < N
    row_mask = rows < M
    acc_g = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    acc_u = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        ks = k * BLOCK_K + tl.arange(0, BLOCK_K).to(tl.int64)
        k_mask = ks < K
        x_t = tl.load(a + rows[None, :] * stride_am + ks[:, None] * stride_ak,
                      mask=k_mask[:, None] & row_mask[None, :], other=0.0)
        if INTERPRETING:
            x_t = x_t.to(tl.float32)
        w_ptrs = w + cols[:, None] * stride_wn + ks[None, :] * stride_wk
        w_mask = col_mask[:, None] & k_mask[None, :]
        acc_g = mma(tl.load(w_ptrs, mask=w_mask, other=0.0).to(x_t.dtype), x_t, acc_g,
                    tl.float32)
        if GATED:
            acc_u = mma(tl.load(w_ptrs + stride_wp, mask=w_mask, other=0.0).to(x_t.dtype),
                        x_t, acc_u, tl.float32)
    # back to (tokens, channels) for the shared epilogue: once per program, beside the K loop
    _scaled_store(tl.trans(acc_g), tl.trans(acc_u), w_scales, out, rows, cols, M, N,
                  stride_sp, stride_sn, stride_om, stride_on, GATED, ACTIVATION)


@triton.jit
def cuda_cores_kernel(a, w, w_scales, out, M, N, K,
                      stride_am, stride_ak, stride_wp, stride_wn, stride_wk,
                      stride_sp, stride_sn, stride_om, stride_on,
                      GATED: tl.constexpr, ACTIVATION: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # BLOCK_M tokens (a few) x BLOCK_N channels; products in float32, summed along K
    cols = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = tl.arange(0, BLOCK_M).to(tl.int64)
    col_mask = cols < N
    row_mask = rows < M
    acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_u = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        ks = k * BLOCK_K + tl.arange(0, BLOCK_K).to(tl.int64)
        k_mask = ks < K
        x = tl.load(a + rows[:, None] * stride_am + ks[None, :] * stride_ak,
                    mask=row_mask[:, None] & k_mask[None, :], other=0.0).to(tl.float32)
        w_ptrs = w + cols[None, :] * stride_wn + ks[:, None] * stride_wk
        w_mask = k_mask[:, None] & col_mask[None, :]
        gate_w = tl.load(w_ptrs, mask=w_mask, other=0.0).to(tl.float32)
        acc_g += tl.sum(x[:, :, None] * gate_w[None, :, :], axis=1)
        if GATED:
            up_w = tl.load(w_ptrs + stride_wp, mask=w_mask, other=0.0).to(tl.float32)
            acc_u += tl.sum(x[:, :, None] * up_w[None, :, :], axis=1)
    _scaled_store(acc_g, acc_u, w_scales, out, rows, cols, M, N,
                  stride_sp, stride_sn, stride_om, stride_on, GATED, ACTIVATION)


@triton.jit
def _scaled_store(acc_g, acc_u, w_scales, out, rows, cols, M, N,
                  stride_sp, stride_sn, stride_om, stride_on,
                  GATED: tl.constexpr, ACTIVATION: tl.constexpr):
    """The variants' epilogue on (tokens, channels) sums, as kernels/fp8_weight_gemm.py's:
    the per-channel scales, with GATED act(g) * u, stored in out's dtype."""
    col_mask = cols < N
    out_v = acc_g * tl.load(w_scales + cols * stride_sn, mask=col_mask, other=0.0)[None, :]
    if GATED:
        up_scale = tl.load(w_scales + stride_sp + cols * stride_sn, mask=col_mask, other=0.0)
        out_v = activation(out_v, ACTIVATION) * (acc_u * up_scale[None, :])
    tl.store(out + rows[:, None] * stride_om + cols[None, :] * stride_on,
             rounded(out_v, out.dtype.element_ty), mask=(rows < M)[:, None] & col_mask[None, :])


def variant(kernel, block_m):
    """weight_only_matmul's signature on `kernel`, with (BLOCK_N, BLOCK_K, warps, stages)."""
    def run(a, w, scales, gated, config, activation="silu"):
        M, K = a.shape
        N = w.shape[1]
        assert M <= block_m
        block_n, block_k, num_warps, num_stages = config
        out = torch.empty(M, N, device=a.device, dtype=a.dtype)
        kernel[(triton.cdiv(N, block_n),)](
            a, w, scales, out, M, N, K, a.stride(0), a.stride(1),
            w.stride(0), w.stride(1), w.stride(2), scales.stride(0), scales.stride(1),
            out.stride(0), out.stride(1), GATED=gated, ACTIVATION=ACTIVATION_CODES[activation],
            BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
            num_warps=num_warps, num_stages=num_stages)
        return out
    return run


def current(a, w, scales, gated, config):
    decode.GPU_CONFIGS[gated, 16 if a.shape[0] <= 16 else 32] = config
    return decode.weight_only_matmul(a, w, scales, gated=gated)


def reference(a, w, scales, gated):
    products = [a.double() @ (w[i].double() * scales[i].double()).t() for i in range(w.shape[0])]
    if gated:
        return torch.nn.functional.silu(products[0]) * products[1]
    return products[0]


def operands(d_model, d_ff, m, device):
    mlp = quantize_fp8(SwiGLUMLP(d_model, d_ff, device=device, dtype=torch.bfloat16))
    x = torch.randn(m, d_model, device=device, dtype=torch.bfloat16)
    y = torch.randn(m, d_ff, device=device, dtype=torch.bfloat16)
    return {True: (x, mlp.gate_up_weight, mlp.gate_up_scales),
            False: (y, mlp.down_weight[None], mlp.down_scales[None])}


def check(name, fn, config, d_model, d_ff, m, device):
    for gated, (a, w, s) in operands(d_model, d_ff, m, device).items():
        got = fn(a, w, s, gated, config).double()
        want = reference(a, w, s, gated)
        error = ((got - want).norm() / want.norm()).item()
        assert error < 2 ** -7, (name, gated, m, error)


VARIANTS = {
    "current": (current, [(32, 128, 4, 4), (16, 512, 2, 3), (64, 128, 4, 4), (16, 512, 4, 3)]),
    "weights as A": (variant(weights_as_a_kernel, 16),
                     [(64, 128, 4, 4), (64, 256, 4, 3), (128, 128, 4, 3), (64, 128, 4, 6),
                      (128, 64, 4, 4), (64, 64, 4, 8)]),
    "CUDA cores": (variant(cuda_cores_kernel, 4),
                   [(64, 64, 4, 3), (32, 128, 4, 3), (128, 32, 4, 3), (64, 32, 2, 4),
                    (32, 64, 2, 4), (128, 64, 8, 3)]),
}
TOKENS = {"current": (1, 4, 8, 16, 32), "weights as A": (1, 4, 8, 16), "CUDA cores": (1, 2, 4)}


def main():
    on_gpu = torch.cuda.is_available()
    device = "cuda" if on_gpu else "cpu"
    small = (48, 80)
    for name, (fn, configs) in VARIANTS.items():
        for m in TOKENS[name]:
            check(name, fn, configs[0] if on_gpu else (16, 32, 4, 1), *small, m, device)
    print("every variant matches float64")
    if not on_gpu:
        return
    from fused_swiglu.bench import graph_median_ms
    print(torch.cuda.get_device_name(), "triton", triton.__version__)
    for (d_model, d_ff), m in itertools.product(((4096, 11008), (8192, 28672)), (1, 4, 8, 16)):
        for gated, (a, w, s) in operands(d_model, d_ff, m, device).items():
            line = []
            for name, (fn, configs) in VARIANTS.items():
                if m not in TOKENS[name]:
                    continue
                times = []
                for config in configs:
                    try:
                        with torch.no_grad():
                            times.append((graph_median_ms(lambda: fn(a, w, s, gated, config)),
                                          config))
                    except Exception as e:  # a configuration this card cannot compile
                        print(f"  {name} {config}: {type(e).__name__}", file=sys.stderr)
                best, config = min(times)
                line.append(f"{name} {best * 1e3:.1f} us {w.numel() / best / 1e6:.0f} GB/s "
                            f"{config}")
            print(f"{m}x{d_model}x{d_ff} {'gated' if gated else 'down '}: " + "; ".join(line),
                  flush=True)


if __name__ == "__main__":
    main()
