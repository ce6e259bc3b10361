"""quantize_fp8: SwiGLUMLPs converted, in place, to float8 weights for inference."""

import torch
from torch import Tensor, nn

from ..checks import check_activation
from .decode import DECODE_MAX_TOKENS, weight_only_matmul
from .gated import gated_forward
from .scaled_matmul import quantize_rows, scaled_matmul
from .stacked import stack_weights_fp8


class QuantizedSwiGLUMLP(nn.Module):
    """A SwiGLUMLP after quantize_fp8: the forward of ``SwiGLUMLP(fp8=True)`` from weights
    quantized once (float8_e4m3fn, one float32 scale per output channel along the GEMM's K),
    held as buffers: ``gate_up_weight`` ``(2, d_ff, d_model)`` with ``gate_up_scales``
    ``(2, d_ff, 1)`` (gate first), ``down_weight`` ``(d_model, d_ff)`` with ``down_scales``
    ``(d_model, 1)``. Forward only: inputs that require grad raise RuntimeError. Inputs in the
    dtype the weights had (``dtype``), which the output keeps.

    Up to ``DECODE_MAX_TOKENS`` (32) tokens, a decode step, the activations stay in 16 bits and
    meet the float8 weights in 16-bit products (fp8/decode.py): the step is bound by reading
    the weights, whose bytes float8 halves. From 33 tokens on, x and y are quantized per token
    as well and every product runs on float8 tensor cores."""

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(f"QuantizedSwiGLUMLP: x must be a torch.Tensor, got "
                            f"{type(x).__name__}")
        if torch.is_grad_enabled() and x.requires_grad:
            raise RuntimeError("QuantizedSwiGLUMLP: quantize_fp8 made this module for "
                               "inference, without gradients; run it under torch.no_grad() "
                               "or on an input that does not require grad (train with "
                               "SwiGLUMLP(fp8=True) instead)")
        d_ff, d_model = self.gate_up_weight.shape[1:]
        if x.dtype != self.dtype or x.shape[-1:] != (d_model,) or x.device != \
                self.gate_up_weight.device:
            raise ValueError(f"QuantizedSwiGLUMLP: expected x of shape (..., {d_model}) in "
                             f"{self.dtype} on {self.gate_up_weight.device}, got "
                             f"{tuple(x.shape)} in {x.dtype} on {x.device}")
        x2 = x.reshape(-1, d_model)
        if x2.shape[0] <= DECODE_MAX_TOKENS:
            # a decode step, bound by reading the weights (fp8/decode.py)
            y = weight_only_matmul(x2, self.gate_up_weight, self.gate_up_scales, gated=True,
                                   activation=self.activation)
            out = weight_only_matmul(y, self.down_weight[None], self.down_scales[None],
                                     gated=False)
            return out.reshape(*x.shape[:-1], d_model)
        y = gated_forward(*quantize_rows(x2), self.gate_up_weight, self.gate_up_scales,
                          self.dtype, self.activation, False)[0]
        out = scaled_matmul(*quantize_rows(y), self.down_weight, self.down_scales, self.dtype)
        return out.reshape(*x.shape[:-1], d_model)

    def extra_repr(self) -> str:
        d_ff, d_model = self.gate_up_weight.shape[1:]
        return (f"d_model={d_model}, d_ff={d_ff}, activation={self.activation!r}, "
                f"dtype={self.dtype}, float8 weights")


def _check(mlp) -> None:
    """That _convert can take mlp, a SwiGLUMLP."""
    w_gate, w_up, w_down = mlp.projection_weights()
    if any(type(w) is not torch.Tensor and not isinstance(w, nn.Parameter)
           for w in (w_gate, w_up, w_down)):
        raise NotImplementedError(f"quantize_fp8: the weights of {mlp.__class__.__name__} are "
                                  f"{type(w_gate).__name__}s (tensor parallelism?); only plain "
                                  f"tensors are supported")
    if w_gate.dtype not in (torch.bfloat16, torch.float16):
        raise TypeError(f"quantize_fp8: SwiGLUMLP weights must be bfloat16 or float16, got "
                        f"{w_gate.dtype}")
    check_activation("quantize_fp8", mlp.activation)


def _convert(mlp) -> None:
    """mlp, a SwiGLUMLP that _check passed, turned into a QuantizedSwiGLUMLP in place."""
    w_gate, w_up, w_down = mlp.projection_weights()
    with torch.no_grad():
        gate_up, gate_up_scales = stack_weights_fp8(w_gate.t(), w_up.t())
        down, down_scales = quantize_rows(w_down.t())
    dtype, activation = w_gate.dtype, mlp.activation
    for name in ("gate_up_proj", "gate_proj", "up_proj", "down_proj"):
        if name in mlp._modules:
            delattr(mlp, name)
    for name in ("packed", "recompute", "fast_accum", "fp8"):
        mlp.__dict__.pop(name, None)
    mlp.__class__ = QuantizedSwiGLUMLP
    mlp.dtype, mlp.activation = dtype, activation
    mlp.register_buffer("gate_up_weight", gate_up)
    mlp.register_buffer("gate_up_scales", gate_up_scales)
    mlp.register_buffer("down_weight", down)
    mlp.register_buffer("down_scales", down_scales)


def quantize_fp8(module: nn.Module) -> nn.Module:
    """Convert, in place, ``module`` and every :class:`fused_swiglu.SwiGLUMLP` inside it (a
    model patched by ``patch_model``, say) for float8 inference: each becomes a
    :class:`QuantizedSwiGLUMLP`, whose float8 weights with their scales replace the 16-bit
    Linears (the state_dict about half the bytes), and whose forward runs the projections on
    float8 tensor cores. Forward only: an input that requires grad raises RuntimeError.

    Returns:
        ``module`` itself.
    """
    from ..modules import SwiGLUMLP  # the module layer sits above this one

    if not isinstance(module, nn.Module):
        raise TypeError(f"quantize_fp8: module must be a torch.nn.Module, got "
                        f"{type(module).__name__}")
    mlps = [m for m in module.modules() if isinstance(m, SwiGLUMLP)]
    for mlp in mlps:  # all checked before any is changed
        _check(mlp)
    for mlp in mlps:
        _convert(mlp)
    return module
