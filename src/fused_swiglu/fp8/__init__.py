"""float8 (e4m3, e5m2 for gradients) SwiGLU with scales finer than one per tensor, computed
from the current values on each call: the scaling recipe (rowwise and DeepSeek-V3 blockwise),
the references, and the kernels' launchers. The public entry points are ``fp8=`` of swiglu,
swiglu_mlp and SwiGLUMLP (fp8/training.py, recipe "rowwise") and quantize_fp8
(fp8/inference.py); the names here are the building blocks, for tests and probes."""

from .launch import fp8_swiglu_forward, quantize_groups
from .recipe import (dequantize_blockwise, dequantize_rowwise, quantize_blockwise,
                     quantize_rowwise)
from .reference import swiglu_fp8_reference

__all__ = ["dequantize_blockwise", "dequantize_rowwise", "fp8_swiglu_forward",
           "quantize_blockwise", "quantize_groups", "quantize_rowwise", "swiglu_fp8_reference"]
