"""float8 inference after quantize_fp8 against the bf16 block it came from: SwiGLUMLP's forward
(bf16, no grad) and the QuantizedSwiGLUMLP that quantize_fp8 makes of a copy, on the same
inputs. Decode (M <= 32) as CUDA-graph replays, as serving engines run it; prefill (M >= 512)
as eager calls. GPU only, from the repository root:

    python benchmarks/fp8_inference.py [d_model,d_ff ...]

Answers the float8 issue's target 4: decode at most 0.6x the bf16 decode's time, prefill at
least 1.7x faster than the bf16 path."""

import copy
import sys

import torch
import triton

from fused_swiglu import SwiGLUMLP, quantize_fp8
from fused_swiglu.bench import graph_median_ms, interleaved_medians, median_ms

SHAPES = [(4096, 11008), (4096, 14336), (8192, 28672)]
DECODE_TOKENS = (1, 8, 32)
PREFILL_TOKENS = (512, 4096, 8192)
DTYPE = torch.bfloat16


def main(shapes):
    print(torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__)
    print(f"{'M x d_model x d_ff':22s} {'bf16 ms':>8s} {'fp8 ms':>8s} {'fp8 / bf16 time':>15s}")
    for d_model, d_ff in shapes:
        bf16 = SwiGLUMLP(d_model, d_ff, device="cuda", dtype=DTYPE)
        fp8 = quantize_fp8(copy.deepcopy(bf16))
        for m in (*DECODE_TOKENS, *PREFILL_TOKENS):
            x = torch.randn(m, d_model, device="cuda", dtype=DTYPE)
            timer = graph_median_ms if m in DECODE_TOKENS else median_ms
            with torch.no_grad():
                times = interleaved_medians(timer, {"bf16": lambda: bf16(x),
                                                    "fp8": lambda: fp8(x)})
            print(f"{m}x{d_model}x{d_ff:<12d} {times['bf16']:8.3f} {times['fp8']:8.3f} "
                  f"{times['fp8'] / times['bf16']:15.3f}")


if __name__ == "__main__":
    main([tuple(int(v) for v in arg.split(",")) for arg in sys.argv[1:]] or SHAPES)
