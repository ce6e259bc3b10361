"""The float8 gated forward, routed: on a GPU at training sizes two cuBLAS float8 GEMMs and the
elementwise pass; otherwise the stacked kernel where tensor descriptors can describe x, the
pointer kernel elsewhere on a GPU or under the interpreter, PyTorch without either."""

import torch

from .. import launch
from ..activations import ACTIVATIONS
from ..tuning import runs_kernels
from .launch import fp8_swiglu_forward
from .scaled_matmul import _CUBLAS_MULTIPLE, scaled_matmul
from .stacked import fp8_stacked_swiglu_forward, takes_descriptors


# On an H200 at 8192 and 16384 tokens (NOTES.md, v14) cuBLAS's float8 GEMM with rowwise scales
# ran x @ [w_gate; w_up]^T at 1.71-1.79x the bf16 GEMM's speed, the stacked float8 kernel at
# 1.32-1.38x writing y alone and 1.15-1.22x writing g and u too: the two GEMMs (g and u rounded
# to the input dtype, as the 16-bit cuBLAS path has them) and the elementwise pass (about a
# tenth of the GEMMs' time) are the faster forward there, also without grad, where g and u are
# temporaries the fused kernel would not write. Fewer tokens, unmeasured, keep the fused
# kernels; so do sizes that cuBLAS would need padded (copies of x_q), and float16, which
# cuBLAS's rowwise scaling would round through bfloat16 (the fused kernels round float32 to
# float16 directly).
CUBLAS_MIN_TOKENS = 4096


def _takes_cublas(x_q, n, dtype):
    m, k = x_q.shape
    return (x_q.is_cuda and dtype == torch.bfloat16 and m >= CUBLAS_MIN_TOKENS
            and all(size % _CUBLAS_MULTIPLE == 0 for size in (m, n, k)))


def gated_forward(x_q, x_s, w_q, w_s, dtype, activation, store_preact):
    """(y, g, u) in `dtype` from x's rowwise quantization and stack_weights_fp8()'s buffer of
    both weights; g and u None without store_preact."""
    m, n = x_q.shape[0], w_q.shape[1]
    if _takes_cublas(x_q, n, dtype):
        gate, up = (scaled_matmul(x_q, x_s, w_q[i], w_s[i], dtype) for i in (0, 1))
        y = launch.product_from_preact(gate, up, activation)
        return (y, gate, up) if store_preact else (y, None, None)
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
