"""SwiGLU MLP as an nn.Module, with the Llama / Mistral / Qwen parameter names."""

from torch import Tensor, nn

from .checks import check_flags
from .functional import swiglu_mlp


class SwiGLUMLP(nn.Module):
    """``down_proj(silu(gate_proj(x)) * up_proj(x))`` with the gate fused (:func:`swiglu_mlp`).

    The parameter names match HuggingFace's LlamaMLP, MistralMLP and Qwen2MLP, so such an MLP's
    state_dict loads as it is. Autograd keeps two tensors of size tokens x intermediate_size
    for the backward (the pre-activations; not the input of down_proj, which the backward
    writes again), and with ``recompute=True`` none (it recomputes the two projections).
    ``fast_accum=True`` (float16 weights only) lets the projections accumulate in float16, as
    for :func:`swiglu`.
    """

    def __init__(self, hidden_size: int, intermediate_size: int, *, device=None, dtype=None,
                 recompute: bool = False, fast_accum: bool = False):
        check_flags("SwiGLUMLP", recompute=recompute, fast_accum=fast_accum)
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False, **factory)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False, **factory)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False, **factory)
        self.recompute = recompute
        self.fast_accum = fast_accum

    def forward(self, x: Tensor) -> Tensor:
        # nn.Linear keeps (out, in) weights: their transposes are strided views, not copies
        return swiglu_mlp(x, self.gate_proj.weight.T, self.up_proj.weight.T,
                          self.down_proj.weight.T, recompute=self.recompute,
                          fast_accum=self.fast_accum)

    def extra_repr(self) -> str:
        return f"recompute={self.recompute}, fast_accum={self.fast_accum}"
