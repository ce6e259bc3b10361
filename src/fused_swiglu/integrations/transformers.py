"""patch_model: swap the SwiGLU and GeGLU MLPs of a HuggingFace transformers model for
SwiGLUMLP, in place, reusing their parameters.

Recognition goes by what a module holds and computes, never by a class or activation name, so
this file does not import transformers (an optional dependency): a module is a gated MLP when
its structure fits, its activation computes one of ``checks.ACTIVATIONS`` on a probe, and its
forward computes ``down_proj(act(gate_proj(x)) * up_proj(x))`` on a probe.

There is no class-level patch (swapping ``LlamaMLP`` for a subclass of ours before the model is
built): it would have to choose the activation from the config's name, and it would change
every model of the process. patch_model copies nothing and runs on a meta-device model as well,
so it fits at the same point, before the weights are loaded, or after ``from_pretrained``.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import ACTIVATIONS, SUPPORTED_DTYPES, check_flags
from ..fp8.options import fp8_recipe
from ..modules import SwiGLUMLP

# act_fn in Llama, Mistral, Qwen2/3 and Gemma 1-3; activation_fn in Phi-3
ACTIVATION_ATTRIBUTES = ("act_fn", "activation_fn")
SEPARATE = ("gate_proj", "up_proj", "down_proj")
PACKED = ("gate_up_proj", "down_proj")

# What a plain nn.Module keeps in its __dict__, and what HuggingFace adds to its MLPs (none of it
# read by their forward). Any other attribute, say a clamp limit, a scale, a dropout rate or an
# activation sparsity (Gemma3nTextMLP), may change what forward computes: the module is left
# alone. So is one with an instance-level forward (accelerate's offloading hooks wrap it so).
ALLOWED_ATTRIBUTES = frozenset(vars(nn.Module())) | {
    "_is_hf_initialized", "config", "hidden_size", "intermediate_size", *ACTIVATION_ATTRIBUTES}
LINEAR_ATTRIBUTES = frozenset(vars(nn.Module())) | {"_is_hf_initialized", "in_features",
                                                    "out_features"}
# hooks that a replacement would silently drop (a Linear's forward hooks too: SwiGLUMLP reads
# the Linears' weights and never calls their forward)
HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
         "_state_dict_hooks", "_state_dict_pre_hooks", "_load_state_dict_pre_hooks",
         "_load_state_dict_post_hooks")

# The activation probe: the range where SiLU and the GeLUs differ most, and tails past +-10,
# where a clipped GeLU (transformers' gelu_10) parts from GeLU.
ACTIVATION_PROBE = torch.cat([torch.linspace(-8.0, 8.0, 1601),
                              torch.tensor([-30.0, -20.0, -12.0, -10.5, 10.5, 12.0, 20.0, 30.0])])
# max |act(z) - ref(z)| / (1 + |ref(z)|) on the probe. Other float32 spellings of the same
# function (transformers' gelu_new, gelu_fast and gelu_accurate are the tanh formula,
# gelu_python the erf one) stay below 7e-7, float32 rounding; the nearest different function
# is 4.7e-4 away (exact GeLU against its tanh approximation), quick_gelu 2e-2.
ACTIVATION_TOLERANCE = 1e-5
# The forward probe runs in float64 with small random weights: the same computation agrees to
# float64 rounding (or float32, for a forward that computes the activation in float32); a
# different one (a clamp, a scale, gate and up swapped) is off by far more.
FORWARD_TOLERANCE = 1e-5


def patch_model(model: nn.Module, *, recompute: bool = False, fp8=False) -> list[str]:
    """Replace, in place, every SwiGLU or GeGLU MLP of ``model`` with a :class:`SwiGLUMLP`.

    Covers LlamaMLP, MistralMLP, Qwen2MLP, Qwen3MLP, GemmaMLP, Gemma2MLP, Gemma3MLP and
    Phi3MLP (packed ``gate_up_proj``, gate rows first), and any module like them: children
    ``gate_proj``, ``up_proj``, ``down_proj`` (or ``gate_up_proj``, ``down_proj``) that are
    plain bias-free ``nn.Linear`` layers with plain Parameters, and an ``act_fn`` (or
    ``activation_fn``) that computes SiLU, tanh-approximated GeLU or exact GeLU. The activation
    is found by evaluating it on a float32 probe against ``fused_swiglu.checks.ACTIVATIONS``,
    never from its name, and the module's forward is checked to compute
    ``down_proj(act(gate_proj(x)) * up_proj(x))`` on a small float64 probe (run on the CPU with
    probe weights, so meta-device models work too).

    Left alone, so that the model computes what it did: modules whose activation computes
    anything else (ReLU, quick_gelu, a clipped GeLU, a learned activation with parameters);
    Linears with biases, of other types (quantized layers, LoRA wrappers, parametrizations) or
    with tensor-subclass weights; modules with other children, parameters, buffers or
    attributes than a HuggingFace MLP has (dropout, clamp limits, scales); modules or Linears
    with hooks or an instance-level forward (accelerate offloading, FSDP, tensor-parallel
    plans: patch first, then wrap); weights with mixed dtypes or devices; and ``model`` itself
    (it has no parent to hold a replacement).

    Nothing is copied: each SwiGLUMLP is built on the meta device and takes the old module's
    very Linear children, so parameter identity, ``requires_grad``, optimizer state,
    ``state_dict`` keys (``model.layers.0.mlp.gate_proj.weight``, ...) and
    ``save_pretrained``/``from_pretrained`` stay as they were, in the weights' dtype and
    device. The new module takes the old one's train/eval mode and nothing else of it: plain
    attributes such as ``config`` or ``intermediate_size`` are not carried over
    (``down_proj.in_features`` is the intermediate size). A module held at several places is
    replaced by one SwiGLUMLP at all of them. Patching a patched model replaces nothing.

    Args:
        model: any ``nn.Module``, typically a transformers ``PreTrainedModel``.
        recompute: passed to every SwiGLUMLP: its backward recomputes the two projections
            instead of keeping tensors of size tokens x intermediate_size.
        fp8: passed to every SwiGLUMLP: True or a recipe name runs its projections and their
            gradients in float8 (:func:`fused_swiglu.swiglu`'s fp8).

    Returns:
        The qualified names of the replaced modules, in ``model.named_modules()`` order.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"patch_model: model must be a torch.nn.Module, got "
                        f"{type(model).__name__}")
    check_flags("patch_model", recompute=recompute)
    fp8_recipe("patch_model", fp8, False)
    replacements, names = {}, []
    for name, module in model.named_modules():
        found = _recognise(module) if name else None
        if found is not None:
            replacements[id(module)] = _replacement(module, *found, recompute, fp8)
            names.append(name)
    for parent in list(model.modules()):
        for child_name, child in list(parent._modules.items()):
            if child is not None and id(child) in replacements:
                setattr(parent, child_name, replacements[id(child)])
    return names


def _recognise(module: nn.Module) -> tuple[str, bool] | None:
    """(activation, packed) when SwiGLUMLP computes exactly what module does, else None."""
    children = dict(module._modules)
    linears = PACKED if "gate_up_proj" in children else SEPARATE
    acts = [a for a in ACTIVATION_ATTRIBUTES if a in children or a in vars(module)]
    if len(acts) != 1 or set(children) - set(acts) != set(linears):
        return None
    if module._parameters or module._buffers or set(vars(module)) - ALLOWED_ATTRIBUTES:
        return None
    if not _untouched(module) or not all(_plain_linear(children[n]) for n in linears):
        return None
    *projections, down = (children[n] for n in linears)
    d_model, d_ff = down.out_features, down.in_features
    rows = 2 * d_ff if linears is PACKED else d_ff
    if any(p.weight.shape != (rows, d_model) for p in projections):
        return None
    weights = [lin.weight for lin in (*projections, down)]
    if len({w.dtype for w in weights}) != 1 or len({w.device for w in weights}) != 1:
        return None
    if weights[0].dtype not in SUPPORTED_DTYPES:
        return None
    activation = _activation_of(getattr(module, acts[0]))
    if activation is None or not _computes_gated_mlp(module, activation, linears is PACKED):
        return None
    return activation, linears is PACKED


def _untouched(module: nn.Module) -> bool:
    return "forward" not in vars(module) and not any(getattr(module, h) for h in HOOKS)


def _plain_linear(module) -> bool:
    return (type(module) is nn.Linear and module.bias is None
            and type(module.weight) is nn.Parameter and _untouched(module)
            and not module._buffers and set(vars(module)) <= LINEAR_ATTRIBUTES)


def _activation_of(act_fn):
    """The name in ACTIVATIONS of the function act_fn computes, or None."""
    if not callable(act_fn):
        return None
    if isinstance(act_fn, nn.Module) and (any(True for _ in act_fn.parameters())
                                          or any(True for _ in act_fn.buffers())):
        return None  # learned or stateful: its values may change in training
    try:
        with torch.no_grad():
            out = act_fn(ACTIVATION_PROBE.clone())  # a clone, in case it works in place
    except Exception:  # an activation that cannot take a CPU float32 tensor is not one of ours
        return None
    if not isinstance(out, Tensor) or out.shape != ACTIVATION_PROBE.shape:
        return None
    out = out.double()
    for name, fn in ACTIVATIONS.items():
        ref = fn(ACTIVATION_PROBE).double()
        if ((out - ref).abs() / (1 + ref.abs())).max() <= ACTIVATION_TOLERANCE:
            return name
    return None


def _computes_gated_mlp(module: nn.Module, activation: str, packed: bool) -> bool:
    """Whether module's forward is ``down(act(gate(x)) * up(x))``, on float64 probe weights of
    a small size. Token scales from 1/4 to 32 put pre-activations from about +-0.5 to +-200:
    small ones show a changed activation, large ones any clamp up to ~100; each token is judged
    on its own, so the large ones do not hide the small."""
    gen = torch.Generator().manual_seed(0)  # leaves the global random state alone
    d_model, d_ff = 6, 5

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    x = rand(8, d_model) * 2.0 ** torch.arange(-2, 6, dtype=torch.float64)[:, None]
    w_gate, w_up, w_down = rand(d_ff, d_model), rand(d_ff, d_model), rand(d_model, d_ff)
    weights = ({"gate_up_proj.weight": torch.cat([w_gate, w_up])} if packed
               else {"gate_proj.weight": w_gate, "up_proj.weight": w_up})
    weights["down_proj.weight"] = w_down
    try:
        with torch.no_grad():
            out = torch.func.functional_call(module, weights, (x,))
    except Exception:  # a forward that needs more than x, or the real sizes
        return False
    expected = F.linear(ACTIVATIONS[activation](F.linear(x, w_gate)) * F.linear(x, w_up),
                        w_down)
    if not isinstance(out, Tensor) or out.shape != expected.shape:
        return False
    error = (out.double() - expected).norm(dim=-1) / expected.norm(dim=-1)
    return bool((error <= FORWARD_TOLERANCE).all())


def _replacement(old: nn.Module, activation: str, packed: bool, recompute: bool,
                 fp8) -> SwiGLUMLP:
    down = old.down_proj
    new = SwiGLUMLP(down.out_features, down.in_features, activation=activation, packed=packed,
                    device="meta", recompute=recompute, fp8=fp8)
    for name in PACKED if packed else SEPARATE:
        setattr(new, name, getattr(old, name))  # the very Linears: nothing copied
    return new.train(old.training)
