"""Train the Llama of train_hf.py in several processes, under tensor parallelism, FSDP2 or both,
with HuggingFace's MLPs as they are, with fused_swiglu.patch_model and with Liger-Kernel's
SwiGLU, and compare tokens/s and peak memory per GPU and the losses.

    torchrun --nproc-per-node 2 examples/distributed.py --plan tp --size 8l-2048
    torchrun --nproc-per-node 4 examples/distributed.py --plan fsdp --size 8l-2048
    torchrun --nproc-per-node 4 examples/distributed.py --plan 2d --tp 2 --size 8l-2048
    python examples/distributed.py --plan none --size 8l-2048    # one process: the baseline
    torchrun --nproc-per-node 2 examples/distributed.py --plan tp --device cpu   # gloo, tests

Plans:
  none  one process, as train_hf.py runs it.
  tp    tensor parallelism over every process, the plan of HuggingFace's tp_plan for Llama:
        q_proj, k_proj, v_proj, gate_proj, up_proj colwise, o_proj and down_proj rowwise
        (``parallelize_module`` on every decoder layer); every rank sees the whole batch.
  fsdp  FSDP2: ``fully_shard`` on every decoder layer, then on the model; each rank trains on
        its own share of the batch's sequences.
  2d    a (data, tensor) mesh: tp inside groups of --tp processes, FSDP2 across them.

Every variant starts from the same weights and every plan sees the same batches as one
process would (the data-parallel ranks split each batch's sequences), so the losses differ from
the one-process run's only by rounding: the reported loss is the mean over the data-parallel
ranks. tokens/s per GPU is the batch's tokens per second divided by the number of processes;
peak memory per GPU the largest ``torch.cuda.max_memory_allocated()`` of the ranks.
"""

import copy
import datetime
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

import train_hf

PLANS = ("none", "tp", "fsdp", "2d")


def parse_args(argv=None):
    parser = train_hf.make_parser(__doc__)
    parser.add_argument("--plan", choices=PLANS, default="tp", help="(default: tp)")
    parser.add_argument("--tp", type=int,
                        help="processes per tensor-parallel group with --plan 2d (default: 2)")
    args = train_hf.parse_args(argv, parser)
    if args.plan != "2d" and args.tp is not None:
        parser.error("--tp belongs to --plan 2d (tp uses every process, fsdp none)")
    args.tp = args.tp or 2
    if args.tp < 1:
        parser.error(f"--tp must be at least 1, got {args.tp}")
    return args, parser


# ---------------------------------------------------------------------------------- mesh

def start(args, parser):
    """(rank, world, mesh or None): the process group started from torchrun's environment
    (NCCL on GPUs, gloo on the CPU), each rank on its own GPU, and the plan's mesh."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if args.plan == "none":
        if world != 1:
            parser.error("--plan none runs in one process: start it with python, not torchrun")
        return 0, 1, None
    if "RANK" not in os.environ:
        parser.error(f"--plan {args.plan} runs under torchrun (torchrun --nproc-per-node N "
                     f"examples/distributed.py ...)")
    tp = {"tp": world, "fsdp": 1, "2d": args.tp}[args.plan]
    if world % tp:
        parser.error(f"--tp {tp} does not divide the {world} processes")
    if args.batch % (world // tp):
        parser.error(f"--batch {args.batch} must split evenly over the {world // tp} "
                     f"data-parallel ranks")
    if args.plan != "fsdp" and args.heads % tp:
        parser.error(f"--heads {args.heads} must split evenly over {tp} tensor-parallel ranks")
    if args.device.type == "cuda":
        args.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(args.device)
    on_cuda = args.device.type == "cuda"
    dist.init_process_group("nccl" if on_cuda else "gloo",
                            timeout=datetime.timedelta(minutes=10),
                            device_id=args.device if on_cuda else None)
    from torch.distributed.device_mesh import init_device_mesh
    mesh = init_device_mesh(args.device.type, (world // tp, tp), mesh_dim_names=("dp", "tp"))
    return dist.get_rank(), world, mesh


def parallelize(model, plan: str, mesh) -> None:
    """Apply the plan to `model` (already patched, on its device) in place."""
    if plan in ("tp", "2d"):
        from torch.distributed.tensor.parallel import (ColwiseParallel, RowwiseParallel,
                                                       parallelize_module)
        layer_plan = {f"self_attn.{name}": ColwiseParallel()
                      for name in ("q_proj", "k_proj", "v_proj")}
        layer_plan.update({"self_attn.o_proj": RowwiseParallel(),
                           "mlp.gate_proj": ColwiseParallel(), "mlp.up_proj": ColwiseParallel(),
                           "mlp.down_proj": RowwiseParallel()})
        for layer in model.model.layers:
            parallelize_module(layer, mesh["tp"], layer_plan)
    if plan in ("fsdp", "2d"):
        from torch.distributed.fsdp import fully_shard
        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh["dp"])
        fully_shard(model, mesh=mesh["dp"])


# ---------------------------------------------------------------------------------- training

def train(variant, master, batches, args, mesh) -> dict:
    device = args.device
    model = copy.deepcopy(master).to(device)
    patched = train_hf.apply_variant(variant, model, device)
    if mesh is not None:
        parallelize(model, args.plan, mesh)
    model.train()
    # the tensor-parallel plan leaves some parameters plain tensors beside its DTensors, and
    # AdamW's multi-tensor kernels refuse the mix in one list ("got mixed torch.Tensor and
    # DTensor"); under 2d they sit on two meshes: the one-tensor-at-a-time loop for both
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr,
                                  foreach=False if args.plan in ("tp", "2d") else None)
    dp_rank, dp_size = (0, 1) if mesh is None else (mesh["dp"].get_local_rank(),
                                                     mesh["dp"].size())
    share = args.batch // dp_size
    batches = batches[:, dp_rank * share:(dp_rank + 1) * share].to(device)

    def synchronize():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if mesh is not None:
            dist.barrier()
    run = train_hf.timed_steps(model, optimizer, batches, args, synchronize)

    # (seconds, peak bytes): the slowest rank's time and the largest rank's peak
    losses = run["losses"]
    costs = torch.tensor([run["seconds"], run["peak"] or 0], dtype=torch.float64)
    if mesh is not None:
        losses, costs = losses.to(device), costs.to(device)
        # the mean of equal shares' mean losses is the whole batch's
        dist.all_reduce(losses, group=mesh["dp"].get_group())
        losses /= dp_size
        dist.all_reduce(costs, op=dist.ReduceOp.MAX)
    seconds, peak = costs.tolist()
    world = 1 if mesh is None else mesh.size()
    from torch.distributed.tensor import DTensor
    return {
        "patched_modules": patched,
        # how many of the model's parameters the plan turned into DTensors (sharded)
        "parameters": sum(1 for _ in model.parameters()),
        "dtensor_parameters": sum(isinstance(p, DTensor) for p in model.parameters()),
        "tokens_per_s_per_gpu": args.steps * args.batch * args.seq / seconds / world,
        "timed_seconds": seconds,
        "peak_memory_bytes_per_gpu": int(peak) if run["peak"] is not None else None,
        "losses": losses.cpu().tolist(),
    }


def main(argv=None) -> int:
    args, parser = parse_args(argv)
    rank, world, mesh = start(args, parser)

    def say(*text):
        if rank == 0:
            print(*text, flush=True)

    device = args.device
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    say(f"{world} x {card}, plan {args.plan}"
        + (f" (tensor-parallel groups of {args.tp})" if args.plan == "2d" else "")
        + f"; {train_hf.kernel_path(device)}")
    data, source = train_hf.corpus_bytes()
    batches = train_hf.make_batches(data, steps=args.warmup + args.steps, batch=args.batch,
                                    seq=args.seq, seed=args.seed)
    master = train_hf.build_model(args)
    say(f"model: LlamaForCausalLM, {args.layers} layers, hidden {args.hidden}, intermediate "
        f"{args.intermediate}; batch {args.batch} x seq {args.seq}, {args.warmup} warm-up + "
        f"{args.steps} timed steps, {args.dtype}; data: {source}")

    def report(variant, r):
        say(f"{variant}: {r['tokens_per_s_per_gpu']:,.0f} tokens/s per GPU, peak memory per "
            f"GPU {train_hf.gib(r['peak_memory_bytes_per_gpu'])}, loss {r['losses'][0]:.4f} -> "
            f"{r['losses'][-1]:.4f}")
    results, skipped = train_hf.run_variants(
        args.variants, device, lambda variant: train(variant, master, batches, args, mesh),
        report, say)
    if rank == 0 and args.json:
        config = {k: v for k, v in vars(args).items() if k != "json"}
        config.update(device=str(device), card=card, processes=world, data=source,
                      kernel_path=train_hf.kernel_path(device))
        Path(args.json).write_text(json.dumps(
            {"config": config, "results": results, "skipped": skipped}, indent=2) + "\n")
    if mesh is not None:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
