"""The float8 stacked forward (kernels/fp8_stacked_gemm.py): both weights quantized rowwise into
one (2, N, K) buffer, and the launch on tensor descriptors."""

import torch

from ..kernels.fp8_stacked_gemm import fp8_stacked_swiglu_kernel
from ..launch import (_TMA_ALIGNMENT, ACTIVATION_CODES, TensorDescriptor, _num_sms,
                      _row_major_for_tma)
from ..tuning import interpreting
from . import launch
from .launch import _check_scales, check_gemm_options, check_runnable
from .scaled_matmul import quantize_rows

# (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages). BLOCK_N = 128 makes the MMA 256
# wide, and BLOCK_K = 128 float8 values are the bytes of the bf16 stacked kernel's 64: its 3
# stages take the same 144 KiB of shared memory. Chosen by `fp8_gemm_probe.py sweep` (v15, H200,
# 22 configurations x 3 shapes): with fast accumulation this one ran y alone at 1.83-1.86x the
# bf16 cuBLAS packed GEMM (1.03-1.10x cuBLAS's float8 rowwise GEMM), y, g and u at 1.62-1.79x;
# GROUP_M 8 was 1-4% slower, 4 warps or BLOCK_N 64 10-80%. The interpreter's small tiles make
# the CPU tests cross several tiles and ragged edges.
GPU_CONFIG = (128, 128, 128, 16, 8, 3)
INTERPRETER_CONFIG = (32, 32, 32, 2, 4, 1)
# Whether to add the partial sums into float32 every BLOCK_K products (kernels/fp8_gemm.fp8_mma),
# as DeepSeek-V3 does, instead of leaving Hopper's float8 accumulator running over all of K
# (cuBLAS's use_fast_accum). Off: the forward GEMM then runs 1.31-1.40x faster (v15's sweep:
# precise at best 1.32-1.37x bf16), and torchao's float8 recipes, tensorwise and rowwise, take
# fast accumulation for this GEMM too (their gemm_config_output); the backward's GEMMs keep
# float32 accumulation. `fp8_accuracy.py` measures what it costs against float64.
PRECISE_ACCUMULATION = False


def stack_weights_fp8(w_gate: torch.Tensor, w_up: torch.Tensor):
    """Both weights, in nn.Linear's (N, K) layout, quantized to float8_e4m3fn with one scale per
    output channel (fused_swiglu.fp8.recipe's rowwise scaling) into one buffer.

    Returns:
        ``(w_q, w_scales)``: ``w_q`` ``(2, N, K)`` contiguous, gate first; ``w_scales``
        ``(2, N, 1)`` float32.
    """
    if w_gate.shape != w_up.shape or w_gate.dim() != 2:
        raise ValueError(f"stack_weights_fp8: w_gate and w_up must be (N, K) matrices of one "
                         f"shape, got {tuple(w_gate.shape)} and {tuple(w_up.shape)}")
    # each quantized on its own and stacked in float8: stacking the 16-bit weights first
    # would hold a 16-bit copy of both at the forward's peak
    (gate_q, gate_s), (up_q, up_s) = quantize_rows(w_gate), quantize_rows(w_up)
    # stacked as bytes, which every device's copy kernels take
    q = torch.stack([gate_q.view(torch.uint8), up_q.view(torch.uint8)]).view(gate_q.dtype)
    return q, torch.stack([gate_s, up_s])


def takes_descriptors(x_q: torch.Tensor, n: int) -> bool:
    """Whether tensor descriptors can describe x_q (M, K) and an (M, n) output of 16 bits."""
    if TensorDescriptor is None:
        return False
    # x_q's rows as the 16-bit path checks them; K also sizes the weights' contiguous rows
    return (_row_major_for_tma(x_q) and x_q.shape[1] % _TMA_ALIGNMENT == 0
            and (2 * n) % _TMA_ALIGNMENT == 0)


def fp8_stacked_swiglu_forward(x_q, x_scales, w_q, w_scales, *, activation="silu",
                               out_dtype=torch.bfloat16, store_preact=False):
    """``y = act(g) * u`` with ``[g, u] = x @ [w_gate; w_up]^T`` from float8 operands with
    rowwise scales, as fused_swiglu.fp8.reference specifies (granularity "rowwise"), up to the
    tensor cores' accumulation on a GPU (PRECISE_ACCUMULATION).

    Args:
        x_q: ``(M, K)`` float8_e4m3fn, row-major with 16-byte aligned rows (takes_descriptors),
            with float32 ``x_scales`` ``(M, 1)``, one per token.
        w_q, w_scales: stack_weights_fp8()'s ``(2, N, K)`` and ``(2, N, 1)``.
        activation: ``"silu"``, ``"gelu_tanh"`` or ``"gelu"``.
        out_dtype: ``torch.bfloat16`` or ``torch.float16``.
        store_preact: also return g and u.

    Returns:
        ``y`` ``(M, N)`` in ``out_dtype``; with store_preact ``(y, g, u)``.
    """
    caller = "fp8_stacked_swiglu_forward"
    for name, t, dim in (("x_q", x_q, 2), ("w_q", w_q, 3)):
        if not isinstance(t, torch.Tensor) or t.dim() != dim or t.dtype != torch.float8_e4m3fn:
            raise TypeError(f"{caller}: {name} must be a {dim}-D torch.float8_e4m3fn tensor, got "
                            f"{getattr(t, 'dtype', type(t).__name__)} of shape "
                            f"{tuple(getattr(t, 'shape', ()))}")
    check_gemm_options(caller, activation, store_preact, out_dtype)
    M, K = x_q.shape
    two, N, w_k = w_q.shape
    if two != 2 or w_k != K or not w_q.is_contiguous():
        raise ValueError(f"{caller}: w_q must be stack_weights_fp8()'s contiguous (2, N, K) = "
                         f"(2, N, {K}) buffer for x_q {tuple(x_q.shape)}, got shape "
                         f"{tuple(w_q.shape)} and strides {w_q.stride()}")
    _check_scales(caller, "x_scales", x_scales, (M, 1))
    _check_scales(caller, "w_scales", w_scales, (2, N, 1))
    check_runnable(caller, (x_q, x_scales, w_q, w_scales))
    if not takes_descriptors(x_q, N):
        raise ValueError(f"{caller}: tensor descriptors need x_q row-major with rows of a "
                         f"multiple of 16 bytes and N a multiple of 8, got x_q strides "
                         f"{x_q.stride()}, K = {K}, N = {N}; fp8_swiglu_forward takes any")

    # looked up on the module at each call, so that tests can poison the outputs
    y = launch.new_output((M, N), out_dtype, x_q)
    gate, up = ((launch.new_output((M, N), out_dtype, x_q),
                 launch.new_output((M, N), out_dtype, x_q)) if store_preact else (None, None))
    if M == 0 or N == 0:
        return (y, gate, up) if store_preact else y
    if K == 0:  # no products: g = u = 0, and act(0) * 0 = 0
        for t in (y, gate, up):
            if t is not None:
                t.zero_()
        return (y, gate, up) if store_preact else y
    block_m, block_n, block_k, group_m, num_warps, num_stages = (
        INTERPRETER_CONFIG if interpreting() else GPU_CONFIG)
    a_desc = TensorDescriptor.from_tensor(x_q, [block_m, block_k])
    w_desc = TensorDescriptor.from_tensor(w_q, [2, block_n, block_k])
    out_descs = [TensorDescriptor.from_tensor(t, [block_m, block_n]) if t is not None else None
                 for t in (y, gate, up)]
    tiles = -(-M // block_m) * -(-N // block_n)
    num_sms = _num_sms(x_q.device)
    fp8_stacked_swiglu_kernel[(min(num_sms, tiles),)](
        a_desc, w_desc, *out_descs,
        x_scales, w_scales, x_scales.stride(0), w_scales.stride(0), w_scales.stride(1),
        M, N, K, num_sms,
        ACTIVATION=ACTIVATION_CODES[activation], STORE_PREACT=store_preact,
        PRECISE_ACC=PRECISE_ACCUMULATION,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, GROUP_M=group_m,
        num_warps=num_warps, num_stages=num_stages,
    )
    return (y, gate, up) if store_preact else y
