"""Accuracy of float8 training against float64, on the same inputs and weights: SwiGLUMLP
(fp8=True) beside torchao's float8 training recipes (tensorwise, rowwise) on the same MLP, and
the bf16 block for scale. The relative error (norm-wise) of the output and of every gradient,
first on normal inputs, then with one token 3e4 times larger than the others, where the error
is taken over the other tokens (output and input gradient). GPU only, from the repository root:

    python benchmarks/fp8_accuracy.py [M,d_model,d_ff ...]

Answers the float8 issue's accuracy target (no worse than torchao rowwise's)."""

import copy
import sys

import torch
import triton

from fused_swiglu import SwiGLUMLP
from mlp_step import EagerMLP

SHAPES = [(8192, 4096, 11008), (4096, 2048, 5632)]
DTYPE = torch.bfloat16
OUTLIER = 3e4
NAMES = ("out", "x", "w_gate", "w_up", "w_down")


def modules(d_model, d_ff):
    """{name: module}, all with the bf16 block's weights, and that block in float64."""
    base = SwiGLUMLP(d_model, d_ff, device="cuda", dtype=DTYPE)
    found = {"bf16 fused_swiglu": base}
    ours = SwiGLUMLP(d_model, d_ff, device="cuda", dtype=DTYPE, fp8=True)
    ours.load_state_dict(base.state_dict())
    found["fused_swiglu fp8"] = ours
    try:
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training
    except ImportError:
        print("torchao is not installed: its recipes are left out")
    else:
        eager = EagerMLP(d_model, d_ff, device="cuda", dtype=DTYPE)
        eager.load_state_dict(base.state_dict())
        for recipe in ("tensorwise", "rowwise"):
            found[f"torchao {recipe}"] = convert_to_float8_training(
                copy.deepcopy(eager), config=Float8LinearConfig.from_recipe_name(recipe))
    exact = EagerMLP(d_model, d_ff, device="cuda", dtype=torch.float64)
    exact.load_state_dict({k: v.double() for k, v in base.state_dict().items()})
    return found, exact


def outputs(module, x, d_out):
    """(out, dx, dw_gate, dw_up, dw_down) of one forward+backward."""
    x = x.detach().to(next(module.parameters()).dtype).requires_grad_()
    out = module(x)
    weights = [module.gate_proj.weight, module.up_proj.weight, module.down_proj.weight]
    return (out, *torch.autograd.grad(out, (x, *weights), d_out.to(out.dtype)))


def relative_error(got, want):
    got, want = got.double(), want.double()
    return ((got - want).norm() / want.norm()).item()


def main(shapes):
    print(torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__)
    print(f"{'shape':18s} {'inputs':8s} {'module':20s} " + " ".join(f"{n:>8s}" for n in NAMES))
    for m, d_model, d_ff in shapes:
        torch.manual_seed(0)
        found, exact = modules(d_model, d_ff)
        x = torch.randn(m, d_model, device="cuda", dtype=DTYPE)
        d_out = torch.randn(m, d_model, device="cuda", dtype=DTYPE)
        for inputs in ("normal", "outlier"):
            if inputs == "outlier":
                x = x.clone()
                x[0] *= OUTLIER
            want = outputs(exact, x, d_out)
            # with the outlier: the other tokens' output and input gradient; the weight
            # gradients sum over every token, the outlier's included
            rows = slice(1, None) if inputs == "outlier" else slice(None)
            for name, module in found.items():
                got = outputs(module, x, d_out)
                errors = [relative_error(g[rows], w[rows]) if i < 2 else relative_error(g, w)
                          for i, (g, w) in enumerate(zip(got, want))]
                print(f"{m}x{d_model}x{d_ff:<7d} {inputs:8s} {name:20s} "
                      + " ".join(f"{e:8.2e}" for e in errors))


if __name__ == "__main__":
    main([tuple(int(v) for v in arg.split(",")) for arg in sys.argv[1:]] or SHAPES)
