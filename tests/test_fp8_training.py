"""swiglu, swiglu_mlp and SwiGLUMLP with fp8=True: against the recipe's float64 emulation
(swiglu_fp8_training_reference), which tells a product left in 16 bits from a float8 one,
and against the float64 SwiGLU, on the kernels' path (the interpreter on a CPU, or a GPU) and
on the plain-PyTorch one."""

import pytest
import torch
from conftest import DEVICE, ON_GPU
import fp8_checks

from fused_swiglu import SwiGLUMLP, swiglu, swiglu_mlp, swiglu_reference
from fused_swiglu.fp8 import stacked
from fused_swiglu.fp8.reference import swiglu_fp8_training_reference

pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")

# the kernels (outputs poisoned) and the plain-PyTorch path, as a fixture
path = fp8_checks.path

# Against the float64 SwiGLU: e4m3 keeps 4 significant bits (test_fp8_quantize.FP8_TOLERANCE
# has the reasoning); the block's gradients pass through three quantized GEMMs. Worst of 40
# seeds under the interpreter: 0.07 at 37 tokens, 0.096 with one token and d_ff 256 (fewer
# outputs, more spread; with d_ff 8 it reached 0.35, so the one-token shape has 256).
FP8_TOLERANCE = 0.125
# Against the emulation of the same recipe: the same quantized operands, so only float32
# against float64 sums, the activation's last bits and, rarely, an element that these move
# across a float8 rounding boundary (measured below 4e-3); a GEMM left in 16 bits is off by
# the float8 error itself, about 0.04.
RECIPE_TOLERANCE = 0.01
# On a GPU the stacked kernel's forward accumulates without float32 promotion
# (fused_swiglu.fp8.stacked.PRECISE_ACCUMULATION): its g and u are off float64 by about
# 2.8e-5 * sqrt(K) norm-wise (fp8_checks.FAST_ACCUMULATION_NORM_EPS), and quantizing y, dg and
# du again moves some of their elements across float8 rounding boundaries, about 8x that in
# what follows (v15, H200, 4096 x 2048 x 5632: 0.0116-0.0129 against the emulation). This
# much more, still well below a 16-bit GEMM's 0.04 at the shapes here.
FAST_ACCUMULATION_TOLERANCE = 2.0 ** -12  # times sqrt(d_model)
# (tokens, d_model, d_ff): d_model 48 takes the stacked kernel (16-byte rows), 40 the pointer
# kernel; ragged tiles; one token
SHAPES = [(37, 48, 40), (37, 40, 24), (1, 48, 256)]
if ON_GPU:
    SHAPES += [(4096, 2048, 5632), (1000, 1000, 1000)]


def relative_error(got, want):
    assert got.shape == want.shape and torch.isfinite(got).all()
    return ((got.double() - want.double()).norm() / want.double().norm()).item()


def problem(m, d_model, d_ff, dtype=torch.bfloat16, lead=(), mlp=False):
    """x and nn.Linear-layout weights (transposed views), leaves requiring grad, and d_out."""
    x = torch.randn(*lead, m, d_model, device=DEVICE).to(dtype).requires_grad_()
    shapes = [(d_ff, d_model), (d_ff, d_model)] + ([(d_model, d_ff)] if mlp else [])
    weights = [(torch.randn(*s, device=DEVICE) * s[1] ** -0.5).to(dtype).T.requires_grad_()
               for s in shapes]
    d_out = torch.randn(*lead, m, d_model if mlp else d_ff, device=DEVICE).to(dtype)
    return x, weights, d_out


def check(run, x, weights, d_out, activation="silu"):
    """run(x, *weights) against the recipe's emulation and the float64 SwiGLU."""
    names = ["x", "w_gate", "w_up", "w_down"][:1 + len(weights)]
    out = run(x, *weights)
    grads = dict(zip(names, torch.autograd.grad(out, (x, *weights), d_out)))
    want = swiglu_fp8_training_reference(x.detach(), *(w.detach() for w in weights[:2]),
                                         d_out, *(w.detach() for w in weights[2:]),
                                         activation=activation)
    leaves = [t.detach().double().requires_grad_() for t in (x, *weights)]
    exact = swiglu_reference(*leaves[:3], activation=activation)
    if len(weights) == 3:
        exact = exact @ leaves[3]
    exact_grads = dict(zip(names, torch.autograd.grad(exact, leaves, d_out.double())))
    assert out.dtype == x.dtype
    for name, grad in grads.items():
        leaf = (x, *weights)[names.index(name)]
        assert grad.dtype == leaf.dtype and grad.shape == leaf.shape
    # every error first, so that a failure shows them all
    got = {"out": out, **grads}
    to_recipe = {name: relative_error(t, want[name]) for name, t in got.items()}
    to_exact = {name: relative_error(t, {"out": exact, **exact_grads}[name])
                for name, t in got.items()}
    tolerance = recipe_tolerance(x.shape[-1])
    assert all(e <= tolerance for e in to_recipe.values()), (to_recipe, tolerance)
    assert all(e <= FP8_TOLERANCE for e in to_exact.values()), to_exact
    return out, grads


def recipe_tolerance(d_model):
    """The tolerance against the emulation, for the path that this machine takes."""
    # the stacked kernel takes rows of a multiple of 16 bytes (stacked.takes_descriptors)
    fast = ON_GPU and not stacked.PRECISE_ACCUMULATION and d_model % 16 == 0
    return RECIPE_TOLERANCE + (FAST_ACCUMULATION_TOLERANCE * d_model ** 0.5 if fast else 0.0)


@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("shape", SHAPES, ids=["x".join(map(str, s)) for s in SHAPES])
def test_swiglu(path, shape, recompute):
    x, weights, d_out = problem(*shape, lead=(2,))
    check(lambda x, *w: swiglu(x, *w, fp8=True, recompute=recompute), x, weights, d_out)


@pytest.mark.parametrize("activation", ["gelu_tanh", "gelu"])
def test_geglu(path, activation):
    x, weights, d_out = problem(37, 48, 40)
    check(lambda x, *w: swiglu(x, *w, fp8="rowwise", activation=activation), x, weights,
          d_out, activation)


@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("shape", SHAPES, ids=["x".join(map(str, s)) for s in SHAPES])
def test_swiglu_mlp(path, shape, recompute):
    x, weights, d_out = problem(*shape, mlp=True)
    check(lambda x, *w: swiglu_mlp(x, *w, fp8=True, recompute=recompute), x, weights, d_out)


def test_float16_and_row_major_weights(path):
    x, weights, d_out = problem(37, 48, 40, torch.float16)
    row_major = [w.detach().contiguous().requires_grad_() for w in weights]
    _, grads = check(lambda x, *w: swiglu(x, *w, fp8=True), x, row_major, d_out)
    # gradients in the weights' own layouts
    assert grads["w_gate"].stride() == row_major[0].stride()
    _, grads = check(lambda x, *w: swiglu(x, *w, fp8=True), x, weights, d_out)
    assert grads["w_gate"].stride() == weights[0].stride()


def test_recompute_and_no_grad_compute_the_same(path):
    x, weights, d_out = problem(37, 48, 40)
    runs = []
    for recompute in (False, True):
        out = swiglu(x, *weights, fp8=True, recompute=recompute)
        runs.append((out, *torch.autograd.grad(out, (x, *weights), d_out)))
    for kept, recomputed in zip(*runs):
        assert torch.equal(kept, recomputed)
    with torch.no_grad():
        assert torch.equal(swiglu(x, *weights, fp8=True), runs[0][0])


@pytest.mark.parametrize("block", [False, True], ids=["swiglu", "swiglu_mlp"])
def test_second_backward_is_right_or_refused(path, block):
    """A second backward through a retained graph: with recompute the same gradients again;
    without, where the first one overwrote the saved g and u (the kernels' path), a
    RuntimeError pointing to recompute=True, never gradients computed from dg and du."""
    x, weights, d_out = problem(37, 48, 40, mlp=block)
    run = swiglu_mlp if block else swiglu
    for recompute in (False, True):
        out = run(x, *weights, fp8=True, recompute=recompute)
        first = torch.autograd.grad(out, (x, *weights), d_out, retain_graph=True)
        try:
            second = torch.autograd.grad(out, (x, *weights), d_out)
        except RuntimeError as error:
            assert path == "kernels" and not recompute, str(error)
            assert "recompute=True" in str(error)
            continue
        for a, b in zip(first, second):
            assert torch.equal(a, b)


def test_module_and_its_options(path):
    torch.manual_seed(0)
    module = SwiGLUMLP(48, 40, fp8=True, dtype=torch.bfloat16, device=DEVICE)
    assert "fp8=True" in repr(module)
    x = torch.randn(2, 5, 48, device=DEVICE, dtype=torch.bfloat16)
    out = module(x)
    want = swiglu_mlp(x, *module.projection_weights(), fp8=True)
    assert torch.equal(out, want)
    out.sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.bfloat16
               for p in module.parameters())


def test_zero_tokens(path):
    x, weights, _ = problem(0, 48, 40, lead=(3,))
    out = swiglu(x, *weights, fp8=True)
    assert out.shape == (3, 0, 40)
    out.sum().backward()
    assert torch.equal(weights[0].grad, torch.zeros_like(weights[0]))


def test_options_are_checked():
    x, weights, _ = problem(5, 48, 40)
    with pytest.raises(ValueError, match="unknown fp8 recipe 'blockwise'"):
        swiglu(x, *weights, fp8="blockwise")
    with pytest.raises(TypeError, match="fp8 must be True, False or a recipe name"):
        swiglu(x, *weights, fp8=1)
    with pytest.raises(TypeError, match="fast_accum=True"):
        swiglu(x.half(), *(w.half() for w in weights), fp8=True, fast_accum=True)
    with pytest.raises(TypeError, match="bfloat16 or float16 inputs, got torch.float32"):
        swiglu(x.float(), *(w.float() for w in weights), fp8=True)
    with pytest.raises(ValueError, match="unknown fp8 recipe"):
        SwiGLUMLP(48, 40, fp8="tensorwise")
    y = swiglu(x, *weights, fp8=True)
    with pytest.raises(RuntimeError, match="create_graph=True"):
        torch.autograd.grad(y.sum(), x, create_graph=True)


@pytest.mark.parametrize("block", [False, True], ids=["swiglu", "swiglu_mlp"])
def test_torch_compile_fullgraph(block):
    # the float8 steps are custom ops: the compiled graph calls the same kernels, so forward
    # and gradients are the eager ones, bit for bit
    x, weights, d_out = problem(37, 48, 40, mlp=block)
    fn = swiglu_mlp if block else swiglu

    def step(x, *weights):
        return torch.autograd.grad(fn(x, *weights, fp8=True), (x, *weights), d_out)
    compiled = torch.compile(lambda x, *w: fn(x, *w, fp8=True), backend="aot_eager",
                             fullgraph=True)
    out = compiled(x, *weights)
    got = torch.autograd.grad(out, (x, *weights), d_out)
    assert torch.equal(out, fn(x, *weights, fp8=True))
    for a, b in zip(got, step(x, *weights)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("block", [False, True], ids=["swiglu", "swiglu_mlp"])
def test_saves_no_more_than_16_bits(block, recompute):
    # what autograd keeps beyond the inputs' memory: the 16-bit path's g and u (none with
    # recompute), and no more with float8
    x, weights, _ = problem(37, 48, 40, mlp=block)
    inputs = {t.untyped_storage().data_ptr() for t in (x, *weights)}

    def saved_bytes(fp8):
        sizes = []

        def pack(t):
            if t.untyped_storage().data_ptr() not in inputs:
                sizes.append(t.numel() * t.element_size())
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            (swiglu_mlp if block else swiglu)(x, *weights, fp8=fp8, recompute=recompute)
        return sum(sizes)
    assert saved_bytes(True) <= saved_bytes(False)
    assert saved_bytes(False) == (0 if recompute else 2 * 37 * 40 * 2)


# CUDA graphs exist on the GPU only: this test is defined there and nowhere else.
if ON_GPU:

    @pytest.mark.parametrize("recompute", [False, True])
    def test_forward_and_backward_replay_as_cuda_graph(recompute):
        x, weights, d_out = problem(256, 512, 1024, mlp=True)
        leaves = (x, *weights)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # compilation and cuBLAS's workspace outside the capture
                torch.autograd.grad(swiglu_mlp(x, *weights, fp8=True, recompute=recompute),
                                    leaves, d_out)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = swiglu_mlp(x, *weights, fp8=True, recompute=recompute)
            grads = torch.autograd.grad(out, leaves, d_out)
        with torch.no_grad():
            x.copy_(torch.randn_like(x))
            d_out.copy_(torch.randn_like(d_out))
        graph.replay()
        want = swiglu_fp8_training_reference(x.detach(), *(w.detach() for w in weights[:2]),
                                             d_out, weights[2].detach())
        tolerance = recipe_tolerance(x.shape[-1])
        assert relative_error(out, want["out"]) <= tolerance
        for name, grad in zip(["x", "w_gate", "w_up", "w_down"], grads):
            assert relative_error(grad, want[name]) <= tolerance, name


def test_outlier_token_leaves_the_others_accurate(path):
    # every operand of the forward and of dx is scaled per token: one token 3e4 times larger
    # than the others changes neither their outputs' nor their input gradients' error
    x, weights, d_out = problem(37, 48, 256)
    with torch.no_grad():
        x[5] *= 3e4
    out = swiglu(x, *weights, fp8=True)
    (dx,) = torch.autograd.grad(out, x, d_out)
    leaves = [t.detach().double().requires_grad_() for t in (x, *weights)]
    exact = swiglu_reference(*leaves)
    (exact_dx,) = torch.autograd.grad(exact, leaves[0], d_out.double())
    others = torch.arange(37, device=DEVICE) != 5
    assert relative_error(out[others], exact[others]) <= FP8_TOLERANCE
    assert relative_error(dx[others], exact_dx[others]) <= FP8_TOLERANCE
