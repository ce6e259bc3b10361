"""Correctness of fused_swiglu against a float64 reference, on CPU (Triton interpreter, small
shapes) and on CUDA (the same tests plus real model shapes, autocast, torch.compile)."""

import pytest
import torch
import torch.utils.checkpoint
import triton
import triton.language as tl
from conftest import DEVICE, ON_GPU
from torch.utils._python_dispatch import TorchDispatchMode

import fused_swiglu
from fused_swiglu import FastAccumFusedSwiGLU, FusedSwiGLU, SwiGLUMLP, swiglu, swiglu_reference
from fused_swiglu.kernels.common import rounded

# Bounds on ||ours - ref|| / ||ref||: fused_swiglu.reference.TOLERANCE says where they come from.
TOLERANCE = fused_swiglu.reference.TOLERANCE
# float16 accumulation rounds every partial sum to 11 bits: the error grows with d_model.
FAST_ACCUM_TOLERANCE = 1e-2
DTYPES = [torch.bfloat16, torch.float16, torch.float32]

# (leading dims of x, d_model, d_ff): single token, ragged sizes (no multiple of 16),
# 2/3/4-D inputs, d_ff narrower than one tile, d_model not a multiple of 8.
SHAPES = [
    ((1,), 48, 80),
    ((37,), 48, 80),
    ((2, 5), 40, 72),
    ((2, 3, 4), 24, 40),
    ((19,), 64, 8),
    ((11,), 20, 33),
]
if ON_GPU:
    # model shapes; M * d_model * d_ff >= 2**33 takes tensor descriptors (TMA), smaller
    # problems the pointer path; the last has rows of 2750 elements (5500 bytes), which no
    # descriptor can take
    SHAPES += [((4, 2048), 4096, 11008), ((512,), 4096, 14336), ((8,), 4096, 11008),
               ((3, 700), 1000, 2750)]
LARGE_SHAPES = [((2048,), 2048, 2816)] if ON_GPU else []
# nn.Linear-layout weights: on a GPU the model shapes take the stacked-weights kernel
LINEAR_SHAPES = SHAPES[:3] + SHAPES[-1:] + ([((4, 2048), 4096, 11008), ((512,), 4096, 14336)]
                                             if ON_GPU else [])


def relative_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    assert torch.isfinite(ours).all(), "non-finite values (an unwritten element?)"
    return ((ours.double() - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def make_inputs(lead, d_model, d_ff, dtype, transposed=False):
    x = torch.randn(*lead, d_model, device=DEVICE, dtype=dtype)
    scale = d_model ** -0.5  # keeps x @ w near unit scale, like trained weights
    if transposed:  # nn.Linear layout: (d_ff, d_model) storage, used as .T
        w_gate = (torch.randn(d_ff, d_model, device=DEVICE, dtype=dtype) * scale).T
        w_up = (torch.randn(d_ff, d_model, device=DEVICE, dtype=dtype) * scale).T
    else:
        w_gate = torch.randn(d_model, d_ff, device=DEVICE, dtype=dtype) * scale
        w_up = torch.randn(d_model, d_ff, device=DEVICE, dtype=dtype) * scale
    return x, w_gate, w_up


def reference_with_grads(x, w_gate, w_up, dy):
    leaves = [t.detach().double().requires_grad_() for t in (x, w_gate, w_up)]
    out = swiglu_reference(*leaves)
    out.backward(dy.double())
    return out.detach(), [t.grad for t in leaves]


def check_against_reference(x, w_gate, w_up, tol, **kwargs):
    leaves = [t.detach().requires_grad_() for t in (x, w_gate, w_up)]
    out = swiglu(*leaves, **kwargs)
    assert out.dtype == x.dtype and out.shape == (*x.shape[:-1], w_gate.shape[1])
    dy = torch.randn_like(out)
    out.backward(dy)
    ref_out, ref_grads = reference_with_grads(x, w_gate, w_up, dy)
    errors = {"out": relative_error(out, ref_out)}
    for name, leaf, ref in zip(("dx", "dw_gate", "dw_up"), leaves, ref_grads):
        assert leaf.grad.shape == leaf.shape
        errors[name] = relative_error(leaf.grad, ref)
    assert max(errors.values()) <= tol, errors


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("lead,d_model,d_ff", SHAPES, ids=str)
def test_forward_and_gradients(lead, d_model, d_ff, dtype, forward_path):
    check_against_reference(*make_inputs(lead, d_model, d_ff, dtype), TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("lead,d_model,d_ff", LINEAR_SHAPES, ids=str)
def test_transposed_linear_weights(lead, d_model, d_ff, dtype):
    check_against_reference(*make_inputs(lead, d_model, d_ff, dtype, transposed=True),
                            TOLERANCE[dtype])


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("lead,d_model,d_ff", [((2, 21), 48, 80)] + LARGE_SHAPES, ids=str)
def test_recompute(lead, d_model, d_ff, dtype, transposed, forward_path):
    check_against_reference(*make_inputs(lead, d_model, d_ff, dtype, transposed),
                            TOLERANCE[dtype], recompute=True)


@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("lead,d_model,d_ff", SHAPES[1:2] + SHAPES[-1:], ids=str)
def test_fast_accum(lead, d_model, d_ff, recompute, forward_path):
    x, w_gate, w_up = make_inputs(lead, d_model, d_ff, torch.float16)
    check_against_reference(x, w_gate, w_up, FAST_ACCUM_TOLERANCE, fast_accum=True,
                            recompute=recompute)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_no_worse_than_twice_pytorch(dtype, forward_path):
    x, w_gate, w_up = make_inputs((64,), 96, 160, dtype)
    ref = swiglu_reference(x.double(), w_gate.double(), w_up.double())
    eager = torch.nn.functional.silu(x @ w_gate) * (x @ w_up)
    ours = swiglu(x, w_gate, w_up)
    assert relative_error(ours, ref) <= 2 * relative_error(eager, ref) + 1e-7


def recorded_launches(monkeypatch, name):
    """The first argument's shape of every call of launch.<name> from now on."""
    from fused_swiglu import launch
    launches = []
    real = getattr(launch, name)

    def recording(*args, **kwargs):
        launches.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(launch, name, recording)
    return launches


def _path_cases():
    from fused_swiglu import launch
    low, high = launch.DECODE_MAX_TOKENS, launch.CUBLAS_MAX_TOKENS
    stacked_available = not ON_GPU or torch.cuda.get_device_capability()[0] >= 9
    # (tokens, dtype, nn.Linear-layout weights, whether the fused kernel runs)
    return [(low, torch.bfloat16, False, True), (low + 1, torch.bfloat16, True, False),
            (high, torch.float16, True, False), (high + 1, torch.bfloat16, True, stacked_available),
            (high + 1, torch.bfloat16, False, False), (high + 1, torch.float16, False, False),
            (low + 1, torch.float32, False, True), (high + 1, torch.float32, True, True)]


@pytest.mark.parametrize("m,dtype,transposed,fused", _path_cases(), ids=str)
def test_forward_path_by_token_count(m, dtype, transposed, fused, monkeypatch):
    """Decode steps take the fused kernel; from there to CUBLAS_MAX_TOKENS cuBLAS and the
    elementwise pass, and above it too for 16-bit weights that the stacked kernel cannot take
    (row-major ones); float32 always the fused kernel (full precision whatever TF32 says)."""
    from fused_swiglu import launch
    monkeypatch.setattr(launch, "TMA_MIN_WORK", 1)  # the stacked kernel at these small sizes
    fused_launches = recorded_launches(monkeypatch, "_dual_gemm")
    x, w_gate, w_up = make_inputs((m,), 16, 24, dtype, transposed)
    out = swiglu(x, w_gate, w_up)
    assert bool(fused_launches) == fused
    path = launch.forward_path(x, w_gate, w_up)
    assert (path != "cublas") == fused, path
    ref = swiglu_reference(x.double(), w_gate.double(), w_up.double())
    assert relative_error(out, ref) <= TOLERANCE[dtype]


@pytest.fixture
def stacked_launches(monkeypatch):
    """Tensor descriptors for every size, so that the CPU interpreter runs the descriptor
    kernels too (only large shapes reach them otherwise); returns the list of the stacked
    kernel's launches, and whether this device runs that kernel at all."""
    from fused_swiglu import launch

    monkeypatch.setattr(launch, "TMA_MIN_WORK", 1)
    monkeypatch.setattr(launch, "CUBLAS_MAX_TOKENS", 0)  # the fused kernel at every size
    launches = recorded_launches(monkeypatch, "_stacked_gemm")
    available = not ON_GPU or torch.cuda.get_device_capability()[0] >= 9
    return launches, available


def linear_weights(layout, d_model, d_ff, dtype):
    """(w_gate, w_up) as transposed (d_ff, d_model) weights: separate tensors, or both in one
    buffer with gate first or up first."""
    scale = d_model ** -0.5
    if layout == "separate":
        return make_inputs((1,), d_model, d_ff, dtype, transposed=True)[1:]
    both = torch.randn(2 * d_ff, d_model, device=DEVICE, dtype=dtype) * scale
    first, second = both[:d_ff].T, both[d_ff:].T
    return (first, second) if layout == "gate_first" else (second, first)


@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("layout", ["separate", "gate_first", "up_first"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_stacked_weights_kernel(dtype, layout, recompute, stacked_launches):
    # ragged in every dimension against the interpreter's 32 x 32 x 32 tiles
    launches, available = stacked_launches
    x = torch.randn(37, 48, device=DEVICE, dtype=dtype)
    w_gate, w_up = linear_weights(layout, 48, 80, dtype)
    check_against_reference(x, w_gate, w_up, TOLERANCE[dtype], recompute=recompute)
    # the forward, and the recompute backward's GEMM
    assert len(launches) == ((2 if recompute else 1) if available else 0)


@pytest.mark.parametrize("case", ["interleaved rows", "row-major weights", "d_ff * 2 bytes "
                                  "not a multiple of 16"])
def test_weights_one_descriptor_cannot_stack(case, stacked_launches):
    launches, _ = stacked_launches
    dtype, d_model, d_ff = torch.bfloat16, 48, 80
    x = torch.randn(37, d_model, device=DEVICE, dtype=dtype)
    if case == "interleaved rows":  # the two storages overlap
        both = torch.randn(2 * d_ff, d_model, device=DEVICE, dtype=dtype) * d_model ** -0.5
        w_gate, w_up = both[0::2].T, both[1::2].T
    elif case == "row-major weights":
        w_gate, w_up = make_inputs((1,), d_model, d_ff, dtype)[1:]
    else:
        w_gate, w_up = make_inputs((1,), d_model, 36, dtype, transposed=True)[1:]
    check_against_reference(x, w_gate, w_up, TOLERANCE[dtype])
    assert launches == []


def test_strided_and_mixed_layout_operands():
    # a column slice of a wider x (row stride != d_model) and one weight transposed, the
    # other not: layouts that a tensor descriptor cannot take, so the pointer path runs
    dtype = torch.bfloat16
    wide = torch.randn(29, 70, device=DEVICE, dtype=dtype)
    x = wide[:, 3:51]
    _, w_gate, _ = make_inputs((1,), 48, 80, dtype, transposed=True)
    _, _, w_up = make_inputs((1,), 48, 80, dtype)
    check_against_reference(x, w_gate, w_up, TOLERANCE[dtype])


def test_non_contiguous_incoming_gradient():
    x, w_gate, w_up = make_inputs((13,), 48, 80, torch.float32)
    x.requires_grad_()
    out = swiglu(x, w_gate, w_up)
    (out * 3.0).sum().backward()  # dy is an expanded (stride 0) tensor
    leaf = x.detach().double().requires_grad_()
    (swiglu_reference(leaf, w_gate.double(), w_up.double()) * 3.0).sum().backward()
    assert relative_error(x.grad, leaf.grad) <= TOLERANCE[torch.float32]


@pytest.mark.parametrize("which", [0, 1, 2])
def test_partial_requires_grad(which, forward_path):
    tensors = [t.detach() for t in make_inputs((9,), 48, 80, torch.bfloat16)]
    tensors[which].requires_grad_()
    out = swiglu(*tensors)
    dy = torch.randn_like(out)
    out.backward(dy)
    _, ref_grads = reference_with_grads(*tensors, dy)
    for i, t in enumerate(tensors):
        if i == which:
            assert relative_error(t.grad, ref_grads[i]) <= TOLERANCE[torch.bfloat16]
        else:
            assert t.grad is None


def autograd_nodes(out):
    """Names of the autograd nodes behind out; leaves' gradient accumulators and the views of
    swiglu()'s reshapes left out."""
    names, pending = [], [out.grad_fn]
    while pending:
        node = pending.pop()
        if node is not None:
            names.append(type(node).__name__)
            pending += [next_node for next_node, _ in node.next_functions]
    return sorted(name for name in names if name not in ("AccumulateGrad", "ViewBackward0"))


@pytest.mark.parametrize("recompute", [False, True])
def test_one_graph_node(recompute, forward_path):
    x, w_gate, w_up = (t.requires_grad_() for t in make_inputs((40,), 48, 80, torch.bfloat16))
    out = swiglu(x, w_gate, w_up, recompute=recompute)
    assert autograd_nodes(out) == ["_EagerSwiGLUBackward"]


@pytest.mark.parametrize("hooks", ["none", "copy to CPU and back", "view of a larger buffer"])
def test_saved_tensor_hooks(hooks, forward_path):
    # The backward overwrites the saved g and u it unpacks, and gives dg's memory back before
    # the last weight gradient where dg fills its storage; with hooks that unpack copies
    # (offloading) or views of something larger the gradients stay right, and nothing the
    # views share is freed.
    m, d_ff = 37, 80
    x, w_gate, w_up = make_inputs((m,), 48, d_ff, torch.bfloat16)
    saved = []

    def pack(t):
        if hooks != "view of a larger buffer":
            saved.append(t)
            return t
        buffer = torch.empty(t.numel() + 64, device=t.device, dtype=t.dtype)
        buffer[64:].copy_(t.flatten())
        saved.append(buffer)
        return buffer, t.shape

    def unpack(packed):
        if hooks != "view of a larger buffer":
            return packed
        buffer, shape = packed
        return buffer[64:].view(shape)

    context = (torch.autograd.graph.save_on_cpu() if hooks == "copy to CPU and back"
               else torch.autograd.graph.saved_tensors_hooks(pack, unpack))
    with context:
        check_against_reference(x, w_gate, w_up, TOLERANCE[torch.bfloat16])
    released = [tuple(t.shape) for t in saved if t.untyped_storage().nbytes() == 0]
    assert released == ([(m, d_ff)] if hooks == "none" else [])


def test_activation_checkpointing(forward_path):
    # torch.utils.checkpoint runs the forward again in the backward and hands its g and u to
    # the backward, which overwrites and frees them as it does its own
    x, w_gate, w_up = (t.requires_grad_() for t in make_inputs((37,), 48, 80, torch.bfloat16))
    out = torch.utils.checkpoint.checkpoint(swiglu, x, w_gate, w_up, use_reentrant=False)
    dy = torch.randn_like(out)
    out.backward(dy)
    ref_out, ref_grads = reference_with_grads(x, w_gate, w_up, dy)
    assert relative_error(out, ref_out) <= TOLERANCE[torch.bfloat16]
    for leaf, ref in zip((x, w_gate, w_up), ref_grads):
        assert relative_error(leaf.grad, ref) <= TOLERANCE[torch.bfloat16]


def test_output_modified_in_place():
    # the output is a tensor of its own, not a view, so in-place ops on it are allowed
    x, w_gate, w_up = make_inputs((9,), 48, 80, torch.float32)
    x.requires_grad_()
    out = swiglu(x, w_gate, w_up)
    out.mul_(3.0)
    dy = torch.randn_like(out)
    out.backward(dy)
    _, ref_grads = reference_with_grads(x, w_gate, w_up, 3.0 * dy)
    assert relative_error(x.grad, ref_grads[0]) <= TOLERANCE[torch.float32]


def saved_tensors(fn):
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, saved


@pytest.mark.parametrize("recompute", [False, True])
def test_saved_for_backward(recompute, forward_path):
    m, d_model, d_ff = 33, 48, 80
    x, w_gate, w_up = (t.requires_grad_() for t in make_inputs((m,), d_model, d_ff,
                                                              torch.bfloat16))
    out, saved = saved_tensors(lambda: swiglu(x, w_gate, w_up, recompute=recompute))
    inputs = {t.data_ptr() for t in (x, w_gate, w_up)}
    extra = sum(t.numel() for t in saved if t.data_ptr() not in inputs)
    assert extra <= (0 if recompute else 2 * m * d_ff), [t.shape for t in saved]
    out.sum().backward()
    assert x.grad is not None and w_gate.grad is not None


class AllocatedShapes(TorchDispatchMode):
    """Records the shape of every tensor an operator allocates: outputs of operators that
    neither return views nor write their arguments in place. Kernel outputs are allocated
    through torch operators too."""

    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not (func.is_view or func._schema.is_mutable):
            outputs = out if isinstance(out, (tuple, list)) else (out,)
            self.shapes += [tuple(t.shape) for t in outputs if isinstance(t, torch.Tensor)]
        return out


@pytest.mark.parametrize("recompute", [False, True])
def test_backward_allocates_no_tokens_by_d_ff_buffer(recompute):
    m, d_model, d_ff = 40, 48, 80
    x, w_gate, w_up = (t.requires_grad_() for t in make_inputs((m,), d_model, d_ff,
                                                              torch.float32))
    out = swiglu(x, w_gate, w_up, recompute=recompute)
    dy = torch.randn_like(out)
    with AllocatedShapes() as allocated:
        out.backward(dy)
    # the default backward overwrites the saved g and u; recompute allocates dg and du
    expected = [(m, d_ff), (m, d_ff)] if recompute else []
    assert [s for s in allocated.shapes if s == (m, d_ff)] == expected
    assert (m, d_model) in allocated.shapes  # dx: the mode saw the backward's operators


def test_nothing_saved_without_grad(kernel_outputs, forward_path):
    m, d_model, d_ff = 7, 48, 80
    x, w_gate, w_up = (t.requires_grad_() for t in make_inputs((m,), d_model, d_ff,
                                                              torch.float16))
    with torch.no_grad():
        out = swiglu(x, w_gate, w_up)
    assert out.grad_fn is None
    out = swiglu(*(t.detach() for t in (x, w_gate, w_up)))
    assert out.grad_fn is None
    # only the outputs were allocated: no pre-activations kept for a backward
    assert kernel_outputs == [(m, d_ff), (m, d_ff)]


@pytest.mark.parametrize("lead", [(0,), (2, 0)], ids=str)
def test_empty_input(lead):
    x, w_gate, w_up = (t.requires_grad_() for t in make_inputs(lead, 48, 80, torch.bfloat16))
    out = swiglu(x, w_gate, w_up)
    assert out.shape == (*lead, 80)
    out.sum().backward()
    assert x.grad.shape == x.shape
    assert torch.equal(w_gate.grad, torch.zeros_like(w_gate))  # no tokens, no gradient


# the interpreter's numpy warns about the NaN and Inf this test feeds in on purpose
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_nan_stays_in_its_row():
    x, w_gate, w_up = make_inputs((40,), 48, 80, torch.bfloat16)
    x[3, 5] = float("nan")
    x[17, 0] = float("inf")
    out = swiglu(x, w_gate, w_up)
    bad = ~torch.isfinite(out).all(dim=1)
    assert bad.nonzero().flatten().tolist() == [3, 17]


def test_seed_api():
    x, w_gate, w_up = make_inputs((2, 9), 48, 80, torch.bfloat16)
    assert torch.equal(FusedSwiGLU.apply(x, w_gate, w_up), swiglu(x, w_gate, w_up))
    x, w_gate, w_up = make_inputs((2, 9), 48, 80, torch.float16)
    assert torch.equal(FastAccumFusedSwiGLU.apply(x, w_gate, w_up),
                       swiglu(x, w_gate, w_up, fast_accum=True))


def test_module_matches_llama_mlp_layout():
    mlp = SwiGLUMLP(48, 80, device=DEVICE, dtype=torch.float32)
    names = {k: tuple(v.shape) for k, v in mlp.state_dict().items()}
    assert names == {"gate_proj.weight": (80, 48), "up_proj.weight": (80, 48),
                     "down_proj.weight": (48, 80)}
    x = torch.randn(3, 5, 48, device=DEVICE)
    out = mlp(x)
    ref = torch.nn.functional.silu(x.double() @ mlp.gate_proj.weight.double().T) \
        * (x.double() @ mlp.up_proj.weight.double().T) @ mlp.down_proj.weight.double().T
    assert relative_error(out, ref) <= TOLERANCE[torch.float32]
    out.sum().backward()
    assert mlp.gate_proj.weight.grad.shape == (80, 48)


def bad_inputs():
    x, w_gate, w_up = make_inputs((4,), 48, 80, torch.float32)
    yield "d_model", ValueError, (torch.randn(4, 47, device=DEVICE), w_gate, w_up), {}
    yield "same shape", ValueError, (x, w_gate, w_up[:, :79]), {}
    yield "2-D", ValueError, (x, w_gate[None], w_up[None]), {}
    yield "share one dtype", TypeError, (x, w_gate.half(), w_up), {}
    yield "not supported", TypeError, (x.long(), w_gate.long(), w_up.long()), {}
    yield "not supported", TypeError, (x.int(), w_gate.int(), w_up.int()), {}
    yield "fast_accum", TypeError, (x, w_gate, w_up), {"fast_accum": True}
    yield "fast_accum", TypeError, (x.bfloat16(), w_gate.bfloat16(), w_up.bfloat16()), \
        {"fast_accum": True}
    yield "must be a torch.Tensor", TypeError, (x.tolist(), w_gate, w_up), {}
    other = "meta"
    yield "one device", ValueError, (x.to(other), w_gate, w_up), {}


@pytest.mark.parametrize("case", list(bad_inputs()), ids=lambda c: c[0])
def test_bad_input_raises_clear_error(case):
    message, error, args, kwargs = case
    with pytest.raises(error, match=message):
        swiglu(*args, **kwargs)


@pytest.mark.parametrize("activation", ["silu", "gelu_tanh", "gelu"])
def test_opcheck(activation):
    ops = fused_swiglu.ops
    x, w_gate, w_up = make_inputs((37,), 48, 80, torch.float32)
    x.requires_grad_()
    for store_preact in (False, True):
        torch.library.opcheck(ops.swiglu_forward,
                              (x, w_gate, w_up, False, store_preact, activation))
    dy = torch.randn(37, 80, device=DEVICE)
    _, gate, up = ops.swiglu_forward(x.detach(), w_gate, w_up, False, True, activation)
    torch.library.opcheck(ops.gate_grad, (dy, gate, up, activation))
    torch.library.opcheck(ops.up_grad, (dy, gate, activation))
    for with_product in (False, True):
        torch.library.opcheck(ops.gate_grads_recompute,
                              (dy, x.detach(), w_gate, w_up, False, with_product, activation))
    w_down = torch.randn(80, 48, device=DEVICE, requires_grad=True)
    for recompute in (False, True):
        torch.library.opcheck(ops.swiglu_mlp_forward,
                              (x, w_gate, w_up, w_down, False, recompute, activation))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m,d_ff", [(1, 8), (37, 80), (5, 1500)], ids=str)
def test_gate_grads_kernel_writes_every_element(m, d_ff, dtype):
    # the in-place path overwrites finite g, u; this one writes into poisoned memory
    from fused_swiglu import launch
    dy, gate, up = (torch.randn(m, d_ff, device=DEVICE, dtype=dtype) for _ in range(3))
    d_gate, d_up = launch.swiglu_grads_from_preact(dy, gate, up)
    # the compiled backward's two passes, one output each
    d_gate_alone = launch.gate_grad_from_preact(dy, gate, up)
    d_up_alone = launch.up_grad_from_preact(dy, gate)
    # the float8 forward's pass after cuBLAS: y alone
    product = launch.product_from_preact(gate, up)
    g, u, dy = gate.double(), up.double(), dy.double()
    sig = torch.sigmoid(g)
    assert relative_error(product, g * sig * u) <= TOLERANCE[dtype]
    for dg in (d_gate, d_gate_alone):
        assert relative_error(dg, dy * u * sig * (1 + g * (1 - sig))) <= TOLERANCE[dtype]
    for du in (d_up, d_up_alone):
        assert relative_error(du, dy * g * sig) <= TOLERANCE[dtype]


def test_second_backward_needs_recompute(forward_path):
    x, w_gate, w_up = (t.requires_grad_() for t in make_inputs((9,), 48, 80, torch.bfloat16))
    out = swiglu(x, w_gate, w_up)
    out.sum().backward(retain_graph=True)
    # the first backward turned the saved g and u into dg and du in place
    with pytest.raises(RuntimeError, match="recompute=True"):
        out.sum().backward()
    first = x.grad.clone()
    x.grad = None
    out = swiglu(x, w_gate, w_up, recompute=True)
    out.sum().backward(retain_graph=True)
    out.sum().backward()
    assert relative_error(x.grad, 2 * first.double()) <= TOLERANCE[torch.bfloat16]


def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    mlp = SwiGLUMLP(48, 80, device=DEVICE, dtype=torch.float32)
    # the interpreter has no code generation to test on CPU; tracing is what matters there
    compiled = torch.compile(mlp, fullgraph=True, backend="inductor" if ON_GPU else "aot_eager")
    x = torch.randn(5, 48, device=DEVICE, requires_grad=True)
    out = compiled(x)
    out.sum().backward()
    x_ref = x.detach().requires_grad_()
    mlp(x_ref).sum().backward()
    assert relative_error(out, mlp(x).detach().double()) <= TOLERANCE[torch.float32]
    assert relative_error(x.grad, x_ref.grad.double()) <= TOLERANCE[torch.float32]


@triton.jit
def _to_bfloat16(src, dst, BLOCK: tl.constexpr):
    offsets = tl.arange(0, BLOCK)
    tl.store(dst + offsets, rounded(tl.load(src + offsets), tl.bfloat16))


def test_bfloat16_stores_round_to_nearest_even():
    # as a GPU converts (the interpreter alone truncates, without the kernels' helper)
    tie = 1 + 2 ** -8  # halfway between two bfloat16 numbers: rounds to the even one, 1.0
    values = [1 + 2 ** -8 + 2 ** -10, 1 + 2 ** -8 - 2 ** -10, tie, 1 + 3 * 2 ** -8,
              -(1 + 2 ** -8 + 2 ** -10), 3.0e38, float("inf"), float("nan")]
    values += torch.randn(8).tolist()
    src = torch.tensor(values, device=DEVICE)
    dst = torch.empty(16, device=DEVICE, dtype=torch.bfloat16)
    _to_bfloat16[(1,)](src, dst, BLOCK=16)
    torch.testing.assert_close(dst, src.to(torch.bfloat16), rtol=0, atol=0, equal_nan=True)


def test_compiled_backward_copies_nothing():
    # an op that overwrote the saved g and u in a compiled backward would be functionalized
    # into copies of both first (inductor does not overwrite a graph's inputs)
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd
    torch._dynamo.reset()
    backward_graphs = []

    def keep_backward(graph, example_inputs):
        backward_graphs.append(graph)
        return make_boxed_func(graph)

    backend = aot_autograd(fw_compiler=lambda graph, inputs: make_boxed_func(graph),
                           bw_compiler=keep_backward)
    compiled = torch.compile(swiglu, fullgraph=True, backend=backend)
    leaves = [t.requires_grad_() for t in make_inputs((5,), 48, 80, torch.float32)]
    out = compiled(*leaves)
    dy = torch.randn_like(out)
    out.backward(dy)
    _, ref_grads = reference_with_grads(*leaves, dy)
    for leaf, ref in zip(leaves, ref_grads):
        assert relative_error(leaf.grad, ref) <= TOLERANCE[torch.float32]
    (graph,) = backward_graphs
    targets = [str(node.target) for node in graph.graph.nodes if node.op == "call_function"]
    assert "fused_swiglu.gate_grad.default" in targets
    assert "fused_swiglu.up_grad.default" in targets
    assert not any("auto_functionalized" in t or "clone" in t or "copy" in t for t in targets)


def test_autocast():
    x, w_gate, w_up = make_inputs((64,), 256, 512, torch.float32)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        out = swiglu(x, w_gate, w_up)
    assert out.dtype == torch.bfloat16
    ref = swiglu_reference(x.double(), w_gate.double(), w_up.double())
    assert relative_error(out, ref) <= TOLERANCE[torch.bfloat16]


# CUDA graphs exist on the GPU only: these tests are defined there and nowhere else.
if ON_GPU:

    # (tokens, d_model, d_ff) not used by any other test, so that the capture is the first
    # call for the problem; the last takes the stacked kernel (M x d_model x d_ff >= 2**33),
    # the others the pointer kernel's decode tiles.
    FIRST_CALL_GRAPH_SHAPES = [(1, 320, 608), (24, 320, 608), (4096, 1536, 1376)]

    @pytest.mark.parametrize("m, d_model, d_ff", FIRST_CALL_GRAPH_SHAPES)
    def test_first_call_inside_cuda_graph_capture(m, d_model, d_ff):
        # nothing can be timed during a capture: the launch takes a default configuration, and
        # the graph replays to the right answer for new input values in the same memory
        from fused_swiglu import tuning

        x, w_gate, w_up = make_inputs((m,), d_model, d_ff, torch.bfloat16, transposed=True)
        torch.mm(x, w_gate)  # cuBLAS and the allocator initialise outside the capture
        tuned = len(tuning._chosen_configs)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = swiglu(x, w_gate, w_up)
        assert len(tuning._chosen_configs) == tuned  # the default is not remembered
        x.copy_(torch.randn_like(x))
        out.fill_(float("nan"))
        graph.replay()
        reference = swiglu_reference(x.double(), w_gate.double(), w_up.double())
        assert relative_error(out, reference) <= TOLERANCE[torch.bfloat16]
        # the first call outside a capture tunes, and agrees
        assert relative_error(swiglu(x, w_gate, w_up), reference) <= TOLERANCE[torch.bfloat16]
        assert len(tuning._chosen_configs) == tuned + 1

    @pytest.mark.parametrize("recompute", [False, True])
    def test_forward_and_backward_replay_as_cuda_graph(recompute, forward_path):
        # the training step of graph-captured fine-tuning: warm-up calls (which tune) outside the
        # capture, then forward and backward captured together and replayed on new values
        x, w_gate, w_up = (t.requires_grad_() for t in make_inputs((64,), 256, 512, torch.bfloat16,
                                                                  transposed=True))
        dy = torch.randn(64, 512, device=DEVICE, dtype=torch.bfloat16)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                torch.autograd.grad(swiglu(x, w_gate, w_up, recompute=recompute),
                                    (x, w_gate, w_up), dy)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = swiglu(x, w_gate, w_up, recompute=recompute)
            grads = torch.autograd.grad(out, (x, w_gate, w_up), dy)
        with torch.no_grad():
            x.copy_(torch.randn_like(x))
            dy.copy_(torch.randn_like(dy))
        graph.replay()
        ref_out, ref_grads = reference_with_grads(x, w_gate, w_up, dy)
        assert relative_error(out, ref_out) <= TOLERANCE[torch.bfloat16]
        for grad, ref in zip(grads, ref_grads):
            assert relative_error(grad, ref) <= TOLERANCE[torch.bfloat16]

    @pytest.mark.parametrize("recompute", [False, True])
    def test_peak_memory_of_separate_projections(recompute, forward_path):
        # Above the inputs, forward+backward peaks at y, g and u (or dg and du), dx and ONE
        # weight gradient, as a graph of separate projections does: the backward frees dg
        # before the second weight gradient's GEMM, the saved one included.
        m, d_model, d_ff = 1024, 512, 1536
        x, w_gate, w_up = (t.requires_grad_() for t in make_inputs(
            (m,), d_model, d_ff, torch.bfloat16, transposed=True))
        dy = torch.randn(m, d_ff, device=DEVICE, dtype=torch.bfloat16)
        # tuning, and cuBLAS's workspace, outside the measurement
        torch.autograd.grad(swiglu(x, w_gate, w_up, recompute=recompute), (x, w_gate, w_up), dy)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = swiglu(x, w_gate, w_up, recompute=recompute)
        grads = torch.autograd.grad(out, (x, w_gate, w_up), dy)
        peak = torch.cuda.max_memory_allocated() - base
        separate = 2 * (3 * m * d_ff + m * d_model + d_ff * d_model)
        assert peak <= separate
        _, ref_grads = reference_with_grads(x, w_gate, w_up, dy)
        for grad, ref in zip(grads, ref_grads):
            assert relative_error(grad, ref) <= TOLERANCE[torch.bfloat16]
