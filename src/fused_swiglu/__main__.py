"""``python -m fused_swiglu``: check the kernels against the float64 reference, then (on a GPU)
time them against PyTorch. Without a GPU the same Triton kernels run under the interpreter."""

import argparse
import os
import sys
import textwrap

import torch

from fused_swiglu import bench, swiglu, swiglu_reference
from fused_swiglu.reference import TOLERANCE

GPU_SHAPE = (4096, 4096, 11008)
CPU_SHAPE = (67, 96, 160)
INTERPRETER_NOTE = (
    "Without CUDA, your own code's CPU tensors run plain PyTorch (the reference), unless "
    "TRITON_INTERPRET=1 is in the environment when fused_swiglu is imported: then they run "
    "the kernels under the interpreter, which is slow (a 1024 x 512 x 1376 forward took "
    "about 154 seconds) and meant for tests.")
DESCRIPTION = "\n\n".join(textwrap.fill(paragraph, 90) for paragraph in (
    "Self-check: the forward and all three gradients of fused_swiglu against a float64 "
    "reference, in bfloat16, float16 and float32, each within its error bound "
    "(fused_swiglu.reference.TOLERANCE), with nn.Linear-layout weights. On a CUDA GPU at "
    f"M x d_model x d_ff = {' x '.join(map(str, GPU_SHAPE))}, followed by a short benchmark "
    "against cuBLAS, eager PyTorch, torch.compile and Liger-Kernel (the whole one: "
    "python -m fused_swiglu.bench). Without a GPU at "
    f"{' x '.join(map(str, CPU_SHAPE))}, with the same Triton kernels on the CPU under the "
    "Triton interpreter (the command restarts itself with TRITON_INTERPRET=1).",
    INTERPRETER_NOTE,
    "Exit status 0 when every check passes, 1 otherwise."))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fused_swiglu", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    return parser.parse_args(argv)


def self_check(device: str, m: int, d_model: int, d_ff: int) -> bool:
    ok = True
    for dtype, tol in TOLERANCE.items():
        x, w_gate, w_up = (t.requires_grad_()
                           for t in bench.linear_layout_operands(m, d_model, d_ff, dtype, device))
        out = swiglu(x, w_gate, w_up)
        dy = torch.randn_like(out)
        grads = torch.autograd.grad(out, (x, w_gate, w_up), dy)
        leaves = [t.detach().double().requires_grad_() for t in (x, w_gate, w_up)]
        ref = swiglu_reference(*leaves)
        ref_grads = torch.autograd.grad(ref, leaves, dy.double())
        errors = [((a.double() - b).norm() / b.norm()).item()
                  for a, b in zip((out, *grads), (ref, *ref_grads))]
        passed = all(e <= tol for e in errors)  # NaN fails too
        ok &= passed
        print(f"  {str(dtype):15s} max relative error {max(errors):.2e} (bound {tol:.2g}) "
              f"{'ok' if passed else 'FAILED'}")
    return ok


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    parse_args(args)  # before the restart below: --help and wrong arguments answer at once
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        # the interpreter must be chosen before triton is imported: start again with it on
        os.environ["TRITON_INTERPRET"] = "1"
        os.execv(sys.executable, [sys.executable, "-m", "fused_swiglu", *args])
    if torch.cuda.is_available():
        device, shape = "cuda", GPU_SHAPE
        print(f"fused_swiglu self-check on {torch.cuda.get_device_name()}, "
              f"M x d_model x d_ff = {shape}, forward and all gradients:")
    else:
        device, shape = "cpu", CPU_SHAPE
        print(textwrap.fill("No CUDA GPU: this check runs the Triton kernels on the CPU under "
                            "the Triton interpreter (TRITON_INTERPRET=1). " + INTERPRETER_NOTE,
                            95))
        print(f"Self-check at M x d_model x d_ff = {shape}, forward and all gradients:")
    ok = self_check(device, *shape)
    if ok and device == "cuda":
        print("\nShort benchmark, nn.Linear-layout weights (every layout and shape: "
              "python -m fused_swiglu.bench):")
        bench.run([((4096, 11008), 8192), ((4096, 11008), 8)], [torch.bfloat16],
                  with_memory=False)
    print("self-check passed" if ok else "self-check FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
