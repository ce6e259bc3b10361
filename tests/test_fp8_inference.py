"""quantize_fp8: SwiGLUMLPs converted in place to float8 weights, forward only, computing what
SwiGLUMLP(fp8=True) computes."""

import copy

import pytest
import torch
from conftest import DEVICE
import fp8_checks

from fused_swiglu import SwiGLUMLP, quantize_fp8, swiglu_mlp
from fused_swiglu.activations import ACTIVATIONS
from fused_swiglu.fp8 import quantize_rowwise
from fused_swiglu.fp8.decode import DECODE_MAX_TOKENS
from fused_swiglu.fp8.inference import QuantizedSwiGLUMLP

pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")

# the kernels (outputs poisoned) and the plain-PyTorch path, as a fixture
path = fp8_checks.path


def model(packed=False, activation="silu", d_model=48, d_ff=40):
    torch.manual_seed(0)
    return torch.nn.Sequential(
        SwiGLUMLP(d_model, d_ff, packed=packed, activation=activation, device=DEVICE,
                  dtype=torch.bfloat16),
        torch.nn.LayerNorm(d_model, device=DEVICE, dtype=torch.bfloat16),
        SwiGLUMLP(d_model, d_ff, device=DEVICE, dtype=torch.bfloat16))


@pytest.mark.parametrize("packed, activation, d_model",
                         [(False, "silu", 48), (True, "gelu_tanh", 48), (False, "silu", 40)],
                         ids=["separate", "packed gelu_tanh", "d_model 40"])
def test_matches_fp8_training_forward(packed, activation, d_model):
    # the same quantization of the same weights: the same kernels, the same output
    original = model(packed, activation, d_model)
    quantized = quantize_fp8(copy.deepcopy(original))
    assert all(isinstance(quantized[i], QuantizedSwiGLUMLP) for i in (0, 2))
    # more tokens than a decode step: the prefill, float8 products as in training
    x = torch.randn(3, 13, d_model, device=DEVICE, dtype=torch.bfloat16)
    assert 3 * 13 > DECODE_MAX_TOKENS
    with torch.no_grad():
        first = swiglu_mlp(x, *original[0].projection_weights(), activation=activation,
                           fp8=True)
        want = swiglu_mlp(original[1](first), *original[2].projection_weights(), fp8=True)
        got = quantized(x)
        assert torch.equal(quantized[0](x), first)
    assert torch.equal(got, want)
    assert got.dtype == torch.bfloat16 and got.shape == x.shape


def test_state_dict_is_float8_and_loads_into_a_quantized_model():
    original = model(d_model=256, d_ff=512)
    size = sum(t.numel() * t.element_size() for t in original.state_dict().values())
    quantized = quantize_fp8(copy.deepcopy(original))
    state = quantized.state_dict()
    assert sum(t.numel() * t.element_size() for t in state.values()) <= 0.6 * size
    assert state["0.gate_up_weight"].dtype == torch.float8_e4m3fn
    fresh = quantize_fp8(model(d_model=256, d_ff=512))
    fresh.load_state_dict(state)
    x = torch.randn(5, 256, device=DEVICE, dtype=torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(fresh(x), quantized(x))


def test_forward_only_and_checked():
    quantized = quantize_fp8(model())
    x = torch.randn(4, 48, device=DEVICE, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="inference, without gradients"):
        quantized(x.requires_grad_())
    with pytest.raises(ValueError, match=r"expected x of shape \(\.\.\., 48\) in torch.bfloat16"):
        quantized[0](torch.randn(4, 48, device=DEVICE))
    with pytest.raises(TypeError, match="torch.nn.Module"):
        quantize_fp8(torch.zeros(3))
    mixed = torch.nn.Sequential(SwiGLUMLP(48, 40, dtype=torch.bfloat16), SwiGLUMLP(48, 40))
    with pytest.raises(TypeError, match="bfloat16 or float16, got torch.float32"):
        quantize_fp8(mixed)
    assert type(mixed[0]) is SwiGLUMLP  # checked before anything changed
    assert "float8 weights" in repr(quantized[0])
    assert quantize_fp8(quantized) is quantized  # nothing left to convert


def weight_only_reference(mlp, x):
    """float64 products of x, in its own precision, with the module's dequantized float8
    weights; y rounded to x's dtype between the projections, as the kernels store it."""
    def dequantized(weight, scales):
        return weight.double() * scales.double()
    gate_up = dequantized(mlp.gate_up_weight, mlp.gate_up_scales)
    x2 = x.reshape(-1, x.shape[-1]).double()
    y = ACTIVATIONS[mlp.activation](x2 @ gate_up[0].t()) * (x2 @ gate_up[1].t())
    out = y.to(x.dtype).double() @ dequantized(mlp.down_weight, mlp.down_scales).t()
    return out.reshape(*x.shape[:-1], -1)


@pytest.mark.parametrize("tokens", [1, 5, 17, DECODE_MAX_TOKENS])
@pytest.mark.parametrize("dtype, activation, d_model, d_ff",
                         [(torch.bfloat16, "silu", 48, 40), (torch.float16, "gelu_tanh", 40, 72),
                          (torch.bfloat16, "gelu", 300, 136)],
                         ids=["bf16 silu", "fp16 gelu_tanh ragged", "bf16 gelu long K"])
def test_decode_step_keeps_activations_in_16_bits(path, tokens, dtype, activation, d_model,
                                                 d_ff):
    # up to DECODE_MAX_TOKENS tokens only the weights are float8: the output is the float64
    # product of the unquantized x with the dequantized weights, up to float32 sums and the
    # output's rounding
    torch.manual_seed(tokens)
    mlp = quantize_fp8(SwiGLUMLP(d_model, d_ff, activation=activation, device=DEVICE,
                                 dtype=dtype))
    # columns of very different sizes, which quantizing x per token would blur
    x = torch.randn(tokens, d_model) * 2.0 ** torch.randint(-6, 7, (d_model,))
    x = x.to(device=DEVICE, dtype=dtype)
    with torch.no_grad():
        got = mlp(x)
    want = weight_only_reference(mlp, x)
    assert got.dtype == dtype and got.shape == want.shape and torch.isfinite(got).all()
    assert within_decode_tolerance(got, want).all()
    # x quantized per token, as a prefill does, would be outside that tolerance
    x_q, x_scales = quantize_rowwise(x)
    quantized_x = (x_q.double() * x_scales.double()).to(dtype)
    assert not within_decode_tolerance(weight_only_reference(mlp, quantized_x), want).all()


def within_decode_tolerance(got, want):
    """Which elements of got are within float32 sums and one 16-bit rounding of the float64
    result (with a floor at the output's scale, for results that cancel)."""
    return ((got.double() - want).abs()
            <= 2.0 ** -7 * want.abs() + 2.0 ** -12 * want.abs().max())


def test_decode_step_takes_leading_dims_and_strided_inputs(path):
    mlp = quantize_fp8(SwiGLUMLP(48, 40, device=DEVICE, dtype=torch.bfloat16))
    x = torch.randn(2, 3, 96, device=DEVICE, dtype=torch.bfloat16)[..., ::2]
    with torch.no_grad():
        got = mlp(x)
    want = weight_only_reference(mlp, x.contiguous())
    assert got.shape == (2, 3, 48)
    assert within_decode_tolerance(got, want).all()
    with torch.no_grad():
        assert mlp(x[:, :0]).shape == (2, 0, 48)


def test_weight_only_product_crosses_token_tiles(path):
    # weight_only_matmul itself takes any token count: 70 tokens make three 32-token tiles
    from fused_swiglu.fp8.decode import weight_only_matmul
    mlp = quantize_fp8(SwiGLUMLP(48, 40, device=DEVICE, dtype=torch.bfloat16))
    y = torch.randn(70, 40, device=DEVICE, dtype=torch.bfloat16)
    got = weight_only_matmul(y, mlp.down_weight[None], mlp.down_scales[None], gated=False)
    want = y.double() @ (mlp.down_weight.double() * mlp.down_scales.double()).t()
    assert within_decode_tolerance(got, want).all()
