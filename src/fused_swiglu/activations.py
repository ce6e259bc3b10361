"""The gate's activations in PyTorch: the functions the kernels compute (the specification's,
and the PyTorch paths') and their derivatives, as differentiable operations."""

import math

import torch
from torch import Tensor
from torch.nn import functional as F

# name -> the PyTorch function that the kernels compute for it
ACTIVATIONS = {
    "silu": F.silu,  # SwiGLU
    "gelu_tanh": lambda z: F.gelu(z, approximate="tanh"),  # GeGLU, Gemma's gelu_pytorch_tanh
    "gelu": F.gelu,  # GeGLU with the exact (erf) GeLU
}

_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)
_GELU_TANH_CUBIC = 0.044715


def derivative(activation: str, z: Tensor) -> Tensor:
    """act'(z), in differentiable operations (a backward of the backward differentiates it)."""
    if activation == "silu":
        sig = torch.sigmoid(z)
        return sig * (1 + z * (1 - sig))
    if activation == "gelu_tanh":
        # gelu_tanh(z) = z * sigmoid(k(z)) with k(z) = 2 sqrt(2/pi) (z + 0.044715 z^3)
        sig = torch.sigmoid(2 * _SQRT_2_OVER_PI * (z + _GELU_TANH_CUBIC * z ** 3))
        dk = 2 * _SQRT_2_OVER_PI * (1 + 3 * _GELU_TANH_CUBIC * z ** 2)
        return sig + z * sig * (1 - sig) * dk
    # gelu(z) = z * Phi(z): Phi(z) + z * phi(z)
    return 0.5 * (1 + torch.erf(z * math.sqrt(0.5))) + z * torch.exp(-0.5 * z * z) / math.sqrt(
        2 * math.pi)
