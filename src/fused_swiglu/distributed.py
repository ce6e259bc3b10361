"""Tensor parallelism for SwiGLUMLP: the layout that ``parallelize_module`` gives it under the
plan of HuggingFace's ``tp_plan`` and torchtitan for Llama-style MLPs,

    {"gate_proj": ColwiseParallel(), "up_proj": ColwiseParallel(), "down_proj": RowwiseParallel()}

computed with this library's kernels on each rank's shards.

SwiGLUMLP hands its weights to the kernels instead of calling its Linears, so the hooks that
ColwiseParallel and RowwiseParallel put on the Linears never run; this module does their job.
Rank r holds a block G_r, U_r of the rows of gate_proj.weight and up_proj.weight (about
d_ff/n of the intermediate features, Shard(0)) and the block D_r of the matching columns of
down_proj.weight (Shard(1)). With x the whole
input on every rank,

    out = sum_r (act(x @ G_r.T) * (x @ U_r.T)) @ D_r.T

so each rank runs ``swiglu_mlp`` on its shards and one all-reduce sums the partial outputs.
Backward, with d_out the whole (replicated) output gradient on every rank: the gradients of
G_r, U_r and D_r that the local backward computes are exactly rank r's shards of the full
gradients (they depend on x, d_out and the rank's own intermediate features only), and the
local dx is rank r's part of a sum over ranks, so dx needs one all-reduce.

The two communications are DTensor's own differentiable conversions, the ones the Linears'
hooks use, with these backward rules (torch/distributed/tensor/_api.py, _redistribute.py):

- output: ``from_local(partial, [Partial()])`` -> ``redistribute([Replicate()])`` ->
  ``to_local()``: the forward all-reduce, as RowwiseParallel's output hook does. Backward,
  ``to_local`` wraps d_out as Replicate, ``redistribute``'s backward keeps a Replicate
  gradient Replicate for a Partial source (it never splits it), and ``from_local``'s
  backward maps a Partial forward placement to a Replicate gradient: d_out reaches the
  kernels' backward unchanged on every rank, with no communication.
- input: ``from_local(x, [Replicate()])`` -> ``to_local(grad_placements=[Partial()])``: no
  communication forward. Backward, ``to_local`` declares the local dx a Partial sum and
  ``from_local``'s backward redistributes it to its forward placement, Replicate: the one
  all-reduce of dx. The gate and up projections share that x, so their contributions are
  summed locally first (by the kernels' backward) and dx is reduced once, where the plain
  Linears reduce it once per Linear.
- weights: ``weight.to_local()`` with its default gradient placements, the weight's own: the
  local weight gradient becomes a DTensor gradient with the parameter's placements.

That is Megatron's "copy to / reduce from the tensor-parallel region" pair, and autograd
Functions over ``torch.distributed.all_reduce`` would do the same; DTensor's conversions are
used instead because their backward rules are the ones the plain Linears' hooks rely on (so
the gradients come back in the layouts the plan gives them), and torch.compile traces them
(fullgraph=True) where a raw in-place collective inside an autograd.Function needs more care.
"""

from torch import Tensor
from torch.distributed.tensor import DTensor, Partial, Replicate, Shard

from .functional import swiglu_mlp

# the placements of the weights under the plan: nn.Linear weights are (out_features,
# in_features), so ColwiseParallel (output features split) is Shard(0) and RowwiseParallel
# (input features split) Shard(1)
PLAN = {"gate_proj": (Shard(0),), "up_proj": (Shard(0),), "down_proj": (Shard(1),)}
PLAN_TEXT = ("gate_proj and up_proj ColwiseParallel (weight Shard(0)), down_proj RowwiseParallel "
             "(weight Shard(1)), on one 1-D device mesh")


def tensor_parallel_forward(module, x: Tensor) -> Tensor:
    """SwiGLUMLP's forward when its weights are DTensors of the plan above.

    x: the whole input on every rank, a plain tensor (what HuggingFace models pass) or a
    DTensor with Replicate placement on the weights' mesh. Returns a plain tensor, the whole
    output on every rank, as RowwiseParallel (``use_local_output=True``, its default) returns.
    Gradients: the weights' are DTensors with the weights' placements, x's is the whole
    gradient (a Replicate DTensor for a DTensor x).

    The plan's Linear styles are taken to have their default input and output layouts: the
    module sees the weights' placements, not the styles (whose hooks on the Linears never run).
    A sequence-parallel plan (``ColwiseParallel(input_layouts=Shard(1))``,
    ``RowwiseParallel(output_layouts=Shard(1))``) is not supported: a sequence-sharded DTensor
    x raises a ValueError, but a plain tensor holding one rank's sequence shard cannot be told
    from a whole input, and would give a wrong result; redistribute x to Replicate first
    (``PrepareModuleInput(desired_input_layouts=Replicate())`` on the MLP).

    FSDP2 over this plan (``parallelize_module`` on the "tp" dimension of a (dp, tp) mesh,
    then ``fully_shard`` on the "dp" one) works: FSDP2 gathers the data-parallel shards before
    the forward, which then sees weights of the plan on the "tp" mesh.

    Raises NotImplementedError for the packed ``gate_up_proj`` layout and for weights on a mesh
    of more than one dimension at the forward, ValueError for any other placement of the
    weights.
    """
    mesh = _plan_mesh(module)
    x_local = _replicated_input(x, mesh)
    w_gate = module.gate_proj.weight.to_local()
    w_up = module.up_proj.weight.to_local()
    w_down = module.down_proj.weight.to_local()
    partial_out = swiglu_mlp(x_local, w_gate.T, w_up.T, w_down.T, activation=module.activation,
                             recompute=module.recompute, fast_accum=module.fast_accum)
    out = DTensor.from_local(partial_out, mesh, (Partial(),), run_check=False)
    return out.redistribute(mesh, (Replicate(),)).to_local()


def _describe(weight) -> str:
    if not isinstance(weight, DTensor):
        return f"a plain {type(weight).__name__}"
    mesh = weight.device_mesh
    names = "" if mesh.mesh_dim_names is None else f" {mesh.mesh_dim_names}"
    return f"{list(weight.placements)} on a mesh of shape {tuple(mesh.shape)}{names}"


def _plan_mesh(module):
    """The weights' device mesh, after checking that they are laid out as the plan has it."""
    if module.packed:
        raise NotImplementedError(
            f"SwiGLUMLP(packed=True) under tensor parallelism is not supported "
            f"(gate_up_proj.weight: {_describe(module.gate_up_proj.weight)}; down_proj.weight: "
            f"{_describe(module.down_proj.weight)}): a row split of the packed weight gives "
            f"the first ranks gate rows and the last ranks up rows, not matching halves of "
            f"both. Use packed=False with {PLAN_TEXT}")
    weights = {name: getattr(module, name).weight for name in PLAN}
    layout = "; ".join(f"{name}.weight: {_describe(w)}" for name, w in weights.items())
    meshes = [w.device_mesh for w in weights.values() if isinstance(w, DTensor)]
    if any(mesh.ndim != 1 for mesh in meshes):
        raise NotImplementedError(
            f"SwiGLUMLP: weights on a device mesh of more than one dimension are not supported "
            f"({layout}); tensor parallelism needs {PLAN_TEXT} (with FSDP2 on top, "
            f"fully_shard over parallelize_module on a (dp, tp) mesh, the forward gets such "
            f"weights)")
    if not (all(isinstance(w, DTensor) and tuple(w.placements) == PLAN[name]
                for name, w in weights.items())
            and all(mesh == meshes[0] for mesh in meshes)):
        raise ValueError(f"SwiGLUMLP: unsupported tensor-parallel layout ({layout}); the "
                         f"supported one is {PLAN_TEXT}")
    return meshes[0]


def _replicated_input(x, mesh) -> Tensor:
    """x's local tensor, whose gradient is summed over the ranks in the backward."""
    if isinstance(x, DTensor):
        if x.device_mesh != mesh or not all(p.is_replicate() for p in x.placements):
            layout = f"{list(x.placements)} on a mesh of shape {tuple(x.device_mesh.shape)}"
            raise ValueError(
                f"SwiGLUMLP under tensor parallelism takes x replicated on the weights' mesh "
                f"(a plain tensor or a DTensor with [Replicate()]), got a DTensor x with "
                f"{layout}; sequence-parallel inputs (Shard on the sequence dimension) are "
                f"not supported: redistribute x to [Replicate()] first")
        # the whole gradient comes back as a Replicate DTensor
        x = x.to_local()
    return DTensor.from_local(x, mesh, (Replicate(),), run_check=False).to_local(
        grad_placements=(Partial(),))
