"""The whole SwiGLU block with its down projection, as models run it: SwiGLUMLP (default,
recompute=True, fp8=True, and compiled) against the same module in plain PyTorch
(HuggingFace's LlamaMLP), its torch.compile, Liger-Kernel's LigerSwiGLUMLP, and torchao's
float8 training (tensorwise and rowwise recipes, compiled, as torchao is meant to run) where
torchao is installed. Forward+backward time, the
bytes autograd keeps between forward and backward (beyond x and the weights), and the peak
above the inputs. bfloat16, GPU only:

    python benchmarks/mlp_step.py [M,d_model,d_ff ...]
    python benchmarks/mlp_step.py timeline M,d_model,d_ff   # the kernels of one step each"""

import sys

import torch
import triton

from fused_swiglu import SwiGLUMLP
from fused_swiglu.bench import interleaved_medians, median_ms, memory_bytes
from fused_swiglu.bench_block import EagerMLP, block_steps, liger_mlp, torchao_float8

SHAPES = [(4096, 2048, 5632), (8192, 4096, 11008), (16384, 4096, 14336), (4096, 8192, 28672)]
DTYPE = torch.bfloat16


def modules(d_model, d_ff):
    ours = SwiGLUMLP(d_model, d_ff, device="cuda", dtype=DTYPE)
    found = {"fused_swiglu": ours,
             "fused_swiglu recompute": SwiGLUMLP(d_model, d_ff, device="cuda", dtype=DTYPE,
                                                 recompute=True),
             "eager": EagerMLP(d_model, d_ff, device="cuda", dtype=DTYPE)}
    liger = liger_mlp(d_model, d_ff, "cuda", DTYPE)
    if liger is not None:
        found["liger"] = liger
    for module in found.values():  # the same weights everywhere
        module.load_state_dict(ours.state_dict())
    fp8 = SwiGLUMLP(d_model, d_ff, device="cuda", dtype=DTYPE, fp8=True)
    fp8.load_state_dict(ours.state_dict())
    found["fused_swiglu fp8"] = fp8
    found["torch.compile"] = torch.compile(found["eager"], dynamic=True)
    found["fused_swiglu compiled"] = torch.compile(ours, dynamic=True)
    for recipe in ("tensorwise", "rowwise"):
        module, why_not = torchao_float8(found["eager"], recipe)
        if module is None:
            print(f"# torchao {recipe}: {why_not}")
        else:
            found[f"torchao {recipe} compiled"] = module
    return found


def training_steps(found, m, d_model):
    """(x, d_out, {name: one forward+backward of that module on x with d_out})."""
    x = torch.randn(m, d_model, device="cuda", dtype=DTYPE, requires_grad=True)
    d_out = torch.randn(m, d_model, device="cuda", dtype=DTYPE)
    return x, d_out, block_steps(found, x, d_out)


def main(shapes):
    print(torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__)
    print(f"{'shape':18s} {'module':24s} {'fwd+bwd ms':>10s} {'vs eager':>8s} "
          f"{'saved MB':>9s} {'peak MB':>8s}")
    for m, d_model, d_ff in shapes:
        found = modules(d_model, d_ff)
        x, d_out, steps = training_steps(found, m, d_model)
        times = interleaved_medians(median_ms, steps)
        for name, module in found.items():
            saved, peak = memory_bytes(lambda x, *weights, module=module: module(x),
                                       (x, *module.parameters()), d_out)
            print(f"{m}x{d_model}x{d_ff:<7d} {name:24s} {times[name]:10.3f} "
                  f"{times['eager'] / times[name]:8.3f} {saved / 2**20:9.0f} "
                  f"{peak / 2**20:8.0f}")


def kernel_timelines(m, d_model, d_ff):
    """Each module's kernels in one forward+backward (µs), their sum and span."""
    from profile_step import timeline
    print(torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__)
    _, _, steps = training_steps(modules(d_model, d_ff), m, d_model)
    for name, step in steps.items():
        step()
        kernel_us, span_us, kernels = timeline(step)
        print(f"\n{m}x{d_model}x{d_ff} {name}: kernels {kernel_us:.0f} us in {span_us:.0f}")
        print("  " + ", ".join(f"{k[0][:48]} {k[2]:.0f}" for k in kernels))


if __name__ == "__main__":
    if sys.argv[1:2] == ["timeline"]:
        kernel_timelines(*(int(v) for v in sys.argv[2].split(",")))
        sys.exit()
    main([tuple(int(v) for v in arg.split(",")) for arg in sys.argv[1:]] or SHAPES)
