"""The float8 stacked forward (tensor descriptors, rowwise scales) against its specification,
swiglu_fp8_reference(granularity="rowwise"), and its launcher's checks."""

import pytest
import torch
from conftest import DEVICE, ON_GPU
from fp8_checks import (accumulation_error, assert_rounded_once, exact,
                        fast_accumulation_norm_error, nan_output, quantized, sample)

from fused_swiglu.fp8 import launch as fp8_launch
from fused_swiglu.fp8 import quantize_rowwise, stacked, swiglu_fp8_reference
from fused_swiglu.fp8.stacked import fp8_stacked_swiglu_forward, stack_weights_fp8

pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")

# (M, K, N): K a multiple of 16 (descriptors' 16-byte rows), neither K nor N a multiple of the
# tiles (the interpreter's 32; the GPU's 128), a single token
SHAPES = [(37, 80, 40), (1, 48, 8), (130, 96, 72)]
if ON_GPU:
    SHAPES += [(1000, 4096, 1544), (4096, 7168, 2048)]


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    """The kernel's outputs start as NaN, so that an element it does not write shows up."""
    monkeypatch.setattr(fp8_launch, "new_output", nan_output)


def stacked_operands(x, w_gate, w_up):
    """x quantized per token, both weights (swiglu's (K, N)) into the stacked buffer."""
    x_q, x_scales = quantized(x, w_gate, w_up, "rowwise")[:2]
    return (x_q, x_scales, *stack_weights_fp8(w_gate.t(), w_up.t()))


def accumulation(x, w_gate, w_up, activation):
    """(per-element bounds, norm-wise errors) of y, g and u from the kernel's accumulation: fast
    on a GPU unless stacked.PRECISE_ACCUMULATION (fp8_checks)."""
    if stacked.PRECISE_ACCUMULATION:
        bounds = accumulation_error(x, w_gate, w_up, "rowwise", activation)
        return bounds, bounds
    return (accumulation_error(x, w_gate, w_up, "rowwise", activation, fast=True),
            fast_accumulation_norm_error(x, w_gate, w_up, activation))


def test_stacked_weights_are_each_weights_rowwise_quantization():
    _, w_gate, w_up = sample(4, 48, 40)
    w_q, w_scales = stack_weights_fp8(w_gate.t(), w_up.t())
    assert w_q.shape == (2, 40, 48) and w_scales.shape == (2, 40, 1) and w_q.is_contiguous()
    for i, w in enumerate((w_gate, w_up)):
        q, scales = quantize_rowwise(w.t())
        assert torch.equal(w_q[i].view(torch.uint8), q.view(torch.uint8))
        assert torch.equal(w_scales[i], scales)


@pytest.mark.parametrize("activation", ["silu", "gelu_tanh", "gelu"])
@pytest.mark.parametrize("shape", SHAPES, ids=["x".join(map(str, s)) for s in SHAPES])
def test_matches_reference(shape, activation):
    x, w_gate, w_up = sample(*shape)
    y, gate, up = fp8_stacked_swiglu_forward(*stacked_operands(x, w_gate, w_up),
                                             activation=activation, store_preact=True)
    wanted = exact(x, w_gate, w_up, "rowwise", activation)
    errors, typical = accumulation(x, w_gate, w_up, activation)
    for got, want, error, norm_error in zip((y, gate, up), wanted, errors, typical):
        assert_rounded_once(got, want, torch.bfloat16, error, norm_error)
    reference = swiglu_fp8_reference(x, w_gate, w_up, granularity="rowwise",
                                     activation=activation).double()
    # y is the reference's up to one ulp (see test_fp8_gemm.test_matches_reference)
    slack = 2.0 ** -14 * reference.abs().max() + 2 * errors[0]
    assert torch.all((y.double() - reference).abs() <= 2.0 ** -7 * reference.abs() + slack)


def test_float16_output_and_y_alone():
    x, w_gate, w_up = sample(37, 80, 40, torch.float16, bits=1)
    operands = stacked_operands(x, w_gate, w_up)
    y, _, _ = fp8_stacked_swiglu_forward(*operands, out_dtype=torch.float16, store_preact=True)
    (error, *_), (norm_error, *_) = accumulation(x, w_gate, w_up, "silu")
    assert_rounded_once(y, exact(x, w_gate, w_up, "rowwise", "silu")[0], torch.float16, error,
                        norm_error)
    assert torch.equal(fp8_stacked_swiglu_forward(*operands, out_dtype=torch.float16), y)


def test_empty_sizes():
    x, w_gate, w_up = sample(3, 32, 8)
    x_q, x_scales, w_q, w_scales = stacked_operands(x, w_gate, w_up)
    y, gate, up = fp8_stacked_swiglu_forward(x_q[:0], x_scales[:0], w_q, w_scales,
                                             store_preact=True)
    assert y.shape == gate.shape == up.shape == (0, 8)
    # K = 0: no products, so g = u = y = 0
    empty_w = torch.zeros(2, 8, 0, device=DEVICE).to(torch.float8_e4m3fn)
    y, gate, up = fp8_stacked_swiglu_forward(x_q[:, :0], x_scales, empty_w, w_scales,
                                             store_preact=True)
    for t in (y, gate, up):
        assert t.shape == (3, 8) and torch.equal(t, torch.zeros_like(t))


def test_launcher_errors():
    x, w_gate, w_up = sample(5, 48, 40)
    x_q, x_scales, w_q, w_scales = stacked_operands(x, w_gate, w_up)
    with pytest.raises(TypeError, match="x_q must be a 2-D torch.float8_e4m3fn"):
        fp8_stacked_swiglu_forward(x, x_scales, w_q, w_scales)
    with pytest.raises(ValueError, match=r"w_q must be .* \(2, N, 48\)"):
        fp8_stacked_swiglu_forward(x_q, x_scales, w_q[:, :, :32], w_scales)
    with pytest.raises(ValueError, match=r"x_scales has shape \(5,\), expected \(5, 1\)"):
        fp8_stacked_swiglu_forward(x_q, x_scales[:, 0], w_q, w_scales)
    with pytest.raises(TypeError, match="out_dtype"):
        fp8_stacked_swiglu_forward(x_q, x_scales, w_q, w_scales, out_dtype=torch.float32)
    with pytest.raises(ValueError, match="unknown activation"):
        fp8_stacked_swiglu_forward(x_q, x_scales, w_q, w_scales, activation="relu")
    # K = 40: rows of 40 bytes, which tensor descriptors cannot take
    x_q, x_scales, w_q, w_scales = stacked_operands(*sample(5, 40, 40))
    with pytest.raises(ValueError, match="multiple of 16 bytes.*K = 40.*fp8_swiglu_forward"):
        fp8_stacked_swiglu_forward(x_q, x_scales, w_q, w_scales)
    with pytest.raises(ValueError, match="must be \\(N, K\\) matrices of one shape"):
        stack_weights_fp8(w_gate.t(), w_up.t()[:3])
