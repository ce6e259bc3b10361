"""Tensor parallelism for SwiGLUMLP: the layouts that ``parallelize_module`` gives it under the
plan of HuggingFace's ``tp_plan`` and torchtitan for Llama-style MLPs,

    {"gate_proj": ColwiseParallel(), "up_proj": ColwiseParallel(), "down_proj": RowwiseParallel()}

and under its sequence-parallel form (``ColwiseParallel(input_layouts=Shard(1))`` on gate_proj
and up_proj, ``RowwiseParallel(output_layouts=Shard(1))`` on down_proj) or any other input and
output layouts of these styles, computed with this library's kernels on each rank's shards.

Rank r holds a block G_r, U_r of the rows of gate_proj.weight and up_proj.weight (about d_ff/n
of the intermediate features, Shard(0)) and the block D_r of the matching columns of
down_proj.weight (Shard(1)). With x the whole input,

    out = sum_r (act(x @ G_r.T) * (x @ U_r.T)) @ D_r.T

so each rank runs ``swiglu_mlp`` on the whole x and its own shards, and the partial outputs
are summed over the ranks. The gradients of G_r, U_r and D_r that the local backward computes
are exactly rank r's shards of the full gradients (they depend on the whole x, the whole d_out
and the rank's own intermediate features only); ``weight.to_local()``, with the weight's own
gradient placements, hands them back as DTensor gradients in the parameters' layouts. The
local dx is rank r's part of a sum over ranks.

Where x comes from and where the output goes is the plan's to say, and the plan says it in
hooks: ``parallelize_module`` registers each style's input function on its Linear as a forward
pre-hook and its output function as a forward hook (``distribute_module``). SwiGLUMLP hands its
weights to the kernels instead of calling its Linears, so ``nn.Module.__call__`` never runs
them; the forward runs the two at the MLP's boundary itself:

- input: gate_proj's forward pre-hooks on ``(x,)``, as ``__call__`` would. ColwiseParallel's
  takes a plain x as a DTensor in its ``input_layouts`` (Replicate: the whole input; Shard(1):
  this rank's sequence shard) and redistributes it to Replicate, the layout a column-parallel
  Linear computes on (for Shard(1) an all-gather). up_proj's pre-hooks must be the same style
  functions with the same layouts, as the plain module runs them on the same x. The Replicate
  result becomes the local x by ``to_local(grad_placements=[Partial()])``, which declares the
  local dx a partial sum; the hook's own conversions then take that sum back to the layout x
  came in: ``from_local(x, [Replicate()])``'s backward all-reduces it, the backward of the
  all-gather from Shard(1) reduce-scatters it (its adjoint), so each rank gets the gradient
  of what it passed. The gate and up projections share the local x, so their contributions are
  summed by the kernels' backward and dx is reduced once, where the plain Linears reduce it
  once per Linear.
- output: the local partial output becomes ``from_local(partial, [Partial()])``, what the plain
  down_proj returns, and goes through down_proj's forward hooks. RowwiseParallel's
  redistributes it to its ``output_layouts`` (Replicate: an all-reduce; Shard(1): a
  reduce-scatter) and returns the local tensor if ``use_local_output``, else the DTensor.
  Backward, the redistribution's rule for a Partial source brings the output gradient to
  Replicate, never back to Partial (for a Shard(1) output an all-gather of d_out, for a
  Replicate one nothing): the whole d_out reaches the kernels' backward on every rank.

This is exact because the hooks are the plan's own: x and the output go through the same
functions, with the same layouts and the same backward rules, as in the plain module. The
hooks in between are not run (gate_proj's and up_proj's forward hooks, down_proj's pre-hooks):
they convert the intermediate act(x @ G_r.T) * (x @ U_r.T), which stays inside the kernels,
local and sharded on its features, the one layout in which the weight shards multiply.

Without hooks (the weights distributed by hand, ``distribute_tensor`` on each Linear) the
forward does what ColwiseParallel() and RowwiseParallel() do: x is the whole input, the output
the whole output, a plain tensor. A DTensor x that reaches the kernels unconverted (through
no hook, or a hook whose ``input_layouts`` is Replicate already, which passes a DTensor on as
it is) is redistributed to Replicate: a DTensor states its own layout, so this is what the
plain Linears' DTensor arithmetic computes; forward it is a no-op for Replicate and an
all-gather for a Shard, and backward it takes the partial dx to x's layout.

That is Megatron's "copy to / reduce from the tensor-parallel region" pair, and under sequence
parallelism its "all-gather / reduce-scatter" pair. DTensor's conversions are used instead of
autograd Functions over raw collectives because their backward rules are the ones the plain
Linears' hooks rely on (so the gradients come back in the layouts the plan gives them), and
torch.compile traces them (fullgraph=True).
"""

import functools

import torch
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

    x: what the plan's gate_proj style takes. Under ColwiseParallel() the whole input on every
    rank, a plain tensor (what HuggingFace models pass); under
    ``ColwiseParallel(input_layouts=Shard(1))`` this rank's shard of the sequence, a plain
    tensor of the same length on every rank (``from_local`` takes the whole length to be the
    shard's times the ranks); under either, a DTensor on the weights' mesh in any layout
    (uneven shards included: they split as ``torch.chunk`` does).

    Returns what the down_proj style returns: under RowwiseParallel() the whole output on every
    rank, under ``output_layouts=Shard(1)`` this rank's sequence shard, as the local tensor
    (an AsyncCollectiveTensor, which waits for its collective at its first use, as the plain
    down_proj returns it) or with ``use_local_output=False`` as the DTensor. Gradients: the
    weights' are DTensors with the weights' placements; x's is in x's layout (a plain x gets
    the gradient of its own part, a DTensor x a DTensor gradient with its placements).

    Without hooks on the Linears (weights distributed by hand) x is the whole input and the
    output the whole output, a plain tensor, as under the default styles. The forward runs the
    hooks in ``_forward_pre_hooks`` of gate_proj (those of up_proj must match) and in
    ``_forward_hooks`` of down_proj, which get ``()`` for down_proj's input (the intermediate
    never leaves the kernels); not the global hooks (``register_module_forward_pre_hook``),
    which ``__call__`` runs on the MLP already, nor backward hooks on the Linears.

    FSDP2 over this plan (``parallelize_module`` on the "tp" dimension of a (dp, tp) mesh,
    then ``fully_shard`` on the "dp" one) works: FSDP2 gathers the data-parallel shards before
    the forward, which then sees weights of the plan on the "tp" mesh.

    Raises NotImplementedError for the packed ``gate_up_proj`` layout, for weights on a mesh of
    more than one dimension and for hooks registered ``with_kwargs=True`` on gate_proj, up_proj
    (pre-hooks) or down_proj (forward hooks); ValueError for any other placement of the
    weights, for pre-hooks of gate_proj and up_proj that differ (different input styles), and
    for a DTensor x on another mesh; TypeError where gate_proj's pre-hooks make anything but
    one tensor of x.
    """
    mesh = _plan_mesh(module)
    x_local = _local_input(module, x, mesh)
    w_gate, w_up, w_down = (_LocalWeight.apply(getattr(module, name).weight) for name in PLAN)
    partial_out = swiglu_mlp(x_local, w_gate.T, w_up.T, w_down.T, activation=module.activation,
                             recompute=module.recompute, fast_accum=module.fast_accum)
    return _output(module, DTensor.from_local(partial_out, mesh, (Partial(),), run_check=False),
                   mesh)


def _describe(weight) -> str:
    if not isinstance(weight, DTensor):
        return f"a plain {type(weight).__name__}"
    return f"{list(weight.placements)} on {_mesh_text(weight.device_mesh)}"


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

    def layout():  # for the errors only: torch 2.11's compiler cannot trace the text
        return "; ".join(f"{name}.weight: {_describe(w)}" for name, w in weights.items())
    meshes = [w.device_mesh for w in weights.values() if isinstance(w, DTensor)]
    if any(mesh.ndim != 1 for mesh in meshes):
        raise NotImplementedError(
            f"SwiGLUMLP: weights on a device mesh of more than one dimension are not supported "
            f"({layout()}); tensor parallelism needs {PLAN_TEXT} (with FSDP2 on top, "
            f"fully_shard over parallelize_module on a (dp, tp) mesh, the forward gets such "
            f"weights)")
    # placements is a tuple already: tuple() of it is what torch 2.11's compiler cannot trace
    if not (all(isinstance(w, DTensor) and w.placements == PLAN[name]
                for name, w in weights.items())
            and all(mesh == meshes[0] for mesh in meshes)):
        raise ValueError(f"SwiGLUMLP: unsupported tensor-parallel layout ({layout()}); the "
                         f"supported one is {PLAN_TEXT}")
    return meshes[0]


def _hooks(linear, name: str, kind: str) -> list:
    """The Linear's forward pre-hooks (kind "pre") or forward hooks (kind "post"), in the
    order nn.Module.__call__ runs them."""
    hooks, with_kwargs = ((linear._forward_pre_hooks, linear._forward_pre_hooks_with_kwargs)
                          if kind == "pre" else
                          (linear._forward_hooks, linear._forward_hooks_with_kwargs))
    if any(hook_id in with_kwargs for hook_id in hooks):
        what = "forward pre-hook" if kind == "pre" else "forward hook"
        raise NotImplementedError(
            f"SwiGLUMLP under tensor parallelism runs {name}'s {what}s itself, on the MLP's "
            f"{'input' if kind == 'pre' else 'output'}; a {what} registered with "
            f"with_kwargs=True is not supported (the Linear is never called, so there are no "
            f"keyword arguments to give it); the styles of parallelize_module register none")
    return list(hooks.values())


def _hook_key(hook):
    """What two hooks must share to do the same: for distribute_module's hooks (a lambda over
    the style's input function, a functools.partial binding its layouts, and the mesh), the
    code, the bound function and layouts, and the mesh; for any other, the hook itself.
    Under torch.compile the code only: dynamo cannot trace a call of a closure whose cells
    were read before."""
    code = getattr(hook, "__code__", None)
    if code is None:
        return hook
    if torch.compiler.is_compiling():
        return code
    cells = []
    for cell in hook.__closure__ or ():
        value = cell.cell_contents
        if isinstance(value, functools.partial):
            value = (value.func, value.args, tuple(sorted(value.keywords.items())))
        cells.append(value)
    return code, tuple(cells)


def _mesh_text(mesh) -> str:
    names = "" if mesh.mesh_dim_names is None else f" {mesh.mesh_dim_names}"
    return f"a mesh of shape {tuple(mesh.shape)}{names}"


def _hook_text(hook) -> str:
    for cell in getattr(hook, "__closure__", None) or ():
        value = cell.cell_contents
        if isinstance(value, functools.partial):
            layouts = ", ".join(repr(arg) for arg in value.args)
            return f"{getattr(value.func, '__qualname__', value.func)}({layouts})"
    return repr(hook)


class _LocalWeight(torch.autograd.Function):
    """A weight's local shard, whose gradient comes back as a DTensor of the weight's exact
    placements, shape and strides. DTensor.to_local() does the same, except that torch 2.11
    derives the gradient's global strides from the local shard's, which for a Shard(1) split
    that is not even (d_ff = 37 on two ranks) are not the weight's: the gradient accumulation
    then copies it into the weight's layout through an all-gather, to a Replicate gradient."""

    @staticmethod
    def forward(ctx, weight):
        ctx.layout = weight.device_mesh, weight.placements, weight.shape, weight.stride()
        return weight.to_local()

    @staticmethod
    def backward(ctx, grad):
        mesh, placements, shape, stride = ctx.layout
        return DTensor.from_local(grad, mesh, placements, run_check=False, shape=shape,
                                  stride=stride)


def _local_input(module, x, mesh) -> Tensor:
    """x as the gate_proj style makes it, Replicate, then local, with its gradient summed over
    the ranks into x's own layout in the backward."""
    if isinstance(x, DTensor) and x.device_mesh != mesh:
        raise ValueError(
            f"SwiGLUMLP under tensor parallelism takes x on the weights' mesh, "
            f"{_mesh_text(mesh)}; got a DTensor x with {list(x.placements)} on "
            f"{_mesh_text(x.device_mesh)}")
    gate_hooks = _hooks(module.gate_proj, "gate_proj", "pre")
    up_hooks = _hooks(module.up_proj, "up_proj", "pre")
    if [_hook_key(h) for h in gate_hooks] != [_hook_key(h) for h in up_hooks]:
        raise ValueError(
            f"SwiGLUMLP under tensor parallelism takes x through gate_proj's forward pre-hooks "
            f"(its ParallelStyle's input function) and needs up_proj's to be the same, as both "
            f"Linears take the same x; got gate_proj: "
            f"{[_hook_text(h) for h in gate_hooks]}, up_proj: {[_hook_text(h) for h in up_hooks]}"
            f". Give gate_proj and up_proj the same style (the same input_layouts)")
    args = (x,)
    for hook in gate_hooks:
        result = hook(module.gate_proj, args)
        if result is not None:
            args = result if isinstance(result, tuple) else (result,)
    if len(args) != 1 or not isinstance(args[0], Tensor):
        raise TypeError(f"SwiGLUMLP: gate_proj's forward pre-hooks turned x into "
                        f"{len(args)} arguments of types {[type(a).__name__ for a in args]}; "
                        f"the MLP takes one tensor")
    x_dt = args[0]
    if not isinstance(x_dt, DTensor):
        # no hook made a DTensor of it (none ran): x is the whole input, as under
        # ColwiseParallel()
        x_dt = DTensor.from_local(x_dt, mesh, (Replicate(),), run_check=False)
    elif x_dt.device_mesh != mesh:
        raise ValueError(f"SwiGLUMLP: gate_proj's forward pre-hooks put x on "
                         f"{_mesh_text(x_dt.device_mesh)}, not on the weights' mesh, "
                         f"{_mesh_text(mesh)}")
    elif x_dt is x or not all(p.is_replicate() for p in x_dt.placements):
        # the caller's DTensor, unconverted: from Replicate a no-op forward whose backward
        # sums the partial dx; from a Shard an all-gather whose backward reduce-scatters
        x_dt = x_dt.redistribute(mesh, (Replicate(),))
    return x_dt.to_local(grad_placements=(Partial(),))


def _output(module, out: DTensor, mesh):
    """The partial output as the down_proj style returns it."""
    hooks = _hooks(module.down_proj, "down_proj", "post")
    if not hooks:  # no style on down_proj: the whole output, as under RowwiseParallel()
        return out.redistribute(mesh, (Replicate(),)).to_local()
    for hook in hooks:
        # down_proj's input, the intermediate, stays inside the kernels: the hooks get no
        # arguments (RowwiseParallel's output function reads none)
        result = hook(module.down_proj, (), out)
        if result is not None:
            out = result
    return out
