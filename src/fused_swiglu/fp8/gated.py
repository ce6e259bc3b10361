"""The float8 gated forward, routed: the stacked kernel where tensor descriptors can describe x,
the pointer kernel elsewhere on a GPU or under the interpreter, PyTorch without either."""

import torch

from ..activations import ACTIVATIONS
from ..tuning import runs_kernels
from .launch import fp8_swiglu_forward
from .scaled_matmul import scaled_matmul
from .stacked import fp8_stacked_swiglu_forward, takes_descriptors


# One route at every size (v15, H200): the stacked float8 kernel writes y, g and u at 1.62-1.79x
# the bf16 cuBLAS packed GEMM's speed, cuBLAS's float8 rowwise GEMM alone at 1.71x, before the
# elementwise pass that two cuBLAS GEMMs would need (NOTES.md, v15).
def gated_forward(x_q, x_s, w_q, w_s, dtype, activation, store_preact):
    """(y, g, u) in `dtype` from x's rowwise quantization and stack_weights_fp8()'s buffer of
    both weights; g and u None without store_preact."""
    m, n = x_q.shape[0], w_q.shape[1]
    if runs_kernels(x_q) and m and n and x_q.shape[1]:
        if takes_descriptors(x_q, n):
            out = fp8_stacked_swiglu_forward(x_q, x_s, w_q, w_s, activation=activation,
                                             out_dtype=dtype, store_preact=store_preact)
        else:
            out = fp8_swiglu_forward(x_q, x_s, w_q[0], w_s[0], w_q[1], w_s[1],
                                     granularity="rowwise", activation=activation,
                                     out_dtype=dtype, store_preact=store_preact)
        return out if store_preact else (out, None, None)
    # PyTorch: float32 products of the dequantized operands, then as the kernels' epilogue
    gate, up = (scaled_matmul(x_q, x_s, w_q[i], w_s[i], torch.float32) for i in (0, 1))
    y = (ACTIVATIONS[activation](gate) * up).to(dtype)
    if not store_preact:
        return y, None, None
    return y, gate.to(dtype), up.to(dtype)
