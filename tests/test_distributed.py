"""SwiGLUMLP under tensor parallelism (parallelize_module with the Llama plan of HuggingFace's
tp_plan) and FSDP2 (fully_shard), in 2 CPU processes over gloo, against the single-process
module with the same weights: the forward and every gradient, and the layouts that raise.

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
# whole-file bound: the file takes about 30 s on two cores under the interpreter, start-up
# and torch.compile's tracing included
TIMEOUT_S = 240
# Against the single-process module in float32, where the kernels run in full float32 (no
# TF32): the ranks' shards reorder the sums over d_ff (two partial down projections, two
# partial dx, added by the all-reduce) and FSDP2 averages two ranks' weight gradients in
# another order than one process summing them. Each reordered float32 sum of K terms moves by
# at most ~K * 2**-24 relative (K <= 80 here: 5e-6), and far less on average (measured: at
# most 1.5e-7); a wrong shard, a missing or doubled reduction is off by 1e-1 or more.
TOLERANCE = 1e-5
D_MODEL, D_FF = 24, 40
LLAMA_PLAN = {"gate_proj": ColwiseParallel(), "up_proj": ColwiseParallel(),
              "down_proj": RowwiseParallel()}


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

def _tensor_parallel(mesh, activation="silu", recompute=False, d_ff=D_FF, x_layout="plain",
                     compiled=False):
    torch.manual_seed(0)
    mlp = SwiGLUMLP(D_MODEL, d_ff, activation=activation, recompute=recompute)
    x, d_out = _inputs()
    out_ref, dx_ref, grads_ref = _single_process(mlp, x, d_out)
    parallelize_module(mlp, mesh, LLAMA_PLAN)
    if x_layout == "plain":
        x = x.clone().requires_grad_()
    else:  # a DTensor leaf, as a PrepareModuleInput(desired_input_layouts=Replicate) gives
        x = distribute_tensor(x, mesh, [Replicate()]).detach().requires_grad_()
    if compiled:
        out = torch.compile(mlp, backend="aot_eager", fullgraph=True)(x)
        out.backward(d_out)
    else:  # CommDebugMode is a dispatch mode, which torch.compile does not trace
        with CommDebugMode() as forward_comms:
            out = mlp(x)
        with CommDebugMode() as backward_comms:
            out.backward(d_out)
        # one all-reduce each way: the partial outputs, the partial input gradients
        assert forward_comms.get_total_counts() == 1, forward_comms.get_comm_counts()
        assert backward_comms.get_total_counts() == 1, backward_comms.get_comm_counts()
    assert type(out) is torch.Tensor, f"the output is a {type(out).__name__}"
    errors = {"out": relative_error(out, out_ref)}
    if x_layout == "plain":
        assert type(x.grad) is torch.Tensor, type(x.grad)
        errors["dx"] = relative_error(x.grad, dx_ref)
    else:
        assert isinstance(x.grad, DTensor) and list(x.grad.placements) == [Replicate()], x.grad
        errors["dx"] = relative_error(x.grad.to_local(), dx_ref)
    for name, param in mlp.named_parameters():
        grad = param.grad
        assert isinstance(grad, DTensor) and grad.placements == param.placements, (name, grad)
        errors[name] = relative_error(grad.full_tensor(), grads_ref[name])
    return errors


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


def _tensor_parallel_layout(mesh, plan=None, packed=False, x_layout=None, mesh_2d=False):
    """The error that a layout raises: (exception type name, message)."""
    torch.manual_seed(0)
    mlp = SwiGLUMLP(D_MODEL, D_FF, packed=packed)
    x, _ = _inputs()
    if mesh_2d:
        mesh = init_device_mesh("cpu", (1, WORLD_SIZE), mesh_dim_names=("dp", "tp"))
        for name, placement in (("gate_proj", Shard(0)), ("up_proj", Shard(0)),
                                ("down_proj", Shard(1))):
            linear = getattr(mlp, name)
            linear.weight = nn.Parameter(distribute_tensor(linear.weight.detach(), mesh,
                                                           [Replicate(), placement]))
    else:
        parallelize_module(mlp, mesh, plan or LLAMA_PLAN)
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
    "raises: sequence-sharded x": lambda mesh: _tensor_parallel_layout(mesh, x_layout=[Shard(1)]),
    "raises: 2-D mesh": lambda mesh: _tensor_parallel_layout(mesh, mesh_2d=True),
}

# what each error case raises, and a pattern its message must match
RAISES = {
    "raises: up_proj rowwise": (ValueError, r"up_proj\.weight: \[Shard\(dim=1\)\]"),
    "raises: up_proj not sharded": (ValueError, r"up_proj\.weight: a plain Parameter"),
    "raises: packed gate_up_proj": (NotImplementedError,
                                    r"packed=True.*gate_up_proj\.weight: \[Shard\(dim=0\)\]"),
    "raises: sequence-sharded x": (ValueError, r"DTensor x with \[Shard\(dim=1\)\]"),
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
