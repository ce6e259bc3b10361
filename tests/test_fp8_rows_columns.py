"""The two-way float8 quantizer (fused_swiglu.fp8.rows_columns): a matrix and its transpose
quantized rowwise from two reads, bit for bit what quantize_groups gives for each."""

import pytest
import torch
from conftest import DEVICE, ON_GPU
import test_fp8_quantize
from test_fp8_quantize import assert_same_quantization, sample

from fused_swiglu.fp8 import quantize_groups
from fused_swiglu.fp8.rows_columns import quantize_rows_and_columns

# the outputs start as NaN, as for quantize_groups
poisoned_outputs = test_fp8_quantize.poisoned_outputs

# (M, N): one row, one column, ragged sizes across several tiles of the interpreter's 16 x 16
SHAPES = [(1, 5), (70, 1), (37, 40), (33, 100)]
if ON_GPU:
    SHAPES += [(4096, 5632), (1000, 14336 + 72)]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_both_ways_match_quantize_groups(shape, dtype):
    t = sample(shape, dtype)
    t[0, -1] = 3e4  # a huge value: its row's and its column's scales, no one else's
    if shape[0] > 3:
        t[3] = 0  # an all-zero row: scale 1
    by_rows, by_columns = quantize_rows_and_columns(t)
    assert_same_quantization(by_rows, quantize_groups(t, None))
    assert_same_quantization(by_columns, quantize_groups(t.t(), None))


@pytest.mark.parametrize("view", ["transposed", "sliced"])
def test_strided_input(view):
    base = sample((48, 90), torch.bfloat16)
    t = base.t() if view == "transposed" else base[5:40:2, 3:77]
    by_rows, by_columns = quantize_rows_and_columns(t)
    assert_same_quantization(by_rows, quantize_groups(t, None))
    assert_same_quantization(by_columns, quantize_groups(t.t(), None))


def test_one_way_alone():
    t = sample((37, 40), torch.bfloat16)
    by_rows, by_columns = quantize_rows_and_columns(t, rows=True, columns=False)
    assert by_columns is None
    assert_same_quantization(by_rows, quantize_groups(t, None))
    by_rows, by_columns = quantize_rows_and_columns(t, rows=False, columns=True)
    assert by_rows is None
    assert_same_quantization(by_columns, quantize_groups(t.t(), None))


@pytest.mark.parametrize("shape", [(0, 7), (7, 0)], ids=str)
def test_empty_input(shape):
    (q, scales), (q_t, scales_t) = quantize_rows_and_columns(torch.zeros(shape, device=DEVICE,
                                                                         dtype=torch.bfloat16))
    assert q.shape == shape and q_t.shape == shape[::-1]
    assert torch.equal(scales, torch.ones(shape[0], 1, device=DEVICE))
    assert torch.equal(scales_t, torch.ones(shape[1], 1, device=DEVICE))


def test_errors():
    t = sample((4, 8), torch.bfloat16)
    with pytest.raises(TypeError, match="columns must be True or False"):
        quantize_rows_and_columns(t, columns="yes")
    with pytest.raises(TypeError, match="dtype torch.float64 is not supported"):
        quantize_rows_and_columns(t.double())
    with pytest.raises(ValueError, match="2-D"):
        quantize_rows_and_columns(t[None])


@pytest.mark.parametrize("activation", ["silu", "gelu_tanh"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_maxima_recorded_by_the_gate_gradient_pass(shape, activation):
    # the 16-bit backward's pass records dg's, du's and y's maxima as it writes them: the
    # quantization from those is the one from the maxima's own pass, bit for bit
    from fused_swiglu import launch
    m, n = shape
    gate, up, dy = (sample(shape, torch.bfloat16) for _ in range(3))
    if m > 3:
        dy[3] = 0  # all-zero rows of dg and du: scale 1
    dy[0, -1] = 3e4
    product = torch.full_like(gate, float("nan"))
    maxima = torch.zeros(3, m + n, dtype=torch.int32, device=DEVICE).unbind()
    d_gate, d_up = launch.swiglu_grads_from_preact(dy, gate, up, product=product,
                                                   activation=activation, maxima=maxima)
    for t, t_maxima in zip((d_gate, d_up, product), maxima):
        recorded = quantize_rows_and_columns(t, maxima=t_maxima.clone())
        for got, want in zip(recorded, quantize_rows_and_columns(t)):
            assert_same_quantization(got, want)


def test_maxima_of_the_wrong_shape_are_refused():
    t = sample((6, 5), torch.bfloat16)
    with pytest.raises(ValueError, match=r"maxima must be int32 of shape \(11,\)"):
        quantize_rows_and_columns(t, maxima=torch.zeros(10, dtype=torch.int32, device=DEVICE))
    with pytest.raises(ValueError, match="got torch.int64"):
        quantize_rows_and_columns(t, maxima=torch.zeros(11, dtype=torch.int64, device=DEVICE))
