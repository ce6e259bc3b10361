"""dx = dg w_gate^T + du w_up^T by three plans of cuBLAS calls, timed as CUDA-graph replays
(kernel time, not the host's) in interleaved rounds: mm then addmm_ onto it (the
second GEMM accumulates into dx, beta = 1), mm + mm + add_ (both GEMMs with beta = 0, then a
tokens x d_model sum), and mm + mm + add (the sum into a new tensor, as autograd sums the
input gradients of two separate projections). GPU only, from the repository root:

    python benchmarks/dx_plans.py [bfloat16|float16]"""

import sys

import torch
import triton

from fused_swiglu.bench import graph_median_ms, interleaved_medians, linear_layout_operands

MODEL_SHAPES = [(2048, 5632), (4096, 11008), (4096, 14336), (8192, 28672)]
TOKENS = [512, 1024, 2048, 4096]


def plans(d_gate, d_up, w_gate, w_up):
    def addmm():
        return torch.mm(d_gate, w_gate.t()).addmm_(d_up, w_up.t())

    def add_in_place():
        return torch.mm(d_gate, w_gate.t()).add_(torch.mm(d_up, w_up.t()))

    def add():
        return torch.mm(d_gate, w_gate.t()) + torch.mm(d_up, w_up.t())

    return {"mm + addmm_": addmm, "mm + mm + add_": add_in_place, "mm + mm + add": add}


def main(dtype):
    print(torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__)
    print(f"{dtype}: ms of each plan; ratio to mm + addmm_")
    for d_model, d_ff in MODEL_SHAPES:
        for m in TOKENS:
            x, w_gate, w_up = linear_layout_operands(m, d_model, d_ff, dtype)
            d_gate = torch.randn(m, d_ff, device="cuda", dtype=dtype)
            d_up = torch.randn(m, d_ff, device="cuda", dtype=dtype)
            found = plans(d_gate, d_up, w_gate, w_up)
            # the plans agree (up to the order of float32 sums), so each times the same work
            ref = found["mm + addmm_"]().float()
            for name, plan in found.items():
                err = (plan().float() - ref).abs().max().item()
                assert err <= 1e-2 * ref.abs().max().item(), (name, err)
            ms = interleaved_medians(graph_median_ms, found, rounds=5)
            base = ms["mm + addmm_"]
            cells = "  ".join(f"{name} {t:7.3f} ({t / base:5.3f})" for name, t in ms.items())
            print(f"{m:6d}x{d_model}x{d_ff}  {cells}")
            del x, w_gate, w_up, d_gate, d_up, found
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main(getattr(torch, sys.argv[1] if len(sys.argv) > 1 else "bfloat16"))
