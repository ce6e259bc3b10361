"""The gated MLP as an nn.Module, with the parameter names of HuggingFace's Llama / Mistral /
Qwen / Gemma MLPs (gate_proj, up_proj, down_proj) or of Phi-3's (gate_up_proj, down_proj)."""

from torch import Tensor, nn

try:
    from torch.distributed.tensor import DTensor
except ImportError:  # a PyTorch built without distributed support
    DTensor = ()

from .checks import check_activation, check_flags
from .fp8.options import fp8_recipe
from .functional import swiglu_mlp


class SwiGLUMLP(nn.Module):
    """``down_proj(act(gate_proj(x)) * up_proj(x))`` with the gate fused (:func:`swiglu_mlp`).

    The parameter names match HuggingFace's LlamaMLP, MistralMLP, Qwen2MLP, Qwen3MLP and
    GemmaMLP, so such an MLP's state_dict loads as it is; with ``packed=True`` the gate and up
    projections are one ``gate_up_proj = nn.Linear(hidden_size, 2 * intermediate_size)``, gate
    rows first, as in Phi3MLP. Autograd keeps two tensors of size tokens x intermediate_size
    for the backward (the pre-activations; not the input of down_proj, which the backward
    writes again), and with ``recompute=True`` none (it recomputes the two projections).
    ``activation`` is "silu" (SwiGLU, the default), "gelu_tanh" (GeGLU with the tanh
    approximation, Gemma's ``gelu_pytorch_tanh``) or "gelu" (exact GeGLU).
    ``fast_accum=True`` (float16 weights only) lets the projections accumulate in float16, as
    for :func:`swiglu`. Under tensor parallelism (``parallelize_module`` with ColwiseParallel
    on gate_proj and up_proj, RowwiseParallel on down_proj, sequence-parallel layouts too) each
    rank computes its shards with the same kernels and the collectives the plain Linears would
    run: one all-reduce forward and one backward under the default styles
    (``fused_swiglu.distributed``). ``fp8=True`` (or a recipe name) runs every projection and
    its gradients in float8, the parameters staying in their dtype (:func:`swiglu`'s fp8);
    not under tensor parallelism yet (NotImplementedError).
    """

    def __init__(self, hidden_size: int, intermediate_size: int, *, activation: str = "silu",
                 packed: bool = False, device=None, dtype=None, recompute: bool = False,
                 fast_accum: bool = False, fp8=False):
        check_flags("SwiGLUMLP", packed=packed, recompute=recompute, fast_accum=fast_accum)
        check_activation("SwiGLUMLP", activation)
        fp8_recipe("SwiGLUMLP", fp8, fast_accum)
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        if packed:
            self.gate_up_proj = nn.Linear(hidden_size, 2 * intermediate_size, bias=False,
                                          **factory)
        else:
            self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False, **factory)
            self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False, **factory)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False, **factory)
        self.activation = activation
        self.packed = packed
        self.recompute = recompute
        self.fast_accum = fast_accum
        self.fp8 = fp8

    def projection_weights(self):
        """(w_gate, w_up, w_down) as the (d_model, d_ff) and (d_ff, d_model) matrices that
        swiglu_mlp takes: transposed views of the Linears' (out, in) weights, not copies."""
        if self.packed:
            both = self.gate_up_proj.weight
            d_ff = both.shape[0] // 2
            w_gate, w_up = both[:d_ff].T, both[d_ff:].T
        else:
            w_gate, w_up = self.gate_proj.weight.T, self.up_proj.weight.T
        return w_gate, w_up, self.down_proj.weight.T

    def forward(self, x: Tensor) -> Tensor:
        weights = self.projection_weights()
        if any(isinstance(w, DTensor) for w in weights):
            if self.fp8:
                raise NotImplementedError("SwiGLUMLP(fp8=...) under tensor parallelism is not "
                                          "supported yet; use fp8=False")
            from .distributed import tensor_parallel_forward
            return tensor_parallel_forward(self, x)
        return swiglu_mlp(x, *weights, activation=self.activation, recompute=self.recompute,
                          fast_accum=self.fast_accum, fp8=self.fp8)

    def extra_repr(self) -> str:
        return (f"activation={self.activation!r}, packed={self.packed}, "
                f"recompute={self.recompute}, fast_accum={self.fast_accum}, fp8={self.fp8!r}")
