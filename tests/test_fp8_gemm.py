"""The float8 forward GEMM with the SwiGLU epilogue against its specification,
swiglu_fp8_reference: the same quantization (fused_swiglu.fp8.recipe), products in float64."""

import pytest
import torch
from conftest import DEVICE, ON_GPU
from fp8_checks import (accumulation_error, assert_rounded_once, exact, nan_output, quantized,
                        sample)

from fused_swiglu.fp8 import fp8_swiglu_forward, swiglu_fp8_reference
from fused_swiglu.fp8 import launch as fp8_launch

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
    monkeypatch.setattr(fp8_launch, "new_output", nan_output)


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
