"""The float8 forward GEMM with the SwiGLU epilogue against its specification,
swiglu_fp8_reference: the same quantization (fused_swiglu.fp8.recipe), products in float64."""

import pytest
import torch
from conftest import DEVICE, ON_GPU

from fused_swiglu.activations import ACTIVATIONS
from fused_swiglu.fp8 import launch as fp8_launch
from fused_swiglu.fp8 import (fp8_swiglu_forward, quantize_blockwise, quantize_rowwise,
                              swiglu_fp8_reference)
from fused_swiglu.fp8.reference import fp8_operand

# the interpreter's sigmoid takes numpy's exp(-g), which overflows to inf for gates below about
# -88 (sigmoid 0 then, as on a GPU); the spread-out samples reach such gates
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")

GRANULARITIES = ["rowwise", "blockwise"]
# (M, K, N) = (tokens, d_model, d_ff), per granularity: ragged sizes (K = 200: a partial last
# 1 x 128 group and weight block along K; N = 160: a partial last 128-row weight block), and a
# single token
SHAPES = {"rowwise": [(37, 200, 80), (1, 130, 40)],
          "blockwise": [(37, 200, 160), (1, 130, 40)]}
if ON_GPU:
    for shapes in SHAPES.values():
        shapes += [(1000, 4096, 1536), (4096, 7168, 2048)]
CASES = [(granularity, shape) for granularity in GRANULARITIES for shape in SHAPES[granularity]]


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    """The kernel's outputs start as NaN, so that an element it does not write shows up."""
    def poisoned(shape, dtype, like):
        return torch.full(shape, float("nan"), dtype=dtype, device=like.device)

    monkeypatch.setattr(fp8_launch, "new_output", poisoned)


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
# (DeepSeek-V3's report, section 3.3.2, measured on H800) before the kernel promotes its partial
# sum to float32 every 128 products (max_num_imprecise_acc): each element of g and u is then
# off by up to about 2**-13 of its sum of |products|. The interpreter adds in float32 (its
# error is within assert_rounded_once's absolute term).
ACCUMULATION_EPS = 2.0 ** -13 if ON_GPU else 0.0
# |act'(g)| <= 1.13 for silu, gelu and gelu_tanh (gelu's maximum, at g = 1.41 * sqrt(2))
ACT_SLOPE_MAX = 1.2


def accumulation_error(x, w_gate, w_up, granularity, activation):
    """(y, g, u): per element, how far the GPU's accumulation may move each from exact()."""
    a = fp8_operand(x, granularity, False).double().abs()
    g_err, u_err = (ACCUMULATION_EPS * (a @ fp8_operand(w.t(), granularity, True).double().abs().t())
                    for w in (w_gate, w_up))
    _, gate, up = exact(x, w_gate, w_up, granularity, activation)
    y_err = ACT_SLOPE_MAX * up.abs() * g_err + ACTIVATIONS[activation](gate).abs() * u_err
    return y_err, g_err, u_err


def relative_error(got, want):
    return ((got.double() - want).norm() / want.norm()).item()


def assert_rounded_once(got, want, dtype, accumulation=0.0):
    """`got` is `want` (float64) rounded to `dtype`, up to the rare element whose float32
    accumulation lands it on the other side of a rounding boundary.

    Rounding to nearest moves an element by at most half an ulp: a relative 2**-8 for
    bfloat16 (8 significant bits), 2**-11 for float16. The kernel's float32 sums differ from
    the float64 ones by about 2**-24 relatively (measured 1e-7 on these shapes), so norm-wise
    its error is the rounding's own: measured equal to that of want.to(dtype) to 12 digits, in
    every case here (0.0016, about 2**-9.3, for bfloat16). 1.25x that, and 2**-8 per element
    (2**-11 for float16, with an absolute 2**-14 of the largest element for sums that cancel
    to near zero), leave room for the GPU's summation order and nothing for a wrong scale.
    `accumulation` (accumulation_error) is how far the GPU's float8 sums may move `want` before
    the rounding."""
    assert got.dtype == dtype and got.shape == want.shape
    assert not got.isnan().any()
    half_ulp = 2.0 ** -8 if dtype == torch.bfloat16 else 2.0 ** -11
    bound = (half_ulp * (want.abs() + accumulation) + accumulation
             + 2.0 ** -14 * want.abs().max())
    assert torch.all((got.double() - want).abs() <= bound)
    accumulated = (torch.as_tensor(accumulation, dtype=torch.float64).expand_as(want).norm()
                   / want.norm()).item()
    assert relative_error(got, want) <= 1.25 * relative_error(want.to(dtype), want) + accumulated


@pytest.mark.parametrize("activation", ["silu", "gelu_tanh", "gelu"])
@pytest.mark.parametrize("granularity, shape", CASES, ids=[f"{g}-{'x'.join(map(str, s))}"
                                                         for g, s in CASES])
def test_matches_reference(granularity, shape, activation):
    x, w_gate, w_up = sample(*shape)
    y, gate, up = fp8_swiglu_forward(*quantized(x, w_gate, w_up, granularity),
                                     granularity=granularity, activation=activation,
                                     store_preact=True)
    y_exact, gate_exact, up_exact = exact(x, w_gate, w_up, granularity, activation)
    reference = swiglu_fp8_reference(x, w_gate, w_up, granularity=granularity,
                                     activation=activation)
    assert torch.equal(y_exact.to(torch.bfloat16), reference)  # exact() is the reference's
    errors = accumulation_error(x, w_gate, w_up, granularity, activation)
    for got, want, error in zip((y, gate, up), (y_exact, gate_exact, up_exact), errors):
        assert_rounded_once(got, want, torch.bfloat16, error)
    # so y is the reference's y, up to one ulp in rare elements (measured: 0 or 1 in 6000 away
    # from the activations' far negative tails, where act(g) is below 1e-17 and the kernel's
    # x * sigmoid(.) keeps digits that PyTorch's gelu(tanh) form loses to 1 + tanh(.) = 0)
    slack = 2.0 ** -14 * reference.double().abs().max() + 2 * errors[0]
    assert torch.all((y.double() - reference.double()).abs()
                     <= 2.0 ** -7 * reference.double().abs() + slack)


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_float16_output(granularity):
    x, w_gate, w_up = sample(37, 200, 160, torch.float16, bits=1)
    operands = quantized(x, w_gate, w_up, granularity)
    y = fp8_swiglu_forward(*operands, granularity=granularity, out_dtype=torch.float16)
    assert_rounded_once(y, exact(x, w_gate, w_up, granularity, "silu")[0], torch.float16,
                        accumulation_error(x, w_gate, w_up, granularity, "silu")[0])


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_store_preact_off_and_strided_x(granularity):
    """y alone is the same y; x_q column-major or a column slice of a wider tensor (any strides
    of A) gives it bit for bit."""
    x, w_gate, w_up = sample(37, 200, 160)
    x_q, *rest = quantized(x, w_gate, w_up, granularity)
    y, _, _ = fp8_swiglu_forward(x_q, *rest, granularity=granularity, store_preact=True)
    wide = torch.zeros(37, 260, dtype=torch.uint8, device=DEVICE).view(x_q.dtype)
    wide[:, 3:203] = x_q
    for view in (x_q.t().contiguous().t(), wide[:, 3:203]):
        assert not view.is_contiguous()
        assert torch.equal(fp8_swiglu_forward(view, *rest, granularity=granularity), y)


def test_empty_input():
    x, w_gate, w_up = sample(1, 200, 80)
    x_q, x_scales, *rest = quantized(x, w_gate, w_up, "rowwise")
    y, gate, up = fp8_swiglu_forward(x_q[:0], x_scales[:0], *rest, granularity="rowwise",
                                     store_preact=True)
    assert y.shape == gate.shape == up.shape == (0, 80)


def test_launcher_errors():
    x, w_gate, w_up = sample(37, 200, 160)
    rowwise = quantized(x, w_gate, w_up, "rowwise")
    blockwise = quantized(x, w_gate, w_up, "blockwise")

    def call(operands, granularity="rowwise", **options):
        return fp8_swiglu_forward(*operands, granularity=granularity, **options)

    with pytest.raises(ValueError, match=r"x_scales has shape \(37, 2\), expected \(37, 1\)"):
        call(blockwise[:2] + rowwise[2:])
    with pytest.raises(ValueError, match=r"wg_scales has shape \(160, 1\), expected \(2, 2\)"):
        call(blockwise[:2] + rowwise[2:4] + blockwise[4:], "blockwise")
    with pytest.raises(ValueError, match="wu_scales"):
        call(blockwise[:5] + [blockwise[1]], "blockwise")
    with pytest.raises(TypeError, match="float32"):
        call(rowwise[:1] + [rowwise[1].double()] + rowwise[2:])
    with pytest.raises(TypeError, match="x_q must be torch.float8_e4m3fn"):
        call([x] + rowwise[1:])
    with pytest.raises(ValueError, match="wg_q has shape"):
        call(rowwise[:2] + [rowwise[2][:, :199]] + rowwise[3:])
    with pytest.raises(ValueError, match="contiguous along K"):
        call(rowwise[:4] + [rowwise[4].t().contiguous().t()] + rowwise[5:])
    with pytest.raises(ValueError, match="2-D"):
        call([rowwise[0][0]] + rowwise[1:])
    with pytest.raises(ValueError, match="granularity"):
        call(rowwise, "tensorwise")
    with pytest.raises(TypeError, match="out_dtype"):
        call(rowwise, out_dtype=torch.float32)
    with pytest.raises(TypeError, match="store_preact"):
        call(rowwise, store_preact=1)
    with pytest.raises(ValueError, match="activation"):
        call(rowwise, activation="relu")
