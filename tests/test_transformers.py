"""patch_model on tiny transformers models of every covered family: the patched model computes
the logits and gradients of the original with the same Parameters, and every MLP that is not
exactly a SwiGLU or GeGLU block is left alone."""

import copy
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
import transformers
from conftest import DEVICE
from test_swiglu import TOLERANCE, relative_error
from torch import nn
from transformers.models.llama.modeling_llama import LlamaMLP

from fused_swiglu import SwiGLUMLP, patch_model

# Small enough for the interpreter: ragged sizes, two layers, 4 heads of 8 (2 key/value heads).
TINY = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64)
# family: (config class, model class, the MLP class it holds, config entries of its own)
FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", "LlamaMLP", {}),
    "mistral": ("MistralConfig", "MistralForCausalLM", "MistralMLP", {}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", "Qwen2MLP", {}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", "Qwen3MLP", {}),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", "GemmaMLP", {}),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", "Gemma2MLP", {}),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", "Gemma3MLP", {}),
    # Phi-3's defaults point its special tokens past the tiny vocabulary
    "phi3": ("Phi3Config", "Phi3ForCausalLM", "Phi3MLP",
             {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}),
}
# what each family's act_fn computes, where it is not SiLU (gelu_pytorch_tanh)
ACTIVATION = {"gemma": "gelu_tanh", "gemma2": "gelu_tanh", "gemma3": "gelu_tanh"}
MLP_NAMES = ["model.layers.0.mlp", "model.layers.1.mlp"]
BATCH, SEQ = 2, 7  # 14 tokens: not a multiple of any tile


def make_model(family, dtype=torch.float32, device=DEVICE, **config):
    config_class, model_class, _, extra = FAMILIES[family]
    config = getattr(transformers, config_class)(**{**TINY, **extra, **config})
    return getattr(transformers, model_class)(config).to(device=device, dtype=dtype)


def tokens():
    """Random input ids and random labels for them."""
    input_ids, labels = torch.randint(0, TINY["vocab_size"], (2, BATCH, SEQ), device=DEVICE)
    return input_ids, labels


def logits_and_grads(model, input_ids, labels):
    """Logits, and the gradient of every parameter (by name) of the cross entropy loss."""
    model.zero_grad(set_to_none=True)
    logits = model(input_ids).logits
    F.cross_entropy(logits.flatten(0, 1).double(), labels.flatten()).backward()
    return logits.detach(), {name: p.grad for name, p in model.named_parameters()}


def errors_against(model, reference, input_ids, labels):
    """||ours - ref|| / ||ref|| for the logits and for each parameter's gradient."""
    logits, grads = logits_and_grads(model, input_ids, labels)
    ref_logits, ref_grads = logits_and_grads(reference, input_ids, labels)
    assert grads.keys() == ref_grads.keys()
    errors = {"logits": relative_error(logits, ref_logits.double())}
    for name, grad in grads.items():
        assert (grad is None) == (ref_grads[name] is None), name
        if grad is not None:
            errors[name] = relative_error(grad, ref_grads[name].double())
    return errors


def mlps(model):
    return [model.get_submodule(name) for name in MLP_NAMES]


@pytest.mark.parametrize("family", FAMILIES)
def test_patched_model_matches_the_original(family, kernel_outputs):
    model = make_model(family)
    patched = copy.deepcopy(model)
    params_before = [(name, id(p)) for name, p in patched.named_parameters()]
    keys_before = list(patched.state_dict())
    assert [type(m).__name__ for m in mlps(patched)] == [FAMILIES[family][2]] * 2

    assert patch_model(patched) == MLP_NAMES
    assert all(type(m) is SwiGLUMLP for m in mlps(patched))
    assert {m.activation for m in mlps(patched)} == {ACTIVATION.get(family, "silu")}
    assert {m.packed for m in mlps(patched)} == {family == "phi3"}
    assert not any(m.recompute for m in mlps(patched))
    # the very Parameters, under the same names: optimizers and checkpoints see no change
    assert [(name, id(p)) for name, p in patched.named_parameters()] == params_before
    assert list(patched.state_dict()) == keys_before
    # float32 on both sides, in full precision (no TF32): the two differ by accumulation order
    # and the activation's rounding, measured up to 1.2e-6 over the logits and all gradients;
    # the bound is the kernels' own float32 bound against float64 (reference.TOLERANCE). It
    # catches wrong wiring (weights, gate/up order) or SiLU for GeLU; exact GeLU for its tanh
    # approximation moves these models by only ~2e-5, which the activation check above covers.
    errors = errors_against(patched, model, *tokens())
    assert max(errors.values()) <= TOLERANCE[torch.float32], errors
    assert kernel_outputs  # the patched model ran the kernels


def test_bfloat16_within_twice_pytorch_error():
    # bfloat16 rounds at every step, so the bar is PyTorch's own error: against a float64 copy
    # of the same model, the patched model's error is at most twice the original's, for the
    # logits and every gradient (measured: at most 1.05 times, both near 1e-2)
    model = make_model("llama", torch.bfloat16)
    patched = copy.deepcopy(model)
    assert patch_model(patched) == MLP_NAMES
    reference = copy.deepcopy(model).double()
    ours = errors_against(patched, reference, *tokens())
    theirs = errors_against(model, reference, *tokens())
    assert ours.keys() == theirs.keys()
    worse = {k: (ours[k], theirs[k]) for k in ours if ours[k] > 2 * theirs[k]}
    assert not worse, worse


def test_fp8_is_passed_on():
    # float8 projections: the logits and every gradient within float8's error of a float64
    # copy (test_fp8_training.FP8_TOLERANCE; measured on this tiny Llama: the MLP weights'
    # gradients 0.053-0.064, the logits 0.0055, where bfloat16 alone gives 0.006-0.009 and
    # 0.0047)
    model = make_model("llama", torch.bfloat16)
    patched = copy.deepcopy(model)
    assert patch_model(patched, fp8=True) == MLP_NAMES
    assert all(m.fp8 is True for m in mlps(patched))
    errors = errors_against(patched, copy.deepcopy(model).double(), *tokens())
    assert max(errors.values()) <= 0.125, errors


def test_recompute_is_passed_on():
    model = make_model("qwen2")
    patched = copy.deepcopy(model)
    assert patch_model(patched, recompute=True) == MLP_NAMES
    assert all(m.recompute for m in mlps(patched))
    errors = errors_against(patched, model, *tokens())
    assert max(errors.values()) <= TOLERANCE[torch.float32], errors


def test_save_and_load_round_trip(tmp_path):
    patched = make_model("phi3")
    patch_model(patched)
    patched.save_pretrained(tmp_path)
    loaded, info = transformers.Phi3ForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched keys
    loaded.to(DEVICE)
    assert patch_model(loaded) == MLP_NAMES
    state, loaded_state = patched.state_dict(), loaded.state_dict()
    assert list(state) == list(loaded_state)
    assert all(torch.equal(state[k], loaded_state[k]) for k in state)
    input_ids, _ = tokens()
    with torch.no_grad():
        assert torch.equal(loaded(input_ids).logits, patched(input_ids).logits)


# transformers' hidden_act names -> what their function computes, by the probe: gelu_new,
# gelu_fast and gelu_accurate are spellings of the tanh formula, gelu_python of the erf one;
# quick_gelu (x * sigmoid(1.702 x)), relu and the clipped gelu_10 are none of ours
HIDDEN_ACTS = {"silu": "silu", "gelu_new": "gelu_tanh", "gelu_fast": "gelu_tanh",
               "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "gelu_python": "gelu",
               "quick_gelu": None, "relu": None, "gelu_10": None}


@pytest.mark.parametrize("hidden_act", HIDDEN_ACTS)
def test_activation_is_recognised_by_what_it_computes(hidden_act):
    model = make_model("llama", hidden_act=hidden_act, num_hidden_layers=1)
    activation = HIDDEN_ACTS[hidden_act]
    patched = copy.deepcopy(model)
    names = patch_model(patched)
    if activation is None:
        assert names == [] and type(patched.model.layers[0].mlp) is LlamaMLP
        return
    assert names == MLP_NAMES[:1] and patched.model.layers[0].mlp.activation == activation
    if hidden_act in ("gelu_new", "gelu"):  # one run per GeLU: the module computes it
        errors = errors_against(patched, model, *tokens())
        assert max(errors.values()) <= TOLERANCE[torch.float32], errors


def test_activation_set_on_the_module_wins_over_the_config():
    # a GeLU MLP under SiLU's names: the config says silu, act_fn computes gelu
    model = make_model("llama", num_hidden_layers=2)
    model.model.layers[0].mlp.act_fn = nn.GELU()
    model.model.layers[1].mlp.act_fn = transformers.activations.QuickGELUActivation()
    assert patch_model(model) == MLP_NAMES[:1]
    assert model.model.layers[0].mlp.activation == "gelu"
    assert type(model.model.layers[1].mlp) is LlamaMLP


def test_mlp_with_biases_is_left_alone():
    model = make_model("llama", mlp_bias=True)
    assert patch_model(model) == []
    assert all(type(m) is LlamaMLP for m in mlps(model))


class GatedMLP(nn.Module):
    """A SwiGLU MLP of one's own, like the HF ones, and below the ways a module can differ."""

    def __init__(self, act_fn=None, linear=nn.Linear):
        super().__init__()
        self.gate_proj, self.up_proj = linear(32, 48, bias=False), linear(32, 48, bias=False)
        self.down_proj = linear(48, 32, bias=False)
        self.act_fn = nn.SiLU() if act_fn is None else act_fn

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class PackedMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.gate_up_proj = nn.Linear(32, 96, bias=False)
        self.down_proj, self.activation_fn = nn.Linear(48, 32, bias=False), nn.SiLU()

    def forward(self, x):
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(self.activation_fn(gate) * up)


class SwappedMLP(GatedMLP):  # the activation on the up projection
    def forward(self, x):
        return self.down_proj(self.gate_proj(x) * self.act_fn(self.up_proj(x)))


class ClampedMLP(GatedMLP):  # a clamp with no attribute to show for it
    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x).clamp(max=20)) * self.up_proj(x))


class LimitedMLP(ClampedMLP):  # a clamp limit kept as an attribute, as DeepSeek-V4 does
    def __init__(self):
        super().__init__()
        self.limit = 20.0


class UpFirstMLP(PackedMLP):  # up rows first, as in Phi-4's audio MLP
    def forward(self, x):
        up, gate = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(up * self.activation_fn(gate))


class QuantizedLinear(nn.Linear):
    pass


class LearnedSiLU(nn.Module):  # SiLU today, not after a step of training
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, z):
        return self.scale * F.silu(z)


def test_only_exact_gated_mlps_are_replaced():
    hooked, hooked_linear, wrapped, with_dropout, shared = (GatedMLP() for _ in range(5))
    hooked.register_forward_hook(lambda *args: None)
    hooked_linear.up_proj.register_forward_pre_hook(lambda *args: None)
    wrapped.forward = wrapped.forward  # an instance-level forward, as accelerate's hooks set
    with_dropout.dropout = nn.Dropout(0.1)
    model = nn.ModuleDict({
        "plain": GatedMLP(),
        "packed": PackedMLP(),
        "gelu": GatedMLP(act_fn=nn.GELU(approximate="tanh")),
        "function": GatedMLP(act_fn=F.gelu),  # a plain function, not a module
        "first": shared,
        "swapped": SwappedMLP(),
        "clamped": ClampedMLP(),
        "limited": LimitedMLP(),
        "up_first": UpFirstMLP(),
        "learned": GatedMLP(act_fn=LearnedSiLU()),
        "prelu": GatedMLP(act_fn=nn.PReLU()),
        "quantized": GatedMLP(linear=QuantizedLinear),
        "hooked": hooked,
        "hooked_linear": hooked_linear,
        "wrapped": wrapped,
        "dropout": with_dropout,
        "second": shared,
    }).to(DEVICE)
    original = copy.deepcopy(model)
    names = patch_model(model)
    assert names == ["plain", "packed", "gelu", "function", "first"]
    assert model["first"] is model["second"]  # one module at two places: one replacement
    for name, module in model.items():
        assert (type(module) is SwiGLUMLP) == (name in names + ["second"]), name
    assert [model[n].activation for n in names] == ["silu", "silu", "gelu_tanh", "gelu", "silu"]
    assert model["packed"].packed
    # what each replacement computes: the original's output and gradients
    x = torch.randn(5, 32, device=DEVICE)
    for name in names:
        out, ref = model[name](x), original[name](x)
        d_out = torch.randn_like(out)
        grads = torch.autograd.grad(out, list(model[name].parameters()), d_out)
        ref_grads = torch.autograd.grad(ref, list(original[name].parameters()), d_out)
        for ours, theirs in zip((out, *grads), (ref, *ref_grads)):
            assert relative_error(ours, theirs.double()) <= TOLERANCE[torch.float32], name
    assert patch_model(model) == []  # patched already


def test_meta_device_model_is_patched_before_loading():
    model = make_model("gemma3", device="meta")
    assert patch_model(model) == MLP_NAMES
    assert all(m.gate_proj.weight.is_meta for m in mlps(model))


def test_flags_and_model_are_checked():
    model = make_model("llama", num_hidden_layers=1)
    with pytest.raises(ValueError, match="unknown fp8 recipe"):
        patch_model(model, fp8="tensorwise")
    with pytest.raises(TypeError, match="recompute"):
        patch_model(model, recompute="yes")
    with pytest.raises(TypeError, match="fp8"):
        patch_model(model, fp8=1)
    with pytest.raises(TypeError, match="nn.Module"):
        patch_model(model.state_dict())
    assert type(model.model.layers[0].mlp) is LlamaMLP  # the errors changed nothing


def test_import_needs_no_transformers():
    # a fresh interpreter: importing fused_swiglu and patching a plain module load no transformers
    code = ("import sys, torch, fused_swiglu\n"
            "class MLP(torch.nn.Module):\n"
            "    def __init__(self):\n"
            "        super().__init__()\n"
            "        self.gate_proj = torch.nn.Linear(8, 12, bias=False)\n"
            "        self.up_proj = torch.nn.Linear(8, 12, bias=False)\n"
            "        self.down_proj = torch.nn.Linear(12, 8, bias=False)\n"
            "        self.act_fn = torch.nn.SiLU()\n"
            "    def forward(self, x):\n"
            "        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))\n"
            "assert fused_swiglu.patch_model(torch.nn.Sequential(MLP())) == ['0']\n"
            "assert 'transformers' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True)
