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

# (BLOCK_N, BLOCK_K, num_warps, num_stages) by (gated, BLOCK_M): the gated product (N = d_ff,
# K = d_model) and the down projection (N = d_model, K = d_ff); BLOCK_M, the tokens' tile, is
# 16 (the smallest tl.dot takes) up to 16 tokens, else 32. The best of 12-15 configurations at
# 4096 x 11008, 4096 x 14336 and 8192 x 28672 on an H200 (NOTES.md, v16). 32 tokens as two
# 16-token tiles ran 1.2-1.4x slower than one 32-token tile. Under the interpreter small tiles
# make the CPU tests cross several.
GPU_CONFIGS = {(True, 16): (32, 128, 4, 4), (False, 16): (16, 512, 2, 3),
               (True, 32): (64, 128, 4, 4), (False, 32): (16, 512, 4, 3)}
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
    block_m = 16 if M <= 16 else 32
    block_n, block_k, num_warps, num_stages = (INTERPRETER_CONFIG if interpreting()
                                               else GPU_CONFIGS[gated, block_m])
    # looked up on the module at each call, so that tests can poison the outputs
    out = launch.new_output((M, N), a.dtype, a)
    grid = (-(-N // block_n) * -(-M // block_m),)
    fp8_weight_gemm_kernel[grid](
        a, w, scales, out,
        M, N, K,
        a.stride(0), a.stride(1),
        w.stride(0), w.stride(1), w.stride(2),
        scales.stride(0), scales.stride(1),
        out.stride(0), out.stride(1),
        GATED=gated, ACTIVATION=ACTIVATION_CODES[activation],
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
        num_warps=num_warps, num_stages=num_stages,
    )
    return out
