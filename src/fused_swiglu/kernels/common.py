"""Math and tile helpers shared by every kernel."""

import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction


# The gate's activations (values of ACTIVATION)
SILU = 0  # SwiGLU
GELU_TANH = 1  # GeGLU, tanh approximation (gelu(z, approximate="tanh"))
GELU = 2  # GeGLU, exact: z * Phi(z)


@triton.jit
def silu(x):
    return x * tl.sigmoid(x)


@triton.jit
def activation(x, ACTIVATION: tl.constexpr):
    """act(x) of float32 x."""
    if ACTIVATION == 1:
        # 0.5 x (1 + tanh(s)) = x * sigmoid(2 s), s = sqrt(2 / pi) (x + 0.044715 x^3)
        out = x * tl.sigmoid(1.5957691216057308 * (x + 0.044715 * x * x * x))
    elif ACTIVATION == 2:
        out = 0.5 * x * (1.0 + tl.erf(x * 0.7071067811865476))
    else:
        out = silu(x)
    return out


@triton.jit
def activation_grad(x, ACTIVATION: tl.constexpr):
    """act'(x) of float32 x."""
    if ACTIVATION == 1:
        sig = tl.sigmoid(1.5957691216057308 * (x + 0.044715 * x * x * x))
        out = sig + x * sig * (1.0 - sig) * 1.5957691216057308 * (1.0 + 0.134145 * x * x)
    elif ACTIVATION == 2:
        # Phi(x) + x * phi(x)
        out = (0.5 * (1.0 + tl.erf(x * 0.7071067811865476))
               + x * tl.exp(-0.5 * x * x) * 0.3989422804014327)
    else:
        # d/dx [x * sigmoid(x)] = sigmoid(x) * (1 + x * (1 - sigmoid(x)))
        sig = tl.sigmoid(x)
        out = sig * (1.0 + x * (1.0 - sig))
    return out


# Triton decides when it decorates a kernel, that is when this package is imported, whether
# @triton.jit code runs under its interpreter (TRITON_INTERPRET=1 then). Every layer reads that
# decision from here, so that it cannot disagree with the kernels it launches.
RUNS_ON_INTERPRETER = isinstance(silu, InterpretedFunction)

# Two gaps of the interpreter with bfloat16, worked around under the interpreter only: its
# tl.dot multiplies the raw bits of bfloat16 operands (they are upcast first), and it converts
# float32 to bfloat16 by truncation where a GPU rounds to nearest (which would double every
# bfloat16 rounding error the CPU tests see).
INTERPRETING = tl.constexpr(RUNS_ON_INTERPRETER)


@triton.jit
def glu_grads(dy, gate, up, ACTIVATION: tl.constexpr):
    """(dg, du) of y = act(g) * u from float32 dy, g and u: dg = dy * u * act'(g) and
    du = dy * act(g)."""
    return dy * up * activation_grad(gate, ACTIVATION), dy * activation(gate, ACTIVATION)


@triton.jit
def rounded(x, dtype: tl.constexpr):
    """x in `dtype`, rounded to nearest even, as a GPU converts."""
    if INTERPRETING:
        if x.dtype == tl.float32 and dtype == tl.bfloat16:
            # round the float32 bits at bfloat16's last place; the truncation then keeps them
            bits = x.to(tl.uint32, bitcast=True)
            bits += 0x7FFF + ((bits >> 16) & 1)
            x = tl.where(x != x, x, bits.to(tl.float32, bitcast=True))  # NaN stays NaN
    return x.to(dtype)


@triton.jit
def mma(a, b, acc, ACC_DTYPE: tl.constexpr):
    """acc += a @ b, accumulating in ACC_DTYPE; float32 operands stay in full precision."""
    if INTERPRETING:
        if a.dtype == tl.bfloat16:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
    if a.dtype == tl.float32:
        return tl.dot(a, b, acc, input_precision="ieee", out_dtype=ACC_DTYPE)
    return tl.dot(a, b, acc, out_dtype=ACC_DTYPE)


@triton.jit
def grouped_tile(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """Map a flat program id to a (row, column) tile, GROUP_M row tiles at a time, so that
    programs running together share the same weight columns in L2."""
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    tiles_per_group = GROUP_M * tiles_n
    group = pid // tiles_per_group
    first_m = group * GROUP_M
    group_rows = min(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (pid % tiles_per_group) % group_rows
    pid_n = (pid % tiles_per_group) // group_rows
    return pid_m, pid_n


@triton.jit
def load_tile(src, row0, col0, n_rows, n_cols, stride_r, stride_c,
              BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
              USE_TMA: tl.constexpr, TRANSPOSED: tl.constexpr):
    """The [BLOCK_R, BLOCK_C] tile at (row0, col0) of a logical n_rows x n_cols matrix, zero
    outside it. With USE_TMA, `src` is a tensor descriptor of the matrix's storage: the matrix
    itself, or its transpose when TRANSPOSED. Otherwise `src` is a pointer and any strides work."""
    if USE_TMA:
        if TRANSPOSED:
            tile = src.load([col0, row0]).T
        else:
            tile = src.load([row0, col0])
    else:
        rows = (row0 + tl.arange(0, BLOCK_R)).to(tl.int64)
        cols = (col0 + tl.arange(0, BLOCK_C)).to(tl.int64)
        ptrs = src + rows[:, None] * stride_r + cols[None, :] * stride_c
        mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
        tile = tl.load(ptrs, mask=mask, other=0.0)
    return tile
