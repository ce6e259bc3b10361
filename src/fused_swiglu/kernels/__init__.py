"""Triton kernels: @triton.jit code only, no allocation and no validation."""
