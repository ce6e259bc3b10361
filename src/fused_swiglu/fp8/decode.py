"""The decode step of quantize_fp8's modules: up to DECODE_MAX_TOKENS tokens, products of
16-bit activations with float8 weights (kernels/fp8_weight_gemm.py).

A decode step reads every weight once for a few tokens: its time is the weights' bytes, which
float8 halves. Quantizing the activations as well would add a launch and a pass for nothing
the step is bound by, and lose their precision; so they stay in 16 bits, and only the weights'
quantization (per output channel along K, as the prefill's) enters the result."""

import torch

from ..activations import ACTIVATIONS
from ..launch import ACTIVATION_CODES, DECODE_MAX_TOKENS
from ..tuning import interpreting, runs_kernels
from ..kernels.fp8_weight_gemm import fp8_weight_gemm_kernel
from . import launch

__all__ = ["DECODE_MAX_TOKENS", "weight_only_matmul"]

# The tokens' tile: the smallest tl.dot takes. 32 tokens run as two tiles, whose second reads
# the weights from L2; one 32-token tile ran 1.4-2.7x slower on an H200 (NOTES.md, v16).
BLOCK_M = 16
# (BLOCK_N, BLOCK_K, num_warps, num_stages) of the gated product (N = d_ff) and of the down
# projection (N = d_model, K = d_ff), measured on an H200 (NOTES.md, v16). Under the
# interpreter small tiles make the CPU tests cross several.
GPU_CONFIGS = {True: (32, 256, 4, 4), False: (32, 256, 4, 4)}
INTERPRETER_CONFIG = (16, 32, 4, 1)


def weight_only_matmul(a: torch.Tensor, w: torch.Tensor, scales: torch.Tensor, *,
                       gated: bool, activation: str = "silu") -> torch.Tensor:
    """``a @ (w[0] * scales[0])^T`` in a's dtype, or with ``gated`` ``act(g) * u`` for ``g``
    and ``u`` those products of the two planes, gate first; the sums in float32.

    Args:
        a: ``(M, K)`` bfloat16 or float16, any strides.
        w: ``(P, N, K)`` float8_e4m3fn, any strides: P = 2 planes (gate, up) with ``gated``,
            else 1.
        scales: ``(P, N, 1)`` float32, one per output channel.
        activation: the gate's, with ``gated``.
    """
    M, K = a.shape
    N = w.shape[1]
    if not (runs_kernels(a) and M and N):
        # PyTorch: the kernel's sums (float32 products, then the scales) on the widened weights
        products = [(a.float() @ w[i].float().t()) * scales[i].t() for i in range(w.shape[0])]
        if gated:
            return (ACTIVATIONS[activation](products[0]) * products[1]).to(a.dtype)
        return products[0].to(a.dtype)
    block_n, block_k, num_warps, num_stages = (INTERPRETER_CONFIG if interpreting()
                                               else GPU_CONFIGS[gated])
    # looked up on the module at each call, so that tests can poison the outputs
    out = launch.new_output((M, N), a.dtype, a)
    grid = (-(-N // block_n) * -(-M // BLOCK_M),)
    fp8_weight_gemm_kernel[grid](
        a, w, scales, out,
        M, N, K,
        a.stride(0), a.stride(1),
        w.stride(0), w.stride(1), w.stride(2),
        scales.stride(0), scales.stride(1),
        out.stride(0), out.stride(1),
        GATED=gated, ACTIVATION=ACTIVATION_CODES[activation],
        BLOCK_M=BLOCK_M, BLOCK_N=block_n, BLOCK_K=block_k,
        num_warps=num_warps, num_stages=num_stages,
    )
    return out
