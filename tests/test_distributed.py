"""SwiGLUMLP under tensor parallelism (parallelize_module with the Llama plan of HuggingFace's
tp_plan, its sequence-parallel form and other layouts of its styles) and FSDP2 (fully_shard),
in 2 CPU processes over gloo, against the single-process module with the same weights: the
forward and every gradient, the collectives each way, and the layouts that raise.

The processes run every case once, for the whole file (process start-up and the process
groups cost seconds); each test then asserts on what each rank reported for its case.
Always CPU tensors over gloo, also on a machine with GPUs: the kernels run there as in the
rest of the suite, under the interpreter when the parent runs under it (spawned processes
inherit os.environ, where conftest set TRITON_INTERPRET before triton was imported).
"""

import copy
import datetime
import json
import os
import re
import socket
import time
import traceback

import pytest
import torch
import torch.multiprocessing
from test_swiglu import relative_error
from torch import nn

from fused_swiglu import SwiGLUMLP, launch
from fused_swiglu.tuning import interpreting

dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is needed", allow_module_level=True)

from torch.distributed.device_mesh import init_device_mesh  # noqa: E402
from torch.distributed.fsdp import fully_shard  # noqa: E402
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor  # noqa: E402
from torch.distributed.tensor.debug import CommDebugMode  # noqa: E402
from torch.distributed.tensor.parallel import (  # noqa: E402
    ColwiseParallel,
    RowwiseParallel,
    parallelize_module,
)

WORLD_SIZE = 2
# whole-file bound: the file takes about 20 s on two cores under the interpreter, start-up
# and torch.compile's tracing included
TIMEOUT_S = 240
# Against the single-process module in float32, where the kernels run in full float32 (no
# TF32): the ranks' shards reorder the sums over d_ff (two partial down projections, two
# partial dx, added by the all-reduce or the reduce-scatter) and FSDP2 averages two ranks'
# weight gradients in another order than one process summing them. Each reordered float32
# sum of K terms moves by at most ~K * 2**-24 relative (K <= 80 here: 5e-6), and far less on
# average (measured: at most 1.5e-7); a wrong shard, a missing or doubled reduction is off
# by 1e-1 or more.
TOLERANCE = 1e-5
D_MODEL, D_FF = 24, 40
LLAMA_PLAN = {"gate_proj": ColwiseParallel(), "up_proj": ColwiseParallel(),
              "down_proj": RowwiseParallel()}
# the same, every layout spelled out with its default value
SPELLED_OUT_PLAN = {
    name: ColwiseParallel(input_layouts=Replicate(), output_layouts=Shard(-1),
                          use_local_output=True) for name in ("gate_proj", "up_proj")} | {
    "down_proj": RowwiseParallel(input_layouts=Shard(-1), output_layouts=Replicate(),
                                 use_local_output=True)}
# sequence parallelism: x and the output sharded on the sequence dimension
SEQUENCE_PLAN = {"gate_proj": ColwiseParallel(input_layouts=Shard(1)),
                 "up_proj": ColwiseParallel(input_layouts=Shard(1)),
                 "down_proj": RowwiseParallel(output_layouts=Shard(1))}
DTENSOR_OUTPUT_PLAN = {"gate_proj": ColwiseParallel(), "up_proj": ColwiseParallel(),
                       "down_proj": RowwiseParallel(use_local_output=False)}
# the collectives of sequence parallelism, forward and backward: x all-gathered, the partial
# outputs reduce-scattered; d_out all-gathered, the partial dx reduce-scattered
SEQUENCE_COMMS = ({"all_gather_into_tensor": 1, "reduce_scatter_tensor": 1},
                  {"all_gather_into_tensor": 1, "reduce_scatter_tensor": 1})


def _inputs(lead=(2, 5), d_model=D_MODEL, ranks=1):
    """x and d_out, the same on every rank (the seed is); one per rank with ranks > 1."""
    shape = (*lead, d_model) if ranks == 1 else (ranks, *lead, d_model)
    return torch.randn(shape), torch.randn(shape)


def _single_process(model, x, d_out):
    """out, dx and {parameter name: gradient} of a copy of model, in this process alone."""
    model = copy.deepcopy(model)
    x = x.clone().requires_grad_()
    out = model(x)
    out.backward(d_out)
    return out.detach(), x.grad, {n: p.grad for n, p in model.named_parameters()}


# ---- the cases, run on every rank: each returns {what: relative error} ---------------------
# torch.compile runs with the aot_eager backend: the tensors are CPU ones, whose kernels run
# under the interpreter, which inductor has no code generation for; dynamo and AOT autograd,
# which trace the DTensor conversions, FSDP2's hooks and the custom ops, are what is tested.

def _tensor_parallel(mesh, activation="silu", recompute=False, d_ff=D_FF, plan=None,
                     x_layout="plain", seq=5, compiled=False, comms=None):
    """x_layout: "plain" (the whole x, a plain tensor), "dtensor" (a Replicate DTensor leaf, as
    a PrepareModuleInput(desired_input_layouts=Replicate) gives), "shard" (this rank's
    sequence shard, a plain tensor), "shard dtensor" (a Shard(1) DTensor leaf); the output and
    its gradient are laid out as the plan's down_proj style says. comms: the collectives
    {name: count} of the forward and of the backward, the default one all-reduce each."""
    torch.manual_seed(0)
    plan = plan or LLAMA_PLAN
    mlp = SwiGLUMLP(D_MODEL, d_ff, activation=activation, recompute=recompute)
    x, d_out = _inputs(lead=(2, seq))
    out_ref, dx_ref, grads_ref = _single_process(mlp, x, d_out)
    if plan == "by hand":  # the plan's weights, without the styles' hooks
        for name, placement in (("gate_proj", Shard(0)), ("up_proj", Shard(0)),
                                ("down_proj", Shard(1))):
            linear = getattr(mlp, name)
            linear.weight = nn.Parameter(distribute_tensor(linear.weight.detach(), mesh,
                                                           [placement]))
        out_style = RowwiseParallel()
    else:
        parallelize_module(mlp, mesh, plan)
        out_style = plan["down_proj"]
    rank = dist.get_rank()

    def shard(whole):
        # DTensor's Shard(1) splits as torch.chunk does: 6 -> 3 + 3, 5 -> 3 + 2
        return whole.chunk(WORLD_SIZE, dim=1)[rank]

    if x_layout == "plain":
        x = x.clone().requires_grad_()
    elif x_layout == "shard":
        x = shard(x).clone().requires_grad_()
    else:
        x_placement = Replicate() if x_layout == "dtensor" else Shard(1)
        x = distribute_tensor(x, mesh, [x_placement]).detach().requires_grad_()
    (out_placement,), local = out_style.output_layouts, out_style.use_local_output
    if not local:
        d_out = DTensor.from_local(d_out, mesh, [Replicate()], run_check=False)
    elif out_placement != Replicate():
        d_out = shard(d_out)
    if compiled:
        out = torch.compile(mlp, backend="aot_eager", fullgraph=True)(x)
        out.backward(d_out)
    else:  # CommDebugMode is a dispatch mode, which torch.compile does not trace
        with CommDebugMode() as forward_comms:
            out = mlp(x)
        with CommDebugMode() as backward_comms:
            out.backward(d_out)
        forward_expected, backward_expected = comms or ({"all_reduce": 1}, {"all_reduce": 1})
        assert _comm_names(forward_comms) == forward_expected, forward_comms.get_comm_counts()
        backward = _comm_names(backward_comms)
        assert backward == backward_expected, backward_comms.get_comm_counts()
    if local:
        # RowwiseParallel returns its collective's output unwaited: an AsyncCollectiveTensor,
        # a Tensor subclass that waits at its first use, as the plain down_proj returns it
        assert isinstance(out, torch.Tensor) and not isinstance(out, DTensor), type(out)
        got = out
        if out_placement != Replicate():
            out_ref = shard(out_ref)
    else:
        assert isinstance(out, DTensor) and list(out.placements) == [out_placement], out
        got = out.full_tensor()
    errors = {"out": relative_error(got, out_ref)}
    if isinstance(x, DTensor):
        assert isinstance(x.grad, DTensor) and x.grad.placements == x.placements, x.grad
        errors["dx"] = relative_error(x.grad.full_tensor(), dx_ref)
    else:
        # under sequence parallelism dx is the reduce-scatter's output, unwaited (as above)
        assert not isinstance(x.grad, DTensor), type(x.grad)
        errors["dx"] = relative_error(x.grad, dx_ref if x_layout == "plain" else shard(dx_ref))
    for name, param in mlp.named_parameters():
        grad = param.grad
        assert isinstance(grad, DTensor) and grad.placements == param.placements, (name, grad)
        errors[name] = relative_error(grad.full_tensor(), grads_ref[name])
    return errors


def _comm_names(comm_mode):
    """{collective's name: count}: all_reduce, all_gather_into_tensor, reduce_scatter_tensor."""
    return {str(op).rsplit(".", 1)[-1]: count
            for op, count in comm_mode.get_comm_counts().items() if count}


def _fully_sharded(mesh, stack=False, compiled=False):
    torch.manual_seed(0)
    if stack:
        model = nn.Sequential(SwiGLUMLP(D_MODEL, D_FF),
                              SwiGLUMLP(D_MODEL, 56, activation="gelu_tanh", recompute=True))
    else:
        model = SwiGLUMLP(D_MODEL, D_FF)
    # a batch of its own on each rank
    xs, d_outs = _inputs(ranks=WORLD_SIZE)
    runs = [_single_process(model, x, d_out) for x, d_out in zip(xs, d_outs)]
    rank = dist.get_rank()
    out_ref, dx_ref, _ = runs[rank]
    # FSDP2 averages the ranks' weight gradients (its reduce-scatter divides by the world size)
    grads_ref = {name: sum(run[2][name] for run in runs) / WORLD_SIZE for name in runs[0][2]}
    for layer in (model if stack else []):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    forward = torch.compile(model, backend="aot_eager") if compiled else model
    x = xs[rank].clone().requires_grad_()
    out = forward(x)
    out.backward(d_outs[rank])
    errors = {"out": relative_error(out, out_ref), "dx": relative_error(x.grad, dx_ref)}
    for name, param in model.named_parameters():
        assert isinstance(param.grad, DTensor), (name, type(param.grad))
        errors[name] = relative_error(param.grad.full_tensor(), grads_ref[name])
    return errors


def _fully_sharded_over_tensor_parallel(mesh):
    """FSDP2 on the "dp" dimension over the plan on the "tp" one: here dp = 1, which checks
    what the forward sees (the TP weights, on the "tp" mesh), not the data-parallel mean."""
    torch.manual_seed(0)
    mlp = SwiGLUMLP(D_MODEL, D_FF)
    x, d_out = _inputs()
    out_ref, dx_ref, grads_ref = _single_process(mlp, x, d_out)
    mesh = init_device_mesh("cpu", (1, WORLD_SIZE), mesh_dim_names=("dp", "tp"))
    parallelize_module(mlp, mesh["tp"], LLAMA_PLAN)
    fully_shard(mlp, mesh=mesh["dp"])
    x = x.clone().requires_grad_()
    out = mlp(x)
    out.backward(d_out)
    errors = {"out": relative_error(out, out_ref), "dx": relative_error(x.grad, dx_ref)}
    for name, param in mlp.named_parameters():
        assert param.grad.placements == param.placements, (name, param.grad, param)
        errors[name] = relative_error(param.grad.full_tensor(), grads_ref[name])
    return errors


def _tensor_parallel_layout(mesh, plan=None, packed=False, x_layout=None, mesh_2d=False,
                            x_mesh_2d=False, up_by_hand=False, kwargs_hook=False):
    """The error that a layout raises: (exception type name, message)."""
    torch.manual_seed(0)
    mlp = SwiGLUMLP(D_MODEL, D_FF, packed=packed)
    x, _ = _inputs()
    if up_by_hand:  # the plan's placement, without ColwiseParallel's hook
        mlp.up_proj.weight = nn.Parameter(distribute_tensor(mlp.up_proj.weight.detach(), mesh,
                                                            [Shard(0)]))
    if mesh_2d:
        mesh = init_device_mesh("cpu", (1, WORLD_SIZE), mesh_dim_names=("dp", "tp"))
        for name, placement in (("gate_proj", Shard(0)), ("up_proj", Shard(0)),
                                ("down_proj", Shard(1))):
            linear = getattr(mlp, name)
            linear.weight = nn.Parameter(distribute_tensor(linear.weight.detach(), mesh,
                                                           [Replicate(), placement]))
    else:
        parallelize_module(mlp, mesh, plan or LLAMA_PLAN)
    if kwargs_hook:
        for linear in (mlp.gate_proj, mlp.up_proj):
            linear.register_forward_pre_hook(lambda mod, args, kwargs: None, with_kwargs=True)
    if x_mesh_2d:  # the same ranks, as a dimension of another mesh
        mesh = init_device_mesh("cpu", (1, WORLD_SIZE), mesh_dim_names=("dp", "tp"))["tp"]
    if x_layout is not None:
        x = distribute_tensor(x, mesh, x_layout)
    try:
        mlp(x)
    except Exception as error:  # noqa: BLE001 -- reported to the test, which judges it
        return type(error).__name__, str(error)
    return None, "no error"


CASES = {
    "tp silu": lambda mesh: _tensor_parallel(mesh),
    "tp silu recompute": lambda mesh: _tensor_parallel(mesh, recompute=True),
    "tp gelu_tanh": lambda mesh: _tensor_parallel(mesh, activation="gelu_tanh"),
    "tp gelu recompute": lambda mesh: _tensor_parallel(mesh, activation="gelu", recompute=True),
    # d_ff = 37 splits into 19 + 18 rows
    "tp uneven d_ff": lambda mesh: _tensor_parallel(mesh, d_ff=37),
    "tp replicated DTensor x": lambda mesh: _tensor_parallel(mesh, x_layout="dtensor"),
    # "tp silu" and this: a plain x, the whole input, under the default styles
    "tp default styles spelled out": lambda mesh: _tensor_parallel(mesh, plan=SPELLED_OUT_PLAN),
    "tp weights distributed by hand": lambda mesh: _tensor_parallel(mesh, plan="by hand"),
    # a sequence-sharded DTensor x passes ColwiseParallel()'s hook as it is: the forward
    # all-gathers it, and reduce-scatters dx to its layout
    "tp sequence-sharded DTensor x": lambda mesh: _tensor_parallel(
        mesh, x_layout="shard dtensor",
        comms=({"all_gather_into_tensor": 1, "all_reduce": 1}, {"reduce_scatter_tensor": 1})),
    "tp DTensor output": lambda mesh: _tensor_parallel(mesh, plan=DTENSOR_OUTPUT_PLAN),
    # each rank passes its own 3 of the 6 positions, a plain tensor
    "sp plain shard": lambda mesh: _tensor_parallel(mesh, plan=SEQUENCE_PLAN, x_layout="shard",
                                                    seq=6, comms=SEQUENCE_COMMS),
    "sp plain shard gelu recompute": lambda mesh: _tensor_parallel(
        mesh, plan=SEQUENCE_PLAN, x_layout="shard", seq=6, activation="gelu", recompute=True,
        d_ff=37, comms=SEQUENCE_COMMS),
    # uneven shards, 3 + 2, need a DTensor x (a plain one is taken as an even shard)
    "sp uneven DTensor shards": lambda mesh: _tensor_parallel(
        mesh, plan=SEQUENCE_PLAN, x_layout="shard dtensor", seq=5, comms=SEQUENCE_COMMS),
    "sp compiled": lambda mesh: _tensor_parallel(mesh, plan=SEQUENCE_PLAN, x_layout="shard",
                                                 seq=6, compiled=True),
    "tp compiled": lambda mesh: _tensor_parallel(mesh, compiled=True),
    "fsdp2": lambda mesh: _fully_sharded(mesh),
    "fsdp2 stack": lambda mesh: _fully_sharded(mesh, stack=True),
    "fsdp2 stack compiled": lambda mesh: _fully_sharded(mesh, stack=True, compiled=True),
    "fsdp2 over tp, (1, 2) mesh": _fully_sharded_over_tensor_parallel,
    "raises: up_proj rowwise": lambda mesh: _tensor_parallel_layout(
        mesh, plan={"gate_proj": ColwiseParallel(), "up_proj": RowwiseParallel(),
                    "down_proj": RowwiseParallel()}),
    "raises: up_proj not sharded": lambda mesh: _tensor_parallel_layout(
        mesh, plan={"gate_proj": ColwiseParallel(), "down_proj": RowwiseParallel()}),
    "raises: packed gate_up_proj": lambda mesh: _tensor_parallel_layout(
        mesh, packed=True, plan={"gate_up_proj": ColwiseParallel(),
                                 "down_proj": RowwiseParallel()}),
    "raises: gate and up styles differ": lambda mesh: _tensor_parallel_layout(
        mesh, plan=SEQUENCE_PLAN | {"up_proj": ColwiseParallel()}),
    "raises: up_proj without the style": lambda mesh: _tensor_parallel_layout(
        mesh, plan={"gate_proj": ColwiseParallel(), "down_proj": RowwiseParallel()},
        up_by_hand=True),
    "raises: pre-hook with kwargs": lambda mesh: _tensor_parallel_layout(mesh, kwargs_hook=True),
    "raises: x on another mesh": lambda mesh: _tensor_parallel_layout(
        mesh, x_layout=[Replicate()], x_mesh_2d=True),
    "raises: 2-D mesh": lambda mesh: _tensor_parallel_layout(mesh, mesh_2d=True),
}

# what each error case raises, and a pattern its message must match
RAISES = {
    "raises: up_proj rowwise": (ValueError, r"up_proj\.weight: \[Shard\(dim=1\)\]"),
    "raises: up_proj not sharded": (ValueError, r"up_proj\.weight: a plain Parameter"),
    "raises: packed gate_up_proj": (NotImplementedError,
                                    r"packed=True.*gate_up_proj\.weight: \[Shard\(dim=0\)\]"),
    "raises: gate and up styles differ": (
        ValueError, r"gate_proj: \['ColwiseParallel._prepare_input_fn\(\(Shard\(dim=1\),\), "
                    r"\(Replicate\(\),\)\)'\], up_proj: \['ColwiseParallel._prepare_input_fn"
                    r"\(\(Replicate\(\),\), \(Replicate\(\),\)\)'\]"),
    "raises: up_proj without the style": (ValueError, r"up_proj: \[\]"),
    "raises: pre-hook with kwargs": (NotImplementedError, r"gate_proj's forward pre-hook.*"
                                                          r"with_kwargs=True"),
    "raises: x on another mesh": (ValueError, r"on the weights' mesh.*DTensor x with "
                                              r"\[Replicate\(\)\] on a mesh of shape \(2,\) "
                                              r"\('tp',\)"),
    "raises: 2-D mesh": (NotImplementedError,
                         r"more than one dimension.*\[Replicate\(\), Shard\(dim=0\)\]"),
}


def _worker(rank, port, result_dir):
    """One rank: every case, each result (or the traceback of its failure) to a JSON file."""
    torch.set_num_threads(1)  # two processes on two cores
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD_SIZE, timeout=datetime.timedelta(seconds=60))
    results = {"interpreting": interpreting()}
    # kernel outputs start as NaN here too (conftest's fixture does not reach this process),
    # and are counted: the tests check that the kernels ran
    outputs = []

    def nan_filled(shape, like):
        outputs.append(tuple(shape))
        return torch.full(shape, float("nan"), device=like.device, dtype=like.dtype)

    launch.new_output = nan_filled
    try:
        mesh = init_device_mesh("cpu", (WORLD_SIZE,))
        for name, case in CASES.items():
            start = time.perf_counter()
            outputs.clear()
            try:
                results[name] = {"result": case(mesh)}
            except Exception:  # noqa: BLE001 -- the test shows it
                results[name] = {"failed": traceback.format_exc()}
            results[name]["seconds"] = time.perf_counter() - start
            results[name]["kernel_outputs"] = len(outputs)
            # the ranks enter each case together: a rank that failed early does not leave
            # the other waiting in a collective of another case
            dist.barrier()
    finally:
        with open(os.path.join(result_dir, f"rank{rank}.json"), "w") as f:
            json.dump(results, f)
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """[rank 0's results, rank 1's results], each {case: {"result": ...} or {"failed": ...}}."""
    result_dir = str(tmp_path_factory.mktemp("ranks"))
    processes = torch.multiprocessing.start_processes(
        _worker, args=(_free_port(), result_dir), nprocs=WORLD_SIZE, join=False,
        start_method="spawn")
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not processes.join(timeout=max(deadline - time.monotonic(), 0)):
            if time.monotonic() >= deadline:
                pytest.fail(f"the {WORLD_SIZE} processes did not finish in {TIMEOUT_S} s")
    finally:
        for process in processes.processes:
            if process.is_alive():
                process.kill()
    ranks = []
    for rank in range(WORLD_SIZE):
        with open(os.path.join(result_dir, f"rank{rank}.json")) as f:
            ranks.append(json.load(f))
    return ranks


def _case_results(reports, case):
    for rank, report in enumerate(reports):
        assert report["interpreting"] == interpreting(), (
            f"rank {rank} runs the kernels {'under' if report['interpreting'] else 'without'} "
            f"the interpreter, the parent process not")
        assert case in report, f"rank {rank} did not run {case!r}"
        assert "failed" not in report[case], f"rank {rank}, {case!r}:\n{report[case]['failed']}"
    return [report[case]["result"] for report in reports]


@pytest.mark.parametrize("case", [c for c in CASES if c not in RAISES])
def test_matches_single_process(reports, case):
    for rank, errors in enumerate(_case_results(reports, case)):
        assert max(errors.values()) <= TOLERANCE, (rank, errors)
        # CPU tensors run the kernels under the interpreter only
        assert reports[rank][case]["kernel_outputs"] > 0 or not interpreting(), (
            f"rank {rank}, {case!r}: no kernel ran")


@pytest.mark.parametrize("case", list(RAISES))
def test_unsupported_layout_raises(reports, case):
    error, pattern = RAISES[case]
    for rank, (raised, message) in enumerate(_case_results(reports, case)):
        assert raised == error.__name__, (rank, raised, message)
        assert re.search(pattern, message, flags=re.DOTALL), (rank, message)
