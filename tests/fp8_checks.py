"""Helpers of the float8 GEMM tests: samples whose scales matter, the operands quantized as
the reference quantizes them, the exact float64 result and the bound of a result rounded once."""

import pytest
import torch
from conftest import DEVICE, ON_GPU

from fused_swiglu import tuning
from fused_swiglu.activations import ACTIVATIONS
from fused_swiglu.fp8 import launch as fp8_launch
from fused_swiglu.fp8 import quantize_blockwise, quantize_rowwise
from fused_swiglu.fp8.reference import fp8_operand


def nan_output(shape, dtype, like):
    """fp8.launch.new_output's stand-in: outputs that start as NaN, so that an element a kernel
    does not write shows up."""
    return torch.full(shape, float("nan"), dtype=dtype, device=like.device)


@pytest.fixture(params=["kernels", "pytorch"] if not ON_GPU else ["kernels"])
def path(request, monkeypatch):
    """"kernels": the Triton kernels (the interpreter on a CPU), their outputs poisoned;
    "pytorch": the plain-PyTorch path that CPU tensors take without the interpreter."""
    if request.param == "pytorch":
        monkeypatch.setattr(tuning, "interpreting", lambda: False)

        def no_kernels(*args, **kwargs):
            raise AssertionError("a kernel ran on the plain-PyTorch path")
        monkeypatch.setattr(fp8_launch, "new_output", no_kernels)
    else:
        monkeypatch.setattr(fp8_launch, "new_output", nan_output)
    return request.param


def sample(M, K, N, dtype=torch.bfloat16, bits=3):
    """x (M, K) and the weights (K, N) in swiglu's convention, with magnitudes that vary by
    powers of two up to 2**bits between 128-column groups of x, and up to 2**(bits - 1) between
    columns and 2 between 128 x 128 blocks of the weights, so that a scale applied in the wrong
    place is off by far more than rounding (without reaching the activations' or float16's
    overflow)."""
    def spread(rows, cols, row_group, col_group, bits):
        steps = 2.0 ** torch.randint(-bits, bits + 1, (-(-rows // row_group),
                                                       -(-cols // col_group)))
        return steps.repeat_interleave(row_group, 0).repeat_interleave(col_group, 1)[:rows, :cols]

    x = torch.randn(M, K) * spread(M, K, 1, 128, bits)
    weights = [torch.randn(K, N) / K ** 0.5 * spread(K, N, K, 1, bits - 1)
               * spread(K, N, 128, 128, 1) for _ in range(2)]
    return [t.to(dtype).to(DEVICE) for t in (x, *weights)]


def quantized(x, w_gate, w_up, granularity):
    """The kernel's operands, quantized as swiglu_fp8_reference quantizes them: x per token or
    in 1 x 128 groups, each weight in nn.Linear's (d_ff, d_model) storage per output channel
    or in 128 x 128 blocks."""
    if granularity == "rowwise":
        return [part for t in (x, w_gate.t(), w_up.t()) for part in quantize_rowwise(t)]
    return [*quantize_blockwise(x, (1, 128)), *quantize_blockwise(w_gate.t(), (128, 128)),
            *quantize_blockwise(w_up.t(), (128, 128))]


def exact(x, w_gate, w_up, granularity, activation):
    """(y, g, u) of the dequantized operands in float64, unrounded: swiglu_fp8_reference's
    values before it rounds y."""
    a = fp8_operand(x, granularity, False).double()
    gate = a @ fp8_operand(w_gate.t(), granularity, True).double().t()
    up = a @ fp8_operand(w_up.t(), granularity, True).double().t()
    return ACTIVATIONS[activation](gate) * up, gate, up


# Hopper's float8 tensor cores add the products of one MMA with about 14 significant bits
# (DeepSeek-V3's report, section 3.3.2, measured on H800) before a kernel that promotes its
# partial sum to float32 every 128 products (max_num_imprecise_acc) adds it: each element of g
# and u is then off by up to about 2**-13 of its sum of |products|. The interpreter adds in
# float32 (its error is within assert_rounded_once's absolute term).
ACCUMULATION_EPS = 2.0 ** -13 if ON_GPU else 0.0
# With fast accumulation (fused_swiglu.fp8.stacked.PRECISE_ACCUMULATION False) the tensor cores'
# accumulator runs over all of K. Measured on an H200 (v15; sample()'s operands, 1024 x 1024
# outputs, K from 256 to 28672, float16 outputs): every element of g within 1.3e-3 of its sum
# of |products| (its float16 rounding included), at every K; norm-wise g off by 2.6-2.8e-5 *
# sqrt(K) of its norm. The bounds below are 1.5x and 2.2x those.
FAST_ACCUMULATION_EPS = 2.0 ** -9 if ON_GPU else 0.0
FAST_ACCUMULATION_NORM_EPS = 2.0 ** -14 if ON_GPU else 0.0
# |act'(g)| <= 1.13 for silu, gelu and gelu_tanh (gelu's maximum, at g = 1.41 * sqrt(2))
ACT_SLOPE_MAX = 1.2


def accumulation_error(x, w_gate, w_up, granularity, activation, fast=False):
    """(y, g, u): per element, how far the GPU's accumulation may move each from exact(); with
    `fast`, for a kernel that accumulates without promotion (FAST_ACCUMULATION_EPS)."""
    eps = FAST_ACCUMULATION_EPS if fast else ACCUMULATION_EPS
    a = fp8_operand(x, granularity, False).double().abs()
    g_err, u_err = (eps * (a @ fp8_operand(w.t(), granularity, True).double().abs().t())
                    for w in (w_gate, w_up))
    _, gate, up = exact(x, w_gate, w_up, granularity, activation)
    return _through_activation(gate, up, g_err, u_err, activation), g_err, u_err


def fast_accumulation_norm_error(x, w_gate, w_up, activation):
    """(y, g, u): per element, how far fast accumulation moves each from exact() norm-wise
    (FAST_ACCUMULATION_NORM_EPS), for assert_rounded_once's `typical`."""
    _, gate, up = exact(x, w_gate, w_up, "rowwise", activation)
    scale = FAST_ACCUMULATION_NORM_EPS * x.shape[1] ** 0.5
    g_err, u_err = scale * gate.abs(), scale * up.abs()
    return _through_activation(gate, up, g_err, u_err, activation), g_err, u_err


def _through_activation(gate, up, g_err, u_err, activation):
    """How far errors g_err and u_err in g and u move y = act(g) * u."""
    return ACT_SLOPE_MAX * up.abs() * g_err + ACTIVATIONS[activation](gate).abs() * u_err


def relative_error(got, want):
    return ((got.double() - want).norm() / want.norm()).item()


def assert_rounded_once(got, want, dtype, accumulation=0.0, typical=None):
    """`got` is `want` (float64) rounded to `dtype`, up to the rare element whose float32
    accumulation lands it on the other side of a rounding boundary.

    Rounding to nearest moves an element by at most half an ulp: a relative 2**-8 for
    bfloat16 (8 significant bits), 2**-11 for float16. The kernel's float32 sums differ from
    the float64 ones by about 2**-24 relatively (measured 1e-7 on these shapes), so norm-wise
    its error is the rounding's own: measured equal to that of want.to(dtype) to 12 digits, in
    every case here (0.0016, about 2**-9.3, for bfloat16). 1.25x that, and 2**-8 per element
    (2**-11 for float16, with an absolute 2**-14 of the largest element for sums that cancel
    to near zero), leave room for the GPU's summation order and nothing for a wrong scale.
    `accumulation` (accumulation_error) is how far the GPU's float8 sums may move each element
    of `want` before the rounding; `typical` (default: `accumulation`) how far they move it
    norm-wise."""
    assert got.dtype == dtype and got.shape == want.shape
    assert not got.isnan().any()
    half_ulp = 2.0 ** -8 if dtype == torch.bfloat16 else 2.0 ** -11
    bound = (half_ulp * (want.abs() + accumulation) + accumulation
             + 2.0 ** -14 * want.abs().max())
    assert torch.all((got.double() - want).abs() <= bound)
    typical = accumulation if typical is None else typical
    accumulated = (torch.as_tensor(typical, dtype=torch.float64).expand_as(want).norm()
                   / want.norm()).item()
    assert relative_error(got, want) <= 1.25 * relative_error(want.to(dtype), want) + accumulated
