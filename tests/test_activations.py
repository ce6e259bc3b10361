"""GeGLU: the gate's other activations ("gelu_tanh", "gelu") through the same kernels as SiLU,
forward and every gradient against the float64 reference, on every path; SwiGLUMLP's packed
gate_up_proj layout."""

import pytest
import torch
from conftest import DEVICE
from test_swiglu import TOLERANCE, make_inputs, relative_error

from fused_swiglu import SwiGLUMLP, swiglu, swiglu_mlp, swiglu_reference

ACTIVATIONS = ["silu", "gelu_tanh", "gelu"]


def check(fn, leaves, ref_fn, tol):
    """fn and ref_fn on the same values, forward and every gradient; ref_fn in float64."""
    leaves = [t.detach().requires_grad_() for t in leaves]
    out = fn(*leaves)
    dy = torch.randn_like(out)
    grads = torch.autograd.grad(out, leaves, dy)
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    ref = ref_fn(*ref_leaves)
    ref_grads = torch.autograd.grad(ref, ref_leaves, dy.double())
    errors = [relative_error(a, b) for a, b in zip((out, *grads), (ref, *ref_grads))]
    assert max(errors) <= tol, errors


@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("lead", [(5,), (37,)], ids=str)  # a decode step; more tokens
@pytest.mark.parametrize("activation", ACTIVATIONS[1:])
def test_geglu(activation, lead, dtype, transposed, recompute, forward_path):
    x, w_gate, w_up = make_inputs(lead, 48, 80, dtype, transposed)
    check(lambda *t: swiglu(*t, activation=activation, recompute=recompute), (x, w_gate, w_up),
          lambda *t: swiglu_reference(*t, activation=activation), TOLERANCE[dtype])


@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("activation", ACTIVATIONS[1:])
def test_geglu_stacked_kernel(activation, recompute, monkeypatch):
    """nn.Linear-layout weights through the stacked kernel (tensor descriptors at every size)."""
    from fused_swiglu import launch
    monkeypatch.setattr(launch, "TMA_MIN_WORK", 1)
    monkeypatch.setattr(launch, "CUBLAS_MAX_TOKENS", 0)
    x, w_gate, w_up = make_inputs((37,), 48, 80, torch.bfloat16, transposed=True)
    check(lambda *t: swiglu(*t, activation=activation, recompute=recompute), (x, w_gate, w_up),
          lambda *t: swiglu_reference(*t, activation=activation), TOLERANCE[torch.bfloat16])


@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("activation", ACTIVATIONS[1:])
def test_geglu_block(activation, recompute, forward_path):
    x, w_gate, w_up = make_inputs((2, 19), 48, 80, torch.bfloat16, transposed=True)
    w_down = (torch.randn(48, 80, device=DEVICE, dtype=torch.bfloat16) * 80 ** -0.5).T
    check(lambda *t: swiglu_mlp(*t, activation=activation, recompute=recompute),
          (x, w_gate, w_up, w_down),
          lambda x, g, u, d: swiglu_reference(x, g, u, activation=activation) @ d,
          TOLERANCE[torch.bfloat16])


@pytest.mark.parametrize("activation", ACTIVATIONS[1:])
def test_geglu_double_backward(activation):
    """Gradients of gradients through the GeGLU block, against float64 autograd."""
    x, w_gate, w_up = make_inputs((13,), 48, 80, torch.float32, transposed=True)
    w_down = torch.randn(80, 48, device=DEVICE) * 80 ** -0.5

    def penalty(fn, leaves):
        y = fn(*leaves)
        dx, = torch.autograd.grad(y.square().sum(), leaves[0], create_graph=True)
        return torch.autograd.grad(y.sum() + dx.square().sum(), leaves)

    leaves = [t.detach().requires_grad_() for t in (x, w_gate, w_up, w_down)]
    ours = penalty(lambda *t: swiglu_mlp(*t, activation=activation), leaves)
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    ref = penalty(lambda x, g, u, d: swiglu_reference(x, g, u, activation=activation) @ d,
                  ref_leaves)
    errors = [relative_error(a, b) for a, b in zip(ours, ref)]
    assert max(errors) <= TOLERANCE[torch.float32], errors


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_reference_formulas(activation):
    z = torch.linspace(-9, 9, 181, dtype=torch.float64)
    formulas = {
        "silu": z * torch.sigmoid(z),
        "gelu_tanh": 0.5 * z * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (z + 0.044715 * z ** 3))),
        "gelu": 0.5 * z * (1 + torch.erf(z / 2 ** 0.5)),
    }
    one = torch.ones(1, 1, dtype=torch.float64)
    # d_model = d_ff = 1 with unit weights: g = u = z, so the output is act(z) * z
    out = swiglu_reference(z[:, None], one, one, activation=activation)
    torch.testing.assert_close(out[:, 0], formulas[activation] * z)


@pytest.mark.parametrize("fn", ["swiglu", "swiglu_mlp", "SwiGLUMLP", "swiglu_reference"])
def test_unknown_activation(fn):
    x, w_gate, w_up = make_inputs((3,), 8, 16, torch.float32)
    w_down = torch.randn(16, 8, device=DEVICE)
    calls = {
        "swiglu": lambda a: swiglu(x, w_gate, w_up, activation=a),
        "swiglu_mlp": lambda a: swiglu_mlp(x, w_gate, w_up, w_down, activation=a),
        "SwiGLUMLP": lambda a: SwiGLUMLP(8, 16, activation=a),
        "swiglu_reference": lambda a: swiglu_reference(x, w_gate, w_up, activation=a),
    }
    with pytest.raises(ValueError, match="relu"):
        calls[fn]("relu")
    with pytest.raises(TypeError, match="activation"):
        calls[fn](None)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_packed_module_matches_separate(activation):
    """packed=True holds gate_up_proj (gate rows first, Phi-3's order): the same values and
    gradients as separate gate_proj and up_proj holding those rows."""
    torch.manual_seed(0)
    separate = SwiGLUMLP(48, 80, activation=activation, device=DEVICE)
    packed = SwiGLUMLP(48, 80, activation=activation, packed=True, device=DEVICE)
    with torch.no_grad():
        packed.gate_up_proj.weight.copy_(
            torch.cat([separate.gate_proj.weight, separate.up_proj.weight]))
        packed.down_proj.weight.copy_(separate.down_proj.weight)
    assert sorted(packed.state_dict()) == ["down_proj.weight", "gate_up_proj.weight"]
    assert f"activation={activation!r}" in repr(packed) and "packed=True" in repr(packed)
    x = torch.randn(2, 7, 48, device=DEVICE, requires_grad=True)
    out_s, out_p = separate(x), packed(x)
    torch.testing.assert_close(out_p, out_s)
    dy = torch.randn_like(out_s)
    grads_s = torch.autograd.grad(out_s, (x, separate.gate_proj.weight, separate.up_proj.weight,
                                          separate.down_proj.weight), dy)
    grads_p = torch.autograd.grad(out_p, (x, packed.gate_up_proj.weight,
                                          packed.down_proj.weight), dy)
    torch.testing.assert_close(grads_p[0], grads_s[0])
    torch.testing.assert_close(grads_p[1], torch.cat([grads_s[1], grads_s[2]]))
    torch.testing.assert_close(grads_p[2], grads_s[3])
