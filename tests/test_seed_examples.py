"""The original project's README examples, as written there, with one change: x is created on
the weights' device (the original left it on the CPU, which no GPU kernel can read; such a call
now raises a ValueError naming both devices, see test_bad_input_raises_clear_error)."""

import torch
from conftest import DEVICE

bs, sq, d_model, d_intermediate = 2, 8, 64, 192


def test_kernel_1_bfloat16():
    from fused_swiglu import FusedSwiGLU
    w_gate = torch.randn((d_model, d_intermediate), dtype = torch.bfloat16, device = DEVICE)
    w_up = torch.randn((d_model, d_intermediate), dtype = torch.bfloat16, device = DEVICE)
    x = torch.randn((bs, sq, d_model),  dtype = torch.bfloat16, requires_grad=True, device = DEVICE)
    out = FusedSwiGLU.apply(x, w_gate, w_up)
    out.sum().backward()
    assert out.shape == (bs, sq, d_intermediate) and x.grad.shape == x.shape
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()


def test_kernel_2_float16():
    from fused_swiglu import FastAccumFusedSwiGLU
    w_gate = torch.randn((d_model, d_intermediate), dtype = torch.float16, device = DEVICE)
    w_up = torch.randn((d_model, d_intermediate), dtype = torch.float16, device = DEVICE)
    x = torch.randn((bs, sq, d_model),  dtype = torch.float16, requires_grad=True, device = DEVICE)
    out = FastAccumFusedSwiGLU.apply(x, w_gate, w_up)
    out.sum().backward()
    assert out.shape == (bs, sq, d_intermediate) and x.grad.shape == x.shape
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()
