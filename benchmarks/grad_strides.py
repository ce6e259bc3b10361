"""Does the row stride of dg and du change the backward's cuBLAS GEMMs? dx = dg w_gate^T +
du w_up^T and the weight gradients dg^T x, du^T x, timed with dg and du in allocations of
their own (row stride d_ff), as halves of one (M, 2 d_ff) buffer (row stride 2 d_ff), and
with padded rows, interleaved (each round in its own order). GPU only, from the repository root:

    python benchmarks/grad_strides.py [bfloat16|float16] [M,d_model,d_ff ...]"""

import statistics
import sys

import backward_parts
import torch

from fused_swiglu.bench import interleaved_samples, linear_layout_operands, median_ms

SHAPES = [(4096, 4096, 14336), (4096, 4096, 11008), (8192, 4096, 11008), (4096, 8192, 28672)]
ROUNDS = 6


def with_row_stride(t: torch.Tensor, stride: int) -> torch.Tensor:
    """A copy of the 2-D t whose rows lie `stride` elements apart."""
    m, n = t.shape
    out = torch.empty(m, stride, device=t.device, dtype=t.dtype)[:, :n]
    out.copy_(t)
    return out


def layouts(d_gate, d_up):
    m, n = d_gate.shape
    pair = torch.cat([d_gate, d_up], dim=1)
    found = {"own allocations (stride F)": (d_gate, d_up),
             "halves of one buffer (stride 2F)": (pair[:, :n], pair[:, n:])}
    for pad in (64, 256):
        found[f"own allocations, stride F+{pad}"] = (with_row_stride(d_gate, n + pad),
                                                     with_row_stride(d_up, n + pad))
    return found


def probe(m, d_model, d_ff, dtype):
    x, w_gate, w_up = linear_layout_operands(m, d_model, d_ff, dtype)
    d_gate = torch.randn(m, d_ff, device="cuda", dtype=dtype)
    d_up = torch.randn(m, d_ff, device="cuda", dtype=dtype)
    fns = {}
    for name, (dg, du) in layouts(d_gate, d_up).items():
        fns[f"dx, {name}"] = lambda dg=dg, du=du: torch.mm(dg, w_gate.t()).addmm_(du, w_up.t())
        fns[f"dW, {name}"] = lambda dg=dg, du=du: (torch.mm(dg.t(), x), torch.mm(du.t(), x))
    samples = interleaved_samples(median_ms, fns, ROUNDS)
    print(f"\n{dtype} M={m} d_model={d_model} d_ff={d_ff} (median of {ROUNDS} interleaved rounds)")
    for part in ("dx", "dW"):
        base = statistics.median(samples[f"{part}, own allocations (stride F)"])
        for name in fns:
            if name.startswith(part):
                ms = statistics.median(samples[name])
                print(f"  {name:44s} {ms:8.3f} ms  {ms / base:6.3f}x  "
                      f"(rounds {min(samples[name]):.3f}-{max(samples[name]):.3f})")


if __name__ == "__main__":
    backward_parts.main(probe, SHAPES, sys.argv[1:])
