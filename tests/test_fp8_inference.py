"""quantize_fp8: SwiGLUMLPs converted in place to float8 weights, forward only, computing what
SwiGLUMLP(fp8=True) computes."""

import copy

import pytest
import torch
from conftest import DEVICE

from fused_swiglu import SwiGLUMLP, quantize_fp8, swiglu_mlp
from fused_swiglu.fp8.inference import QuantizedSwiGLUMLP

pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")


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
    x = torch.randn(3, 7, d_model, device=DEVICE, dtype=torch.bfloat16)
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
