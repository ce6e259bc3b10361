"""The float8 scaling recipe, in plain PyTorch: the specification that the quantization kernel
(kernels/quantize.py) matches bit for bit.

A 2-D operand ``t`` of shape ``(rows, K)`` is cut into groups; each group gets one float32
scale, computed from the current values (no history of past maxima):

    scale = amax(|group|) / FP8_MAX          (448 for float8_e4m3fn, 57344 for float8_e5m2)
    q     = (t / scale).to(float8 dtype)     rounded to nearest even, |t / scale| <= FP8_MAX
    t    ~= q.float() * scale                (dequantization)

A group whose scale comes out 0 (all zeros, or an amax below FP8_MAX times float32's smallest
subnormal) gets scale 1, so nothing is divided by zero. With ``pow2_scales=True`` each scale is
rounded up to a power of two, which makes both the division and the dequantizing product exact
(exponent arithmetic), at the price of up to one bit of the float8 range.

The arithmetic is float32 throughout: ``t`` is converted to float32 first (exact for bfloat16,
float16 and float32), the two divisions are IEEE float32 divisions, and the conversion to
float8 rounds to nearest even. Inputs are expected to be finite; NaN or infinity give
unspecified scales.

Granularities:

- rowwise: one scale per row, scales ``(rows, 1)``. Per token for an activation ``(tokens, K)``,
  per output channel for a weight given as ``(d_out, K)``.
- blockwise (DeepSeek-V3): ``block=(1, 128)`` for activations and gradients, scales
  ``(rows, ceil(K / 128))``; ``block=(128, 128)`` for weights, scales
  ``(ceil(rows / 128), ceil(K / 128))``. Sizes need not be multiples of 128: the last group of
  a row (or block) is partial and its amax is over its real elements only.
"""

import torch

# The float8 formats and their largest finite values (torch.finfo(dtype).max).
FP8_MAX = {torch.float8_e4m3fn: 448.0, torch.float8_e5m2: 57344.0}

# The block shapes quantize_blockwise takes: activations and gradients, weights.
BLOCKS = ((1, 128), (128, 128))

# Input dtypes of the recipe (the kernel takes the first three).
INPUT_DTYPES = (torch.bfloat16, torch.float16, torch.float32, torch.float64)


def check_fp8_dtype(caller: str, dtype) -> None:
    if dtype not in FP8_MAX:
        raise TypeError(f"{caller}: dtype must be torch.float8_e4m3fn or torch.float8_e5m2, "
                        f"got {dtype!r}")


def check_operand(caller: str, t, dtypes=INPUT_DTYPES) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{caller}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 2:
        raise ValueError(f"{caller}: expected a 2-D (rows, K) tensor, got shape {tuple(t.shape)}")
    if t.dtype not in dtypes:
        raise TypeError(f"{caller}: dtype {t.dtype} is not supported; use one of "
                        f"{', '.join(str(d) for d in dtypes)}")


def check_pow2(caller: str, pow2_scales) -> None:
    if not isinstance(pow2_scales, bool):
        raise TypeError(f"{caller}: pow2_scales must be True or False, got {pow2_scales!r}")


def _check_block(caller: str, block) -> tuple:
    try:
        block = tuple(block)
    except TypeError:
        block = None
    if block not in BLOCKS:
        raise ValueError(f"{caller}: block must be (1, 128) (activations, gradients) or "
                         f"(128, 128) (weights), got {block!r}")
    return block


def scales_from_amax(amax: torch.Tensor, dtype, pow2_scales: bool) -> torch.Tensor:
    """float32 scales from float32 maxima of |t| per group."""
    # a tensor divisor: PyTorch on CUDA multiplies by the reciprocal of a Python-number
    # divisor, which is not the IEEE division the kernel and the CPU do
    scale = amax / torch.full_like(amax, FP8_MAX[dtype])
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    if pow2_scales:
        # clear the mantissa after carrying any nonzero mantissa bit into the exponent: the
        # smallest power of two >= scale, exactly (for every finite positive scale)
        bits = scale.view(torch.int32)
        scale = (((bits + 0x7FFFFF) >> 23) << 23).view(torch.float32)
    return scale


def _expand(scales: torch.Tensor, block: tuple, shape) -> torch.Tensor:
    """Per-group scales, repeated to one per element of a ``shape`` tensor."""
    full = scales.repeat_interleave(block[0], dim=0).repeat_interleave(block[1], dim=1)
    return full[:shape[0], :shape[1]]


def _group_amax(t32: torch.Tensor, block: tuple) -> torch.Tensor:
    rows, cols = t32.shape
    br, bc = block
    mb, kb = -(-rows // br), -(-cols // bc)
    # zeros pad the partial groups: they cannot raise an amax of |t| >= 0
    padded = t32.abs().new_zeros(mb * br, kb * bc)
    padded[:rows, :cols] = t32.abs()
    return padded.view(mb, br, kb, bc).amax(dim=(1, 3))


def _quantize(t32: torch.Tensor, scales: torch.Tensor, block: tuple, dtype) -> torch.Tensor:
    return (t32 / _expand(scales, block, t32.shape)).to(dtype)


def quantize_rowwise(t: torch.Tensor, dtype=torch.float8_e4m3fn, pow2_scales: bool = False):
    """One scale per row of ``t``.

    Args:
        t: ``(rows, K)``, bfloat16, float16, float32 or float64, any strides.
        dtype: ``torch.float8_e4m3fn`` (forward operands) or ``torch.float8_e5m2`` (gradients).
        pow2_scales: round each scale up to a power of two.

    Returns:
        ``(q, scales)``: ``q`` ``(rows, K)`` in ``dtype``, contiguous; ``scales`` ``(rows, 1)``
        float32, with ``t ~= q.float() * scales``.
    """
    check_operand("quantize_rowwise", t)
    check_fp8_dtype("quantize_rowwise", dtype)
    check_pow2("quantize_rowwise", pow2_scales)
    t32 = t.to(torch.float32)
    amax = t32.abs().amax(dim=1, keepdim=True) if t.shape[1] else t32.new_zeros(t.shape[0], 1)
    scales = scales_from_amax(amax, dtype, pow2_scales)
    return (t32 / scales).to(dtype).contiguous(), scales


def quantize_blockwise(t: torch.Tensor, block=(1, 128), dtype=torch.float8_e4m3fn,
                       pow2_scales: bool = False):
    """One scale per ``block`` of ``t``: ``(1, 128)`` groups along K for activations and
    gradients, ``(128, 128)`` blocks for weights.

    Args:
        t: ``(rows, K)``, bfloat16, float16, float32 or float64, any strides, any sizes (the
            last group of each dimension may be partial).
        block: ``(1, 128)`` or ``(128, 128)``.
        dtype: ``torch.float8_e4m3fn`` or ``torch.float8_e5m2``.
        pow2_scales: round each scale up to a power of two.

    Returns:
        ``(q, scales)``: ``q`` ``(rows, K)`` in ``dtype``, contiguous; ``scales`` float32 of
        shape ``(ceil(rows / block[0]), ceil(K / block[1]))``: ``(rows, ceil(K / 128))`` for
        ``(1, 128)``, ``(ceil(rows / 128), ceil(K / 128))`` for ``(128, 128)``.
    """
    block = _check_block("quantize_blockwise", block)
    check_operand("quantize_blockwise", t)
    check_fp8_dtype("quantize_blockwise", dtype)
    check_pow2("quantize_blockwise", pow2_scales)
    t32 = t.to(torch.float32)
    scales = scales_from_amax(_group_amax(t32, block), dtype, pow2_scales)
    return _quantize(t32, scales, block, dtype).contiguous(), scales


def _check_dequantize(caller: str, q, scales, block) -> None:
    """block: the group shape, (1, None) for rows."""
    check_operand(caller, q, dtypes=tuple(FP8_MAX))
    if not isinstance(scales, torch.Tensor) or scales.dtype != torch.float32:
        raise TypeError(f"{caller}: scales must be a float32 tensor, got "
                        f"{getattr(scales, 'dtype', type(scales).__name__)}")
    rows, cols = q.shape
    expected = (-(-rows // block[0]), 1 if block[1] is None else -(-cols // block[1]))
    if tuple(scales.shape) != expected:
        raise ValueError(f"{caller}: scales {tuple(scales.shape)} do not fit q "
                         f"{tuple(q.shape)}: expected {expected}")


def dequantize_rowwise(q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """``q.float() * scales``: the float32 ``(rows, K)`` values that quantize_rowwise's
    ``(q, scales)`` stand for (``scales`` ``(rows, 1)``)."""
    _check_dequantize("dequantize_rowwise", q, scales, (1, None))
    return q.to(torch.float32) * scales


def dequantize_blockwise(q: torch.Tensor, scales: torch.Tensor, block=(1, 128)) -> torch.Tensor:
    """The float32 ``(rows, K)`` values that quantize_blockwise's ``(q, scales)`` stand for,
    with ``scales`` ``(ceil(rows / block[0]), ceil(K / block[1]))``."""
    block = _check_block("dequantize_blockwise", block)
    _check_dequantize("dequantize_blockwise", q, scales, block)
    return q.to(torch.float32) * _expand(scales, block, q.shape)
