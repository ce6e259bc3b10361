"""Allocate outputs and launch the kernels on already-validated 2-D operands."""

import functools

import torch

from .kernels.common import GELU, GELU_TANH, SILU
from .kernels.dual_gemm import (SWIGLU_BACKWARD, SWIGLU_BACKWARD_AND_PRODUCT, SWIGLU_FORWARD,
                                dual_gemm_kernel)
from .kernels.glu_pointwise import glu_pointwise_kernel
from .kernels.stacked_gemm import stacked_gemm_kernel
from .tuning import (chosen_config, interpreting, remember_config, set_descriptor_blocks,
                     set_stacked_descriptor_blocks, token_bucket, tuned_dual_gemm,
                     tuned_stacked_gemm, untimed_config, with_launch_kwargs)

try:  # host-side tensor descriptors (TMA) arrived in Triton 3.4
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover - older Triton takes the pointer path
    TensorDescriptor = None

# activation name (fused_swiglu.activations) -> the kernels' ACTIVATION code
ACTIVATION_CODES = {"silu": SILU, "gelu_tanh": GELU_TANH, "gelu": GELU}

_TMA_ALIGNMENT = 16  # bytes: base address and every non-unit stride of a tensor descriptor
# Launching with host tensor descriptors costs about 150 us of host time per call (measured on
# an H200 host, Triton 3.6) against 70 us with pointers. Below this many multiply-adds
# (M * N * K; 2**33 take about 25 us on an H100 or H200) the kernel is too short to hide that,
# and at decode sizes reading the weights, not the load path, bounds it.
TMA_MIN_WORK = 2 ** 33


@functools.cache
def _compute_capability(device: torch.device):
    return torch.cuda.get_device_capability(device)


@functools.cache
def _gpu_model(device: torch.device) -> str:
    """What tuning is remembered per: the GPU's name (the interpreter has one kind)."""
    return "interpreter" if interpreting() else torch.cuda.get_device_name(device)


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


def _use_tma(a: torch.Tensor, n: int) -> bool:
    """Tensor descriptors for large GEMMs of 16-bit operands on Hopper or newer (and under the
    interpreter, which runs them on the CPU, for tests that lower TMA_MIN_WORK)."""
    if TensorDescriptor is None or a.shape[0] * a.shape[1] * n < TMA_MIN_WORK:
        return False
    if a.dtype not in (torch.float16, torch.bfloat16):
        return False
    if interpreting():
        return True
    return a.is_cuda and _compute_capability(a.device)[0] >= 9


def _descriptor(storage: torch.Tensor):
    # the block shape is a placeholder: each autotune config sets its own in a pre-hook
    return TensorDescriptor.from_tensor(storage, [16] * storage.dim())


# a tensor descriptor's strides must stay below 2**40 bytes
_TMA_STRIDE_LIMIT = 1 << 40


def _stacked_weights(gate, up):
    """(descriptor of both weights as one (2, N, K) tensor, whether up comes first), or None;
    `gate` and `up` are _storage_for_tma() of the two weights.

    Works where both are nn.Linear weights, i.e. the weights are transposed views of
    row-major (N, K) storages with the same row stride: the outer stride of the descriptor is
    the distance between the two storages, wherever each lives, taken from the lower one so
    that it is positive. Storages that overlap (interleaved rows) are left to the other path."""
    if not (gate and up and gate[1] and up[1] and gate[0].stride() == up[0].stride()):
        return None
    gate, up = gate[0], up[0]
    up_first = up.data_ptr() < gate.data_ptr()
    low, high = (up, gate) if up_first else (gate, up)
    distance = high.data_ptr() - low.data_ptr()
    if distance < low.shape[0] * low.stride(0) * low.element_size():
        return None
    if distance >= _TMA_STRIDE_LIMIT:
        return None
    descriptor = TensorDescriptor(low, [2, *low.shape], [distance // low.element_size(),
                                                         low.stride(0), 1], [1, 16, 16])
    return descriptor, up_first


def _row_major_for_tma(t: torch.Tensor) -> bool:
    storage = _storage_for_tma(t)
    return storage is not None and not storage[1]


# The interpreter has no multiprocessors: this many programs make each walk several tiles, as
# they do on a GPU.
_INTERPRETER_PROGRAMS = 3


@functools.cache
def _num_sms(device: torch.device) -> int:
    if interpreting():
        return _INTERPRETER_PROGRAMS
    return torch.cuda.get_device_properties(device).multi_processor_count


def _launch_tuned(tuned_kernel, kernel, key, stacked, grid, args, flags, fast_accum, config,
                  set_blocks):
    """Launch with the configuration chosen for `key` (the autotuner's, on the first call), or
    `config` (for benchmarks of configurations). key[0] is the GPU model; set_blocks, None
    without tensor descriptors, gives the descriptors the configuration's block shapes."""
    def named_args():
        return {**dict(zip(kernel.arg_names, args)), **flags}

    chosen = with_launch_kwargs(config) if config else chosen_config(key, fast_accum, stacked)
    if chosen is None and torch.cuda.is_current_stream_capturing():
        # nothing can be timed while a CUDA graph is captured: launch a default configuration
        # and remember nothing, so that the first call outside a capture still tunes
        chosen = with_launch_kwargs(untimed_config(stacked, named_args()))
    if chosen is None:
        # first call for this problem: the autotuner times the configurations and launches
        tuner = tuned_kernel(key[0])
        tuner[grid](*args, **flags)
        remember_config(key, tuner.best_config)
        return
    # later calls launch the chosen configuration directly: the autotuner's per-call key and
    # argument handling cost host time that short kernels cannot hide
    config, launch_kwargs = chosen
    if set_blocks is not None:  # what the configuration's pre-hook would do
        set_blocks({**named_args(), **config.kwargs})
    kernel[grid](*args, **flags, **launch_kwargs)


def _stacked_gemm(a, N, weights, y, pair, dy, epilogue, store_preact, config, activation):
    """The stacked kernel's launch; `weights` is _stacked_weights()'s answer, the other
    arguments are _dual_gemm's."""
    M, K = a.shape
    w_arg, up_first = weights
    gate_arg, up_arg = (_descriptor(t) for t in pair) if pair is not None else (None, None)
    m_bucket, num_sms = token_bucket(M), _num_sms(a.device)
    args = (_descriptor(a), w_arg, _descriptor(y) if y is not None else None, gate_arg, up_arg,
            _descriptor(dy) if dy is not None else None,
            M, N, K, m_bucket, num_sms)
    # float32 accumulation only: fast_accum changes nothing here
    code = ACTIVATION_CODES[activation]
    flags = dict(EPILOGUE=epilogue, ACTIVATION=code, STORE_PREACT=store_preact,
                 UP_FIRST=up_first)
    key = (_gpu_model(a.device), "stacked", m_bucket, N, K, a.dtype, epilogue, code,
           store_preact)

    def grid(meta):
        # persistent: one program per multiprocessor, fewer when there are fewer tiles
        tiles = _cdiv(M, meta["BLOCK_M"]) * _cdiv(N, meta["BLOCK_N"])
        return (min(num_sms, tiles),)

    _launch_tuned(tuned_stacked_gemm, stacked_gemm_kernel, key, True, grid, args, flags,
                  False, config, set_stacked_descriptor_blocks)


def _gemm_plan(a, b_gate, b_up, dy=None):
    """(storages, stacked) for the GEMM a @ [b_gate | b_up]: `storages` holds
    _storage_for_tma() of each operand, [None] where tensor descriptors are not used;
    `stacked` is _stacked_weights() where the stacked kernel can run the GEMM (with dy, the
    incoming gradient of a backward epilogue, as its descriptor needs it), None otherwise."""
    N = b_gate.shape[1]
    if not _use_tma(a, N):
        return [None], None
    storages = [_storage_for_tma(t) for t in (a, b_gate, b_up)]
    stacked = None
    if (storages[0] and not storages[0][1] and N * a.element_size() % _TMA_ALIGNMENT == 0
            and (dy is None or _row_major_for_tma(dy))):
        stacked = _stacked_weights(storages[1], storages[2])
    return storages, stacked


def _dual_gemm(a, b_gate, b_up, y, pair, dy, epilogue, fast_accum, config=None, plan=None,
               activation="silu"):
    """The SwiGLU epilogue of a @ b_gate and a @ b_up, by tiles, on 2-D operands of any strides.

    Forward (SWIGLU_FORWARD): y = act(g) * u, and g and u into `pair`, two (M, N) tensors of
    the same strides, unless it is None. Backward (SWIGLU_BACKWARD): dg and du into `pair` from
    dy; SWIGLU_BACKWARD_AND_PRODUCT also y = act(g) * u into `y`, of the pair's strides. With
    the autotuner's choice of configuration, or `config` (for benchmarks of configurations);
    `plan` is _gemm_plan()'s answer where the caller has it; `activation` names the gate's."""
    M, K = a.shape
    N = b_gate.shape[1]
    store_preact = epilogue == SWIGLU_FORWARD and pair is not None
    storages, stacked = plan if plan is not None else _gemm_plan(a, b_gate, b_up, dy)
    if stacked is not None:
        _stacked_gemm(a, N, stacked, y, pair, dy, epilogue, store_preact, config, activation)
        return
    if epilogue == SWIGLU_FORWARD:
        out_a = y
        out_b, out_c = pair if store_preact else (y, y)
        dy = y  # never read by the forward
    else:
        # out_c is written with the product only
        (out_a, out_b), out_c = pair, (y if y is not None else pair[1])
    # the two-MMA kernel takes descriptors for any row- or column-major operands whose two
    # weights share a layout; pointers otherwise
    a_arg, b_gate_arg, b_up_arg = a, b_gate, b_up
    a_transposed, b_transposed = False, False
    use_tma = all(storages) and storages[1][1] == storages[2][1]
    if use_tma:
        (a_storage, a_transposed), (g_storage, b_transposed), (u_storage, _) = storages
        a_arg, b_gate_arg, b_up_arg = (_descriptor(t) for t in (a_storage, g_storage, u_storage))

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
    flags = dict(EPILOGUE=epilogue, ACTIVATION=ACTIVATION_CODES[activation],
                 STORE_PREACT=store_preact, FAST_ACCUM=fast_accum,
                 USE_TMA=use_tma, A_TRANSPOSED=a_transposed, B_TRANSPOSED=b_transposed)
    key = (_gpu_model(a.device), m_bucket, N, K, a.dtype, *flags.values())
    _launch_tuned(tuned_dual_gemm, dual_gemm_kernel, key, False, grid, args, flags,
                  fast_accum, config, set_descriptor_blocks if use_tma else None)


def _cdiv(a: int, b: int) -> int:
    # plain integer arithmetic: triton.cdiv costs microseconds of host time per call
    return -(-a // b)


def new_output(shape, like: torch.Tensor) -> torch.Tensor:
    """Uninitialised output memory; every element is written by a kernel."""
    return torch.empty(shape, device=like.device, dtype=like.dtype)


# From more than DECODE_MAX_TOKENS up to CUBLAS_MAX_TOKENS tokens, the forward is two cuBLAS
# GEMMs writing g and u, then an elementwise pass for y. There the fused kernel's 128-row
# tiles (or, below TMA_MIN_WORK, its two-MMA pointer kernel) fill the multiprocessors in few,
# partly empty waves, where cuBLAS picks tiles that divide the work evenly. Measured on an
# H200 over 64-512 tokens at the four benchmark model shapes (NOTES.md, v9): 0.92x the fused
# forward's time in geometric mean with g and u kept (0.76-1.05x), 0.96x for y alone
# (0.78-1.08x); from 1024 tokens the fused kernel is as fast or faster. Fewer tokens are a
# decode step, where the fused kernel's narrow tiles read the weights once at close to the
# copy bandwidth.
# Above CUBLAS_MAX_TOKENS, only the stacked kernel (nn.Linear-layout weights on Hopper) is
# faster than cuBLAS: on row-major (d_model, d_ff) weights, the original API's, the two-MMA
# kernel ran the forward at 1.049-1.158x the cuBLAS packed GEMM on an H200, two cuBLAS GEMMs
# and the pass at 1.035-1.085x (NOTES.md, v12), so every layout the stacked kernel cannot take
# runs cuBLAS above a decode step.
DECODE_MAX_TOKENS = 32
CUBLAS_MAX_TOKENS = 512

CUBLAS, STACKED, DUAL = "cublas", "stacked", "dual"


def _forward_plan(x, w_gate, w_up, dy=None):
    """(path, plan): CUBLAS (plan None) for two cuBLAS GEMMs and the elementwise pass, or
    STACKED or DUAL for the fused kernels, with _gemm_plan()'s answer. float32 operands always
    take the Triton kernels' full float32 precision, which cuBLAS gives only when TF32 is
    off."""
    M = x.shape[0]
    sixteen_bit = x.dtype in (torch.float16, torch.bfloat16)
    if sixteen_bit and DECODE_MAX_TOKENS < M <= CUBLAS_MAX_TOKENS:
        return CUBLAS, None  # decided before the plan, whose host time these sizes feel
    plan = _gemm_plan(x, w_gate, w_up, dy)
    if plan[1] is not None:
        return STACKED, plan
    if sixteen_bit and M > DECODE_MAX_TOKENS:
        return CUBLAS, None
    return DUAL, plan


def forward_path(x, w_gate, w_up) -> str:
    """The forward's path for 2-D x and these weights, as the benchmark reports it: "stacked"
    (the fused kernel with both weights in one tensor descriptor), "dual" (the fused two-MMA
    kernel) or "cublas" (two cuBLAS GEMMs and the elementwise pass)."""
    return _forward_plan(x, w_gate, w_up)[0]


def _cublas_preact(x, w_gate, w_up):
    """(g, u) by cuBLAS, in new tensors."""
    return torch.mm(x, w_gate), torch.mm(x, w_up)


def swiglu_forward(x, w_gate, w_up, fast_accum: bool, store_preact: bool, activation="silu"):
    """y = act(x @ w_gate) * (x @ w_up) for 2-D x, and with store_preact also the
    pre-activations g and u, two (M, d_ff) tensors of their own (so that each can be freed
    without the other); None for them otherwise."""
    M, N = x.shape[0], w_gate.shape[1]
    path, plan = _forward_plan(x, w_gate, w_up)
    if path == CUBLAS:
        gate, up = _cublas_preact(x, w_gate, w_up)
        y = product_from_preact(gate, up, activation)
        return (y, gate, up) if store_preact else (y, None, None)
    y = new_output((M, N), x)
    pair = (new_output((M, N), x), new_output((M, N), x)) if store_preact else None
    _dual_gemm(x, w_gate, w_up, y, pair, None, SWIGLU_FORWARD, fast_accum, plan=plan,
               activation=activation)
    return (y, *pair) if store_preact else (y, None, None)


def swiglu_grads_from_preact(dy, gate, up, out=None, product=None, activation="silu",
                             maxima=None):
    """(dg, du) from dy and the stored g and u, into `out` (which may be (gate, up) itself:
    each element is read before it is overwritten, by the same program); with `product` (a
    tensor of g's strides), y = act(g) * u into it as well. `maxima`, for float8: None, or
    three zeroed int32 buffers of M + N elements (the last None without product), which
    receive the bits of max |dg|, |du| and |y| of each row, then of each column
    (fp8/rows_columns.quantize_rows_and_columns takes them)."""
    M, N = dy.shape
    d_gate, d_up = (new_output((M, N), gate), new_output((M, N), up)) if out is None else out
    _glu_pointwise(dy, gate, up, d_gate, d_up, activation, product, maxima)
    return d_gate, d_up


def product_from_preact(gate, up, activation="silu"):
    """y = act(g) * u from g and u, both (M, N) row-major, in a new tensor: the forward's
    pass after cuBLAS's GEMMs."""
    product = new_output(gate.shape, gate)
    _glu_pointwise(None, gate, up, None, None, activation, product=product)
    return product


def gate_grad_from_preact(dy, gate, up, activation="silu"):
    """dg alone, in a new tensor."""
    d_gate = new_output(dy.shape, gate)
    _glu_pointwise(dy, gate, up, d_gate, None, activation)
    return d_gate


def up_grad_from_preact(dy, gate, activation="silu"):
    """du alone, in a new tensor: it needs dy and g, not u."""
    d_up = new_output(dy.shape, gate)
    _glu_pointwise(dy, gate, None, None, d_up, activation)
    return d_up


def _glu_pointwise(dy, gate, up, d_gate, d_up, activation, product=None, maxima=None):
    """The elementwise pass; up and d_gate, or d_up, may be None, and product is; dy None
    writes the product alone; maxima as swiglu_grads_from_preact takes them."""
    M, N = gate.shape
    strides = {t.stride() for t in (gate, up, d_gate, d_up, product) if t is not None}
    if len(strides) != 1:
        raise ValueError(f"g, u, dg, du and y must share strides, got {sorted(strides)}")
    if maxima is None:
        maxima = (None, None, None)
        block_m, block_n = 4, min(512, 1 << (N - 1).bit_length())
    else:
        # square tiles with the maxima: a column's atomics are one per BLOCK_M rows (64 x 64,
        # as the two-way quantizer's own maximum pass takes them)
        block_m, block_n = (16, 16) if interpreting() else (64, 64)
    grid = (_cdiv(M, block_m), _cdiv(N, block_n))
    glu_pointwise_kernel[grid](
        dy, gate, up, d_gate, d_up, product, *maxima,
        M, N,
        *(dy.stride() if dy is not None else (0, 0)), gate.stride(0), gate.stride(1),
        ACTIVATION=ACTIVATION_CODES[activation], BLOCK_M=block_m, BLOCK_N=block_n, num_warps=4,
    )


def swiglu_grads_recompute(dy, x, w_gate, w_up, fast_accum: bool, with_product=False,
                           activation="silu"):
    """(dg, du), two (M, d_ff) tensors of their own, recomputing g and u in the GEMM's
    epilogue (or on the forward's cuBLAS path, as it does); with_product: (dg, du, y),
    y = act(g) * u recomputed too."""
    M, N = dy.shape
    path, plan = _forward_plan(x, w_gate, w_up, dy)
    if path == CUBLAS:
        # the forward's path: g and u again by cuBLAS, then dg and du over them in place
        gate, up = _cublas_preact(x, w_gate, w_up)
        y = new_output((M, N), x) if with_product else None
        _glu_pointwise(dy, gate, up, gate, up, activation, product=y)
        return (gate, up, y) if with_product else (gate, up)
    pair = (new_output((M, N), x), new_output((M, N), x))
    if not with_product:
        _dual_gemm(x, w_gate, w_up, None, pair, dy, SWIGLU_BACKWARD, fast_accum, plan=plan,
                   activation=activation)
        return pair
    y = new_output((M, N), x)
    _dual_gemm(x, w_gate, w_up, y, pair, dy, SWIGLU_BACKWARD_AND_PRODUCT, fast_accum,
               plan=plan, activation=activation)
    return (*pair, y)
