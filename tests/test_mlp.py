"""swiglu_mlp and SwiGLUMLP: the SwiGLU block with its down projection, against a float64
reference, and what autograd keeps for its backward."""

import functools

import pytest
import torch
from conftest import DEVICE, ON_GPU
from test_swiglu import TOLERANCE, DTYPES, make_inputs, relative_error, saved_tensors

from fused_swiglu import SwiGLUMLP, swiglu, swiglu_mlp, swiglu_reference

# (leading dims of x, d_model, d_ff): single token, ragged sizes, 3-D input
SHAPES = [((1,), 48, 80), ((37,), 48, 80), ((2, 5), 40, 72)]
if ON_GPU:
    # the stacked-weights kernel (tensor descriptors) and the pointer kernel at model sizes
    SHAPES += [((4, 2048), 4096, 11008), ((3, 700), 1000, 2750)]


def make_mlp_inputs(lead, d_model, d_ff, dtype):
    """x and nn.Linear-layout weights, as SwiGLUMLP passes them."""
    x, w_gate, w_up = make_inputs(lead, d_model, d_ff, dtype, transposed=True)
    w_down = (torch.randn(d_model, d_ff, device=DEVICE, dtype=dtype) * d_ff ** -0.5).T
    return [t.detach().requires_grad_() for t in (x, w_gate, w_up, w_down)]


def reference(x, w_gate, w_up, w_down):
    return swiglu_reference(x.double(), w_gate.double(), w_up.double()) @ w_down.double()


@pytest.mark.parametrize("recompute", [False, True], ids=["keep g and u", "recompute"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("lead,d_model,d_ff", SHAPES, ids=str)
def test_forward_and_gradients(lead, d_model, d_ff, dtype, recompute, forward_path):
    leaves = make_mlp_inputs(lead, d_model, d_ff, dtype)
    out = swiglu_mlp(*leaves, recompute=recompute)
    assert out.dtype == dtype and out.shape == leaves[0].shape
    d_out = torch.randn_like(out)
    out.backward(d_out)
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    ref = reference(*ref_leaves)
    ref.backward(d_out.double())
    errors = {"out": relative_error(out, ref)}
    for name, leaf, ref_leaf in zip(("dx", "dw_gate", "dw_up", "dw_down"), leaves, ref_leaves):
        errors[name] = relative_error(leaf.grad, ref_leaf.grad)
    assert max(errors.values()) <= TOLERANCE[dtype], errors


@pytest.mark.parametrize("frozen", ["w_down", "weights", "x"])
def test_gradients_of_some_inputs(frozen, forward_path):
    # the backward skips what nothing needs (with a frozen w_down, y is not written again)
    leaves = make_mlp_inputs((9,), 48, 80, torch.bfloat16)
    needed = {"w_down": [0, 1, 2], "weights": [0], "x": [1, 2, 3]}[frozen]
    for i, leaf in enumerate(leaves):
        leaf.requires_grad_(i in needed)
    d_out = torch.randn(9, 48, device=DEVICE, dtype=torch.bfloat16)
    swiglu_mlp(*leaves).backward(d_out)
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    reference(*ref_leaves).backward(d_out.double())
    for i, (leaf, ref_leaf) in enumerate(zip(leaves, ref_leaves)):
        if i in needed:
            assert relative_error(leaf.grad, ref_leaf.grad) <= TOLERANCE[torch.bfloat16]
        else:
            assert leaf.grad is None


def _saved_shapes(fn, *args):
    """Shapes of the tensors autograd saves for fn(*args)'s backward."""
    _, saved = saved_tensors(lambda: fn(*args))
    return [tuple(t.shape) for t in saved]


@pytest.mark.parametrize("recompute", [False, True], ids=["keep g and u", "recompute"])
def test_keeps_no_swiglu_output(recompute):
    leaves = make_mlp_inputs((37,), 48, 80, torch.bfloat16)
    tokens_by_d_ff = (37, 80)
    saved = _saved_shapes(lambda *t: swiglu_mlp(*t, recompute=recompute), *leaves)
    assert saved.count(tokens_by_d_ff) == (0 if recompute else 2), saved
    # what the block saves as swiglu followed by a matrix product: y as well
    composed = _saved_shapes(lambda x, wg, wu, wd: swiglu(x, wg, wu, recompute=recompute) @ wd,
                             *leaves)
    assert composed.count(tokens_by_d_ff) == (1 if recompute else 3), composed


@pytest.mark.parametrize("recompute", [False, True], ids=["keep g and u", "recompute"])
def test_compiled_block_keeps_what_eager_keeps(recompute):
    torch._dynamo.reset()
    # the interpreter has no code generation to test on CPU; tracing is what matters there
    compiled = torch.compile(functools.partial(swiglu_mlp, recompute=recompute), fullgraph=True,
                             backend="inductor" if ON_GPU else "aot_eager")
    leaves = make_mlp_inputs((37,), 48, 80, torch.bfloat16)
    assert _saved_shapes(compiled, *leaves).count((37, 80)) == (0 if recompute else 2)
    out = compiled(*leaves)
    d_out = torch.randn_like(out)
    out.backward(d_out)
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    ref = reference(*ref_leaves)
    ref.backward(d_out.double())
    assert relative_error(out, ref) <= TOLERANCE[torch.bfloat16]
    for leaf, ref_leaf in zip(leaves, ref_leaves):
        assert relative_error(leaf.grad, ref_leaf.grad) <= TOLERANCE[torch.bfloat16]


def test_second_backward_needs_recompute(forward_path):
    leaves = make_mlp_inputs((9,), 48, 80, torch.bfloat16)
    out = swiglu_mlp(*leaves)
    out.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="recompute=True"):
        out.sum().backward()
    out = swiglu_mlp(*leaves, recompute=True)
    out.sum().backward(retain_graph=True)
    out.sum().backward()


def test_module_uses_the_block():
    mlp = SwiGLUMLP(48, 80, device=DEVICE, dtype=torch.bfloat16, recompute=True)
    x = torch.randn(37, 48, device=DEVICE, dtype=torch.bfloat16, requires_grad=True)
    assert _saved_shapes(mlp, x).count((37, 80)) == 0
    weights = (mlp.gate_proj.weight.T, mlp.up_proj.weight.T, mlp.down_proj.weight.T)
    assert relative_error(mlp(x), reference(x, *weights)) <= TOLERANCE[torch.bfloat16]


def bad_inputs():
    x, w_gate, w_up, w_down = (t.detach() for t in make_mlp_inputs((4,), 48, 80, torch.float32))
    yield "must be \\(d_ff, d_model\\)", ValueError, (x, w_gate, w_up, w_down.T)
    yield "must be \\(d_ff, d_model\\)", ValueError, (x, w_gate, w_up, w_down[None])
    yield "dtype of x", TypeError, (x, w_gate, w_up, w_down.double())
    yield "torch.Tensor", TypeError, (x, w_gate, w_up, w_down.tolist())
    yield "d_model", ValueError, (x[:, :47], w_gate, w_up, w_down)
    if ON_GPU:
        yield "device", ValueError, (x, w_gate, w_up, w_down.cpu())


@pytest.mark.parametrize("case", list(bad_inputs()), ids=lambda c: c[0])
def test_bad_input_raises_clear_error(case):
    message, error, args = case
    with pytest.raises(error, match=message):
        swiglu_mlp(*args)


# Peak memory needs the CUDA caching allocator's statistics: GPU only.
if ON_GPU:

    @pytest.mark.parametrize("m, d_model, d_ff", [(4096, 1024, 2816), (1024, 2048, 5632)])
    def test_peak_memory_not_above_composition(m, d_model, d_ff, forward_path):
        # keeping less must not cost a higher peak: at most that of swiglu followed by a
        # matrix product, also where the weights' gradients outweigh the activations
        leaves = make_mlp_inputs((m,), d_model, d_ff, torch.bfloat16)
        d_out = torch.randn(m, d_model, device=DEVICE, dtype=torch.bfloat16)

        def peak(fn):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            torch.autograd.grad(fn(*leaves), leaves, d_out)
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - base

        composed = peak(lambda x, w_gate, w_up, w_down: swiglu(x, w_gate, w_up) @ w_down)
        assert peak(swiglu_mlp) <= composed


# Host synchronizations are a CUDA stream's: GPU only.
if ON_GPU:

    @pytest.mark.parametrize("fp8", [False, True], ids=["16-bit", "fp8"])
    @pytest.mark.parametrize("recompute", [False, True], ids=["keep", "recompute"])
    @pytest.mark.parametrize("tokens", [512, 4096])
    def test_training_step_never_waits_for_the_gpu(tokens, recompute, fp8):
        """A forward+backward of the block enqueues its work without a host synchronization
        (a copy to the host, a wait on a stream): in a model the host runs ahead of the GPU,
        and one wait per layer would leave the GPU idle while the host catches up."""
        module = SwiGLUMLP(1024, 2816, recompute=recompute, fp8=fp8, device=DEVICE,
                           dtype=torch.bfloat16)
        x = torch.randn(tokens // 512, 512, 1024, device=DEVICE, dtype=torch.bfloat16,
                        requires_grad=True)
        module(x).sum().backward()  # compiles and tunes the kernels, which may wait
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            module(x).sum().backward()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        torch.cuda.synchronize()
        assert all(torch.isfinite(p.grad).all() for p in module.parameters())
