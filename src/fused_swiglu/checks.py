"""Validation at the public boundary: clear errors instead of crashes or wrong answers."""

import torch
from torch._subclasses.fake_tensor import FakeTensor

from .activations import ACTIVATIONS

# float64 runs plain PyTorch on every device (the kernels stop at float32)
SUPPORTED_DTYPES = (torch.bfloat16, torch.float16, torch.float32, torch.float64)


def check_flags(caller: str, **flags) -> None:
    """Options such as fast_accum and recompute are bools: a string like "no" is truthy, and
    would silently turn the option on."""
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise TypeError(f"{caller}: {name} must be True or False, got {value!r} "
                            f"({type(value).__name__})")


def without_data(*tensors) -> bool:
    """Whether any of the tensors is fake (no data to launch on) or a torch.func transform's
    wrapper (vmap, grad), whose storage the kernels cannot read."""
    return any(isinstance(t, FakeTensor) or torch._C._functorch.is_functorch_wrapped_tensor(t)
               for t in tensors)


def check_activation(caller: str, activation) -> None:
    if not isinstance(activation, str):
        raise TypeError(f"{caller}: activation must be a str, one of {', '.join(ACTIVATIONS)}; "
                        f"got {activation!r} ({type(activation).__name__})")
    if activation not in ACTIVATIONS:
        raise ValueError(f"{caller}: unknown activation {activation!r}; the activations are "
                         f"{', '.join(ACTIVATIONS)}")


def check_swiglu_inputs(x, w_gate, w_up, fast_accum: bool) -> None:
    for name, t in (("x", x), ("w_gate", w_gate), ("w_up", w_up)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"swiglu: {name} must be a torch.Tensor, got {type(t).__name__}")
    dtypes = (x.dtype, w_gate.dtype, w_up.dtype)
    if len(set(dtypes)) != 1:
        raise TypeError(f"swiglu: x, w_gate and w_up must share one dtype, got x {x.dtype}, "
                        f"w_gate {w_gate.dtype}, w_up {w_up.dtype}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"swiglu: dtype {x.dtype} is not supported; use one of "
                        f"{', '.join(str(d) for d in SUPPORTED_DTYPES)}")
    if fast_accum and x.dtype != torch.float16:
        raise TypeError(f"swiglu: fast_accum=True accumulates in float16 and needs float16 "
                        f"inputs, got {x.dtype}")
    devices = (x.device, w_gate.device, w_up.device)
    if len(set(devices)) != 1:
        raise ValueError(f"swiglu: x, w_gate and w_up must be on one device, got x on {x.device}, "
                         f"w_gate on {w_gate.device}, w_up on {w_up.device}")
    if w_gate.dim() != 2 or w_up.dim() != 2:
        raise ValueError(f"swiglu: w_gate and w_up must be 2-D (d_model, d_ff), got "
                         f"{tuple(w_gate.shape)} and {tuple(w_up.shape)}")
    if w_gate.shape != w_up.shape:
        raise ValueError(f"swiglu: w_gate {tuple(w_gate.shape)} and w_up {tuple(w_up.shape)} "
                         f"must have the same shape")
    if x.dim() == 0 or x.shape[-1] != w_gate.shape[0]:
        raise ValueError(f"swiglu: x {tuple(x.shape)} must end in d_model = {w_gate.shape[0]}, "
                         f"the first dimension of the weights {tuple(w_gate.shape)}")


def check_down_projection(w_down, w_gate) -> None:
    """w_down after check_swiglu_inputs passed for the other three."""
    if not isinstance(w_down, torch.Tensor):
        raise TypeError(f"swiglu_mlp: w_down must be a torch.Tensor, got {type(w_down).__name__}")
    if w_down.dtype != w_gate.dtype:
        raise TypeError(f"swiglu_mlp: w_down must have the dtype of x and the weights, got "
                        f"w_down {w_down.dtype}, w_gate {w_gate.dtype}")
    if w_down.device != w_gate.device:
        raise ValueError(f"swiglu_mlp: w_down must be on the device of x and the weights, got "
                         f"w_down on {w_down.device}, w_gate on {w_gate.device}")
    d_model, d_ff = w_gate.shape
    if w_down.dim() != 2 or w_down.shape != (d_ff, d_model):
        raise ValueError(f"swiglu_mlp: w_down {tuple(w_down.shape)} must be (d_ff, d_model) = "
                         f"{(d_ff, d_model)}, the transpose of the weights' shape")
