"""``python -m fused_swiglu``: check the kernels against the float64 reference, then (on a GPU)
time them against PyTorch. Without a GPU the same Triton kernels run under the interpreter."""

import os
import sys

import torch

if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    # the interpreter must be chosen before triton is imported: start again with it on
    os.environ["TRITON_INTERPRET"] = "1"
    os.execv(sys.executable, [sys.executable, "-m", "fused_swiglu", *sys.argv[1:]])

from fused_swiglu import bench, swiglu, swiglu_reference  # noqa: E402
from fused_swiglu.reference import TOLERANCE  # noqa: E402


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


def main() -> int:
    if torch.cuda.is_available():
        device, shape = "cuda", (4096, 4096, 11008)
        print(f"fused_swiglu self-check on {torch.cuda.get_device_name()}, "
              f"M x d_model x d_ff = {shape}, forward and all gradients:")
    else:
        device, shape = "cpu", (67, 96, 160)
        print("No CUDA GPU: the Triton kernels run on the CPU under TRITON_INTERPRET=1. "
              f"Self-check at M x d_model x d_ff = {shape}, forward and all gradients:")
    ok = self_check(device, *shape)
    if ok and device == "cuda":
        print("\nShort benchmark (full sweep: python -m fused_swiglu.bench):")
        bench.run([((4096, 11008), 8192), ((4096, 11008), 8)], [torch.bfloat16],
                  with_memory=False)
    print("self-check passed" if ok else "self-check FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
