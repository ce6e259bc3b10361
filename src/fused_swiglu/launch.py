"""Allocate outputs and launch the kernels on already-validated 2-D operands."""

import functools

import torch

from .kernels.dual_gemm import SWIGLU_BACKWARD, SWIGLU_FORWARD, dual_gemm_kernel
from .kernels.glu_backward import glu_backward_kernel
from .tuning import (chosen_config, interpreting, remember_config, set_descriptor_blocks,
                     token_bucket, tuned_dual_gemm, with_launch_kwargs)

try:  # host-side tensor descriptors (TMA) arrived in Triton 3.4
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover - older Triton takes the pointer path
    TensorDescriptor = None

_TMA_ALIGNMENT = 16  # bytes: base address and every non-unit stride of a tensor descriptor
# Launching with host tensor descriptors costs about 150 us of host time per call (measured on
# an H200 host, Triton 3.6) against 70 us with pointers. Below this many tokens the kernel is
# too short to hide that, and reading the weights, not the load path, bounds it.
TMA_MIN_TOKENS = 1024


@functools.cache
def _compute_capability(device: torch.device):
    return torch.cuda.get_device_capability(device)


def _storage_for_tma(t: torch.Tensor):
    """(row-major storage of the logical matrix t, whether that storage is t transposed), or
    None when a tensor descriptor cannot describe t."""
    if t.stride(1) == 1 and t.stride(0) >= t.size(1):
        storage, transposed = t, False
    elif t.stride(0) == 1 and t.stride(1) >= t.size(0):
        storage, transposed = t.t(), True
    else:
        return None
    if (storage.data_ptr() % _TMA_ALIGNMENT
            or (storage.stride(0) * storage.element_size()) % _TMA_ALIGNMENT):
        return None
    return storage, transposed


def _use_tma(a: torch.Tensor) -> bool:
    """Tensor descriptors for 16-bit operands of many rows on Hopper or newer."""
    return (TensorDescriptor is not None and not interpreting() and a.is_cuda
            and a.shape[0] >= TMA_MIN_TOKENS and a.dtype in (torch.float16, torch.bfloat16)
            and _compute_capability(a.device)[0] >= 9)


def _descriptor(storage: torch.Tensor):
    # the block shape is a placeholder: each autotune config sets its own in a pre-hook
    return TensorDescriptor.from_tensor(storage, [16, 16])


def _dual_gemm(a, b_gate, b_up, out_a, out_b, out_c, dy, epilogue, store_preact, fast_accum,
               config=None):
    """out_* = epilogue(a @ b_gate, a @ b_up), by tiles, on 2-D operands of any strides; with
    the autotuner's choice of configuration, or `config` (for benchmarks of configurations)."""
    M, K = a.shape
    N = b_gate.shape[1]
    a_arg, b_gate_arg, b_up_arg = a, b_gate, b_up
    use_tma, a_transposed, b_transposed = False, False, False
    if _use_tma(a):
        a_storage, g_storage, u_storage = (_storage_for_tma(t) for t in (a, b_gate, b_up))
        if (a_storage and g_storage and u_storage and g_storage[1] == u_storage[1]):
            use_tma = True
            a_arg, a_transposed = _descriptor(a_storage[0]), a_storage[1]
            b_gate_arg, b_transposed = _descriptor(g_storage[0]), g_storage[1]
            b_up_arg = _descriptor(u_storage[0])

    def grid(meta):
        return (_cdiv(M, meta["BLOCK_M"]) * _cdiv(N, meta["BLOCK_N"]),)

    m_bucket = token_bucket(M)
    args = (a_arg, b_gate_arg, b_up_arg, out_a, out_b, out_c, dy,
            M, N, K, m_bucket,
            a.stride(0), a.stride(1),
            b_gate.stride(0), b_gate.stride(1),
            b_up.stride(0), b_up.stride(1),
            out_a.stride(0), out_a.stride(1),
            out_b.stride(0), out_b.stride(1),
            dy.stride(0), dy.stride(1))
    flags = dict(EPILOGUE=epilogue, STORE_PREACT=store_preact, FAST_ACCUM=fast_accum,
                 USE_TMA=use_tma, A_TRANSPOSED=a_transposed, B_TRANSPOSED=b_transposed)
    key = (m_bucket, N, K, a.dtype, *flags.values())
    chosen = with_launch_kwargs(config) if config else chosen_config(key, fast_accum)
    if chosen is None:
        # first call for this problem: the autotuner times the configurations and launches
        tuner = tuned_dual_gemm()
        tuner[grid](*args, **flags)
        remember_config(key, tuner.best_config)
        return
    # later calls launch the chosen configuration directly: the autotuner's per-call key and
    # argument handling cost host time that short kernels cannot hide
    config, launch_kwargs = chosen
    if use_tma:
        set_descriptor_blocks(dict(a=a_arg, b_gate=b_gate_arg, b_up=b_up_arg, **flags,
                                   **config.kwargs))
    dual_gemm_kernel[grid](*args, **flags, **launch_kwargs)


def _cdiv(a: int, b: int) -> int:
    # plain integer arithmetic: triton.cdiv costs microseconds of host time per call
    return -(-a // b)


def new_output(shape, like: torch.Tensor) -> torch.Tensor:
    """Uninitialised output memory; every element is written by a kernel."""
    return torch.empty(shape, device=like.device, dtype=like.dtype)


def swiglu_forward(x, w_gate, w_up, fast_accum: bool, store_preact: bool):
    """y = silu(x @ w_gate) * (x @ w_up) for 2-D x; with store_preact also the pre-activations
    packed as one (M, 2 * d_ff) tensor [g | u], else an empty tensor."""
    M, N = x.shape[0], w_gate.shape[1]
    y = new_output((M, N), x)
    if store_preact:
        preact = new_output((M, 2 * N), x)
        gate, up = preact[:, :N], preact[:, N:]
    else:
        preact = x.new_empty((0,))
        gate = up = y  # never written: STORE_PREACT is off
    _dual_gemm(x, w_gate, w_up, y, gate, up, y, SWIGLU_FORWARD, store_preact, fast_accum)
    return y, preact


def swiglu_grad_from_preact(dy, preact, out=None):
    """[dg | du] of shape (M, 2 * d_ff) from dy and the stored [g | u], into `out` (which may
    be `preact` itself: each element is read before it is overwritten, by the same program)."""
    M, N = dy.shape
    grads = new_output(preact.shape, preact) if out is None else out
    if grads.stride() != preact.stride():
        raise ValueError(f"[dg | du] strides {grads.stride()} must match [g | u]'s "
                         f"{preact.stride()}")
    block_m, block_n = 4, min(512, 1 << (N - 1).bit_length())
    grid = (_cdiv(M, block_m), _cdiv(N, block_n))
    glu_backward_kernel[grid](
        dy, preact, grads,
        M, N,
        dy.stride(0), dy.stride(1), preact.stride(0), preact.stride(1),
        BLOCK_M=block_m, BLOCK_N=block_n, num_warps=4,
    )
    return grads


def swiglu_grad_recompute(dy, x, w_gate, w_up, fast_accum: bool):
    """[dg | du] of shape (M, 2 * d_ff), recomputing g and u in the GEMM's epilogue."""
    M, N = dy.shape
    grads = new_output((M, 2 * N), x)
    _dual_gemm(x, w_gate, w_up, grads[:, :N], grads[:, N:], grads, dy,
               SWIGLU_BACKWARD, False, fast_accum)
    return grads
