"""Groundwork for float8 (e4m3, e5m2 for gradients) SwiGLU with scales finer than one per
tensor, computed from the current values on each call: the scaling recipe (rowwise and
DeepSeek-V3 blockwise), the float8 forward's reference, and the quantization kernel's launcher.
Not part of fused_swiglu's public API yet: which recipe it takes is for GPU measurements to
decide."""

from .launch import fp8_swiglu_forward, quantize_groups
from .recipe import (dequantize_blockwise, dequantize_rowwise, quantize_blockwise,
                     quantize_rowwise)
from .reference import swiglu_fp8_reference

__all__ = ["dequantize_blockwise", "dequantize_rowwise", "fp8_swiglu_forward",
           "quantize_blockwise", "quantize_groups", "quantize_rowwise", "swiglu_fp8_reference"]
