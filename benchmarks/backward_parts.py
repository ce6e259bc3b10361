"""The backward's parts, ours against the other ways to run each, timed in one process on the
same operands: the gate-gradient pass, dx and the weight gradients. GPU only, from the
repository root: python benchmarks/backward_parts.py [bfloat16|float16] [M,d_model,d_ff ...]"""

import sys

import torch
import triton

from fused_swiglu import launch
from fused_swiglu.bench import interleaved_medians, linear_layout_operands, median_ms

SHAPES = [(8192, 4096, 11008), (16384, 4096, 14336), (4096, 8192, 28672), (8192, 8192, 28672),
          (512, 4096, 11008)]


def parts(m, d_model, d_ff, dtype):
    x, w_gate, w_up = linear_layout_operands(m, d_model, d_ff, dtype)
    dy = torch.randn(m, d_ff, device="cuda", dtype=dtype)
    _, gate, up = launch.swiglu_forward(x, w_gate, w_up, False, True)
    grads = torch.cat([gate, up], dim=1)  # [dg | du] stand-in, for the one-GEMM variants
    d_gate, d_up = grads[:, :d_ff], grads[:, d_ff:]
    d_gate_c, d_up_c = d_gate.contiguous(), d_up.contiguous()
    d_pair = (gate.clone(), up.clone())
    packed_t = torch.cat([w_gate.T, w_up.T])  # (2 d_ff, d_model), for a one-GEMM dx
    fns = {
        "training forward: ours (y, g and u)": lambda: launch.swiglu_forward(
            x, w_gate, w_up, False, True),
        "gate grads: ours (in place, g and u)": lambda: launch.swiglu_grads_from_preact(
            dy, *d_pair, out=d_pair),
    }
    try:
        from liger_kernel.ops.swiglu import swiglu_backward, swiglu_forward
        a, b = gate.clone(), up.clone()
        fns["training forward: liger (2 mm, silu-mul)"] = lambda: swiglu_forward(
            torch.mm(x, w_gate), torch.mm(x, w_up))
        fns["gate grads: liger (in place, g and u)"] = lambda: swiglu_backward(a, b, dy)
    except ImportError:
        pass

    def dx_addmm():
        dx = torch.mm(d_gate, w_gate.t())
        dx.addmm_(d_up, w_up.t())

    fns.update({
        "dx: mm + addmm_, halves of one buffer": dx_addmm,
        "dx: mm + addmm_, contiguous halves (ours)":
            lambda: torch.mm(d_gate_c, w_gate.t()).addmm_(d_up_c, w_up.t()),
        "dx: mm + mm + add": lambda: torch.mm(d_gate, w_gate.t()) + torch.mm(d_up, w_up.t()),
        "dx: mm + mm + add, contiguous halves":
            lambda: torch.mm(d_gate_c, w_gate.t()) + torch.mm(d_up_c, w_up.t()),
        "dx: one mm, K = 2 d_ff (packed weight)": lambda: torch.mm(grads, packed_t),
        "dW: one mm, 2 d_ff rows": lambda: torch.mm(grads.t(), x),
        "dW: two mm": lambda: (torch.mm(d_gate.t(), x), torch.mm(d_up.t(), x)),
        "dW: two mm, contiguous halves (ours)": lambda: (torch.mm(d_gate_c.t(), x),
                                                         torch.mm(d_up_c.t(), x)),
    })
    times = interleaved_medians(median_ms, fns)
    print(f"\n{dtype} M={m} d_model={d_model} d_ff={d_ff}")
    for name, ms in times.items():
        print(f"  {name:44s} {ms:8.3f} ms")


def main(probe, default_shapes, argv):
    """probe(m, d_model, d_ff, dtype) for each shape of argv ([dtype] [M,d_model,d_ff ...]),
    default_shapes where it names none."""
    dtype = getattr(torch, argv[0] if argv else "bfloat16")
    print(torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__)
    shapes = [tuple(int(v) for v in arg.split(",")) for arg in argv[1:]] or default_shapes
    for shape in shapes:
        probe(*shape, dtype)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main(parts, SHAPES, sys.argv[1:])
