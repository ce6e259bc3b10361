"""Quantization to float8 with one float32 scale per group of columns of a row: 1 x 128 groups
(DeepSeek-V3's activations and gradients) or whole rows (rowwise). fused_swiglu.fp8.recipe is
the specification, matched bit for bit."""

import triton
import triton.language as tl

from .common import INTERPRETING


@triton.jit
def _float8_bits(x, MANTISSA: tl.constexpr, BIAS: tl.constexpr, MAX_BITS: tl.constexpr,
                 SUBNORMAL_UNITS: tl.constexpr):
    """The bits (int32, 0..255) of float32 x in a float8 format with MANTISSA bits and exponent
    BIAS, rounded to nearest even and saturated at MAX_BITS (the largest finite value);
    SUBNORMAL_UNITS is 1 / (the smallest subnormal), 2**(BIAS + MANTISSA - 1)."""
    bits = x.to(tl.int32, bitcast=True)
    sign = (bits >> 31) & 1
    magnitude = bits & 0x7FFFFFFF
    # normal: drop the low 23 - MANTISSA bits of the magnitude, to nearest even; a round-up
    # carries into the exponent by itself; then rebias the exponent from 127 to BIAS
    drop: tl.constexpr = 23 - MANTISSA
    normal = (magnitude + ((1 << (drop - 1)) - 1) + ((magnitude >> drop) & 1)) >> drop
    normal = tl.minimum(normal - ((127 - BIAS) << MANTISSA), MAX_BITS)
    # subnormal: |x| in units of the smallest subnormal (exact: a power-of-two product), to
    # the nearest even integer by float32 addition of 2**23; 1 << MANTISSA is the smallest
    # normal, which a round-up may reach
    min_normal = 1.0 / (SUBNORMAL_UNITS >> MANTISSA)
    units = tl.minimum(tl.abs(x), min_normal) * SUBNORMAL_UNITS
    subnormal = ((units + 8388608.0) - 8388608.0).to(tl.int32)
    out = tl.where(magnitude < ((128 - BIAS) << 23), subnormal, normal)
    out = tl.where(magnitude > 0x7F800000, 0x7F, out)  # NaN stays NaN
    return out | (sign << 7)


@triton.jit
def to_float8(x, dtype: tl.constexpr):
    """float32 x in the float8 `dtype` (tl.float8e4nv or tl.float8e5), rounded to nearest
    even, as a GPU converts (Hopper: cvt.rn.satfinite)."""
    if INTERPRETING:
        # Triton's interpreter (3.9) converts float32 to float8 wrongly: ties round away from
        # zero, a round-up that carries into the exponent is lost (500 -> 256 in e4m3),
        # subnormals are truncated and values past the largest finite one become NaN. Under
        # the interpreter only, the bits are computed here in integer arithmetic instead.
        if dtype == tl.float8e4nv:
            bits = _float8_bits(x, 3, 7, 0x7E, 512)
        else:
            bits = _float8_bits(x, 2, 15, 0x7B, 65536)
        return bits.to(tl.uint8).to(dtype, bitcast=True)
    return x.to(dtype, fp_downcast_rounding="rtne")


@triton.jit
def pow2_ceil(x):
    """The smallest power of two >= positive finite float32 x, exactly: any nonzero mantissa
    bit carries into the exponent, then the mantissa is cleared."""
    bits = x.to(tl.int32, bitcast=True)
    return (((bits + 0x7FFFFF) >> 23) << 23).to(tl.float32, bitcast=True)


@triton.jit
def scale_from_amax(amax, FP8_MAX: tl.constexpr):
    """The recipe's scale of a group whose max |t| is amax: amax / FP8_MAX, 1 where that is 0.
    An IEEE division (div.rn), as PyTorch divides: Triton's `/` on a GPU is an approximate
    float32 division, which would not match the recipe's bits."""
    scale = tl.math.div_rn(amax, FP8_MAX)
    return tl.where(scale == 0.0, 1.0, scale)


@triton.jit
def quantize_groups_kernel(
    # pointers: t in (bfloat16, float16 or float32), q out (float8, M x K), scales out
    # (float32, M x ceil(K / group))
    t, q, scales,
    # sizes: t and q are M x K; every `group` columns of a row share one scale (group = K:
    # one scale per row); the last group of a row may be partial
    M, K, group,
    # strides
    stride_tm, stride_tk, stride_qm, stride_qk, stride_sm, stride_sg,
    # meta-parameters: FP8_MAX is q's largest finite value; POW2_SCALES rounds each scale up
    # to a power of two; a program quantizes BLOCK_M rows of one group, BLOCK_K columns at a
    # time, or with ONE_CHUNK (BLOCK_K >= group) the whole group at once
    FP8_MAX: tl.constexpr, POW2_SCALES: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, ONE_CHUNK: tl.constexpr,
):
    pid_g = tl.program_id(1).to(tl.int64)
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    first_col = pid_g * group
    end_col = tl.minimum(first_col + group, K)
    row_mask = rows < M

    if ONE_CHUNK:
        # the whole group in one chunk (BLOCK_K >= group): read once, kept in registers
        cols = first_col + tl.arange(0, BLOCK_K)
        mask = row_mask[:, None] & (cols[None, :] < end_col)
        x = tl.load(t + rows[:, None] * stride_tm + cols[None, :] * stride_tk, mask=mask,
                    other=0.0).to(tl.float32)
        scale = _group_scale(tl.max(tl.abs(x), axis=1), FP8_MAX, POW2_SCALES)
        tl.store(scales + rows * stride_sm + pid_g * stride_sg, scale, mask=row_mask)
        value = to_float8(tl.math.div_rn(x, scale[:, None]), q.dtype.element_ty)
        tl.store(q + rows[:, None] * stride_qm + cols[None, :] * stride_qk, value, mask=mask)
    else:
        amax = tl.zeros([BLOCK_M], dtype=tl.float32)
        for k in range(0, group, BLOCK_K):
            cols = first_col + k + tl.arange(0, BLOCK_K)
            mask = row_mask[:, None] & (cols[None, :] < end_col)
            x = tl.load(t + rows[:, None] * stride_tm + cols[None, :] * stride_tk, mask=mask,
                        other=0.0).to(tl.float32)
            amax = tl.maximum(amax, tl.max(tl.abs(x), axis=1))
        scale = _group_scale(amax, FP8_MAX, POW2_SCALES)
        tl.store(scales + rows * stride_sm + pid_g * stride_sg, scale, mask=row_mask)
        # a second pass reads the group again (from L2 where the rows in flight fit there)
        for k in range(0, group, BLOCK_K):
            cols = first_col + k + tl.arange(0, BLOCK_K)
            mask = row_mask[:, None] & (cols[None, :] < end_col)
            x = tl.load(t + rows[:, None] * stride_tm + cols[None, :] * stride_tk, mask=mask,
                        other=0.0).to(tl.float32)
            value = to_float8(tl.math.div_rn(x, scale[:, None]), q.dtype.element_ty)
            tl.store(q + rows[:, None] * stride_qm + cols[None, :] * stride_qk, value,
                     mask=mask)


@triton.jit
def _group_scale(amax, FP8_MAX: tl.constexpr, POW2_SCALES: tl.constexpr):
    scale = scale_from_amax(amax, FP8_MAX)
    if POW2_SCALES:
        scale = pow2_ceil(scale)
    return scale


@triton.jit
def row_column_amax_kernel(
    # t (M x N, bfloat16, float16 or float32); the float32 bits (int32) of max |t| of each
    # row, (M,), and of each column, (N,), both zero before the launch
    t, row_amax, column_amax,
    M, N, stride_tm, stride_tn,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (rows < M)[:, None] & (cols < N)[None, :]
    x = tl.abs(tl.load(t + rows[:, None] * stride_tm + cols[None, :] * stride_tn, mask=mask,
                       other=0.0).to(tl.float32))
    # the bits of non-negative float32 values order as their int32 values do: an integer
    # atomic maximum over the tiles is the exact float maximum, in any order
    tl.atomic_max(row_amax + rows, tl.max(x, axis=1).to(tl.int32, bitcast=True),
                  mask=rows < M)
    tl.atomic_max(column_amax + cols, tl.max(x, axis=0).to(tl.int32, bitcast=True),
                  mask=cols < N)


@triton.jit
def quantize_rows_columns_kernel(
    # t (M x N); the maxima of row_column_amax_kernel; q_rows (M x N) with row_scales (M,)
    # and q_columns, t^T quantized (N x M), with column_scales (N,); ROWS / COLUMNS say which
    # of the two are written (the other pointers are then unused)
    t, row_amax, column_amax, q_rows, row_scales, q_columns, column_scales,
    M, N, stride_tm, stride_tn, stride_qrm, stride_qcn,
    FP8_MAX: tl.constexpr, ROWS: tl.constexpr, COLUMNS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rows = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < M
    col_mask = cols < N
    mask = row_mask[:, None] & col_mask[None, :]
    x = tl.load(t + rows[:, None] * stride_tm + cols[None, :] * stride_tn, mask=mask,
                other=0.0).to(tl.float32)
    if ROWS:
        amax = tl.load(row_amax + rows, mask=row_mask, other=0).to(tl.float32, bitcast=True)
        scale = scale_from_amax(amax, FP8_MAX)
        if pid_n == 0:
            tl.store(row_scales + rows, scale, mask=row_mask)
        value = to_float8(tl.math.div_rn(x, scale[:, None]), q_rows.dtype.element_ty)
        tl.store(q_rows + rows[:, None] * stride_qrm + cols[None, :], value, mask=mask)
    if COLUMNS:
        amax = tl.load(column_amax + cols, mask=col_mask, other=0).to(tl.float32,
                                                                      bitcast=True)
        scale = scale_from_amax(amax, FP8_MAX)
        if pid_m == 0:
            tl.store(column_scales + cols, scale, mask=col_mask)
        value = to_float8(tl.math.div_rn(x, scale[None, :]), q_columns.dtype.element_ty)
        # stored transposed, as (N x M) rows: each column of t is a row of q_columns
        tl.store(q_columns + cols[:, None] * stride_qcn + rows[None, :], tl.trans(value),
                 mask=col_mask[:, None] & row_mask[None, :])
