"""The float8 forward GEMM (kernels/fp8_gemm.py) against cuBLAS float8 and bfloat16 on the packed
GEMM x @ [W_gate; W_up]^T, and the quantizer's time. GPU only, from the repository root:

    python benchmarks/fp8_gemm_probe.py          # every kernel against cuBLAS
    python benchmarks/fp8_gemm_probe.py sweep    # the stacked float8 kernel's configurations

Answers the open question of NOTES.md's v13: how far the float8 kernel is from the float8 rate."""

import itertools
import sys

import torch
import triton
from triton.testing import do_bench

from fused_swiglu.fp8 import fp8_swiglu_forward, quantize_blockwise, quantize_groups
from fused_swiglu.fp8 import stacked
from fused_swiglu.fp8.stacked import fp8_stacked_swiglu_forward, stack_weights_fp8

SHAPES = [(8192, 4096, 11008), (16384, 4096, 14336), (8192, 8192, 28672)]


def ms(fn):
    return do_bench(fn, warmup=25, rep=200)


def timings(m, k, n):
    """{what: ms} at tokens m, d_model k, d_ff n."""
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(2 * n, k, device="cuda", dtype=torch.bfloat16) * k ** -0.5
    x_q, x_s = quantize_groups(x, None)
    w_q, w_s = quantize_groups(w, None)
    one = torch.ones((), device="cuda")
    rowwise = [*quantize_groups(w[:n], None), *quantize_groups(w[n:], None)]
    blockwise = [*quantize_blockwise(w[:n], (128, 128)), *quantize_blockwise(w[n:], (128, 128))]
    x_bq, x_bs = quantize_groups(x, 128)
    rows = {
        "bf16 cuBLAS packed": ms(lambda: x @ w.T),
        "cuBLAS fp8 rowwise": ms(lambda: torch._scaled_mm(
            x_q, w_q.T, scale_a=x_s, scale_b=w_s.T, out_dtype=torch.bfloat16)),
        "cuBLAS fp8 tensorwise": ms(lambda: torch._scaled_mm(
            x_q, w_q.T, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)),
    }
    for store in (False, True):
        rows[f"ours rowwise store_preact={store}"] = ms(lambda: fp8_swiglu_forward(
            x_q, x_s, *rowwise, granularity="rowwise", store_preact=store))
    stacked = stack_weights_fp8(w[:n], w[n:])
    for store in (False, True):
        rows[f"ours stacked rowwise store_preact={store}"] = ms(
            lambda: fp8_stacked_swiglu_forward(x_q, x_s, *stacked, store_preact=store))
    rows["ours blockwise"] = ms(lambda: fp8_swiglu_forward(
        x_bq, x_bs, *blockwise, granularity="blockwise"))
    rows["quantize x rowwise"] = ms(lambda: quantize_groups(x, None))
    rows["quantize x 1x128"] = ms(lambda: quantize_groups(x, 128))
    return rows


def main():
    print(torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__)
    print(f"{'shape':20s} {'what':34s} {'ms':>7s} {'TFLOP/s':>8s} {'x bf16':>7s}")
    for m, k, n in SHAPES:
        rows = timings(m, k, n)
        base = rows["bf16 cuBLAS packed"]
        for name, t in rows.items():
            tflops = 4 * m * k * n / t * 1e-9 if not name.startswith("quantize") else float("nan")
            print(f"{m}x{k}x{n:<8d} {name:34s} {t:7.3f} {tflops:8.0f} {base / t:7.2f}")


# (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages) around stacked.GPU_CONFIG;
# BLOCK_N is per weight, the MMA twice as wide
SWEEP = [(128, n, 128, 8, warps, stages)
         for n, warps, stages in itertools.product((64, 128), (4, 8), (3, 4))]
SWEEP += [(64, 128, 128, 8, 4, 4), (128, 128, 64, 8, 8, 4), (128, 128, 128, 16, 8, 3)]


def sweep():
    """The stacked float8 kernel's time in each configuration of SWEEP, with float32 partial
    sums every K step (precise) and without, against bf16 cuBLAS and cuBLAS's float8 rowwise
    GEMM of the same shape."""
    print(torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__)
    print(f"{'shape':20s} {'config, precise':34s} {'y ms':>7s} {'x bf16':>7s} "
          f"{'x fp8 cuBLAS':>12s} {'y,g,u ms':>9s} {'x bf16':>7s}")
    default, default_precise = stacked.GPU_CONFIG, stacked.PRECISE_ACCUMULATION
    for m, k, n in SHAPES:
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(2 * n, k, device="cuda", dtype=torch.bfloat16) * k ** -0.5
        x_q, x_s = quantize_groups(x, None)
        w_q, w_s = quantize_groups(w, None)
        bf16 = ms(lambda: x @ w.T)
        fp8 = ms(lambda: torch._scaled_mm(x_q, w_q.T, scale_a=x_s, scale_b=w_s.T,
                                          out_dtype=torch.bfloat16))
        weights = stack_weights_fp8(w[:n], w[n:])
        for config, precise in itertools.product(SWEEP, (True, False)):
            stacked.GPU_CONFIG, stacked.PRECISE_ACCUMULATION = config, precise
            what = f"{config}, {precise}"
            try:
                y_only, with_preact = (ms(lambda: fp8_stacked_swiglu_forward(
                    x_q, x_s, *weights, store_preact=store)) for store in (False, True))
            except triton.runtime.errors.OutOfResources as error:
                print(f"{m}x{k}x{n:<8d} {what:34s} {error}")
                continue
            finally:
                stacked.GPU_CONFIG, stacked.PRECISE_ACCUMULATION = default, default_precise
            print(f"{m}x{k}x{n:<8d} {what:34s} {y_only:7.3f} {bf16 / y_only:7.2f} "
                  f"{fp8 / y_only:12.2f} {with_preact:9.3f} {bf16 / with_preact:7.2f}")


if __name__ == "__main__":
    sweep() if sys.argv[1:] == ["sweep"] else main()
