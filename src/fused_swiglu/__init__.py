"""Fused SwiGLU forward and backward Triton kernels for PyTorch."""

from .fp8.inference import quantize_fp8
from .fp8.reference import swiglu_fp8_reference
from .functional import FastAccumFusedSwiGLU, FusedSwiGLU, swiglu, swiglu_mlp
from .integrations.transformers import patch_model
from .modules import SwiGLUMLP
from .reference import swiglu_reference

__version__ = "0.1.0"

__all__ = ["FastAccumFusedSwiGLU", "FusedSwiGLU", "SwiGLUMLP", "patch_model", "quantize_fp8",
           "swiglu", "swiglu_fp8_reference", "swiglu_mlp", "swiglu_reference", "__version__"]
