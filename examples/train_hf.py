"""Train a HuggingFace Llama-style model as it is and with fused_swiglu's MLP patched in, and
compare tokens/s, peak memory and the losses.

The model is built from a ``LlamaConfig`` (random weights, nothing downloaded) and trained on
the English help texts that ship with Python (``pydoc_data.topics``), read as bytes: a vocabulary
of 256, no tokenizer. Every variant starts from the same initial weights and sees the same
batches, so the losses of the variants differ only by the rounding of their kernels.

    python examples/train_hf.py --size tiny                     # a CPU, seconds
    python examples/train_hf.py --size 8l-2048 --variants eager,fused,fused-recompute,liger

Variants: ``eager`` (HuggingFace's LlamaMLP as it is), ``fused`` (after
``fused_swiglu.patch_model(model)``), ``fused-recompute`` (``patch_model(model,
recompute=True)``: no tokens x d_ff tensor kept for the backward), ``fused-fp8``
(``patch_model(model, fp8=True)``: the MLPs' GEMMs in float8) and ``liger`` (Liger-Kernel's
SwiGLU MLP, nothing else of Liger's; needs ``pip install liger-kernel`` and a CUDA GPU).

Timing: ``--warmup`` steps first (they train too, and run the Triton compilation and autotuning),
then ``--steps`` timed steps between two ``torch.cuda.synchronize()``. Peak memory is
``torch.cuda.max_memory_allocated()`` over the timed steps: weights, AdamW's moments, gradients
and activations; "above resting" subtracts what is allocated between steps (weights, moments
and the batches), which leaves the activations and gradients of one step (with ``--warmup 0``
also AdamW's moments, which the first step creates). On the CPU there is no allocator
statistic, so memory is "n/a", and without ``TRITON_INTERPRET=1`` fused_swiglu runs plain
PyTorch there (with it, its Triton kernels under the interpreter: slow, for tests).
"""

import argparse
import copy
import gc
import inspect
import json
import os
import sys
import time
from pathlib import Path

import torch

PRESETS = {
    # small enough for the Triton interpreter on a CPU
    "tiny": dict(layers=2, hidden=64, intermediate=160, heads=4, seq=32, batch=2, steps=5,
                 warmup=1),
    # the measurement size: a 0.4B-parameter, 8-layer Llama with d_model 2048
    "8l-2048": dict(layers=8, hidden=2048, intermediate=5632, heads=16, seq=2048, batch=4,
                    steps=20, warmup=3),
}
VARIANTS = ("eager", "fused", "fused-recompute", "fused-fp8", "liger")
VOCAB = 256  # bytes
GIB = 2 ** 30


def make_parser(description: str = __doc__) -> argparse.ArgumentParser:
    """The command line's options (examples/distributed.py adds its own to them)."""
    parser = argparse.ArgumentParser(
        description=description.split("\n\n")[0].replace("\n", " "),
        epilog="A preset sets every size; a flag given next to it wins.")
    parser.add_argument("--size", choices=sorted(PRESETS), default="tiny",
                        help="preset (default: tiny); " + "; ".join(
                            f"{k}: " + ", ".join(f"{n} {v}" for n, v in p.items())
                            for k, p in PRESETS.items()))
    for name, meaning in [("layers", "decoder layers"), ("hidden", "d_model"),
                          ("intermediate", "d_ff of the MLP"), ("heads", "attention heads"),
                          ("seq", "tokens per sequence"), ("batch", "sequences per step"),
                          ("steps", "timed training steps"),
                          ("warmup", "training steps before the timed ones")]:
        parser.add_argument(f"--{name}", type=int, help=f"{meaning} (default: the preset's)")
    parser.add_argument("--variants", default="eager,fused",
                        help=f"comma-separated, from {', '.join(VARIANTS)} (default: eager,fused)")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"],
                        help="of the weights and the training (default: bfloat16 on CUDA, "
                             "float32 on the CPU)")
    parser.add_argument("--device", help="default: cuda when available, else cpu")
    parser.add_argument("--lr", type=float, default=3e-4, help="AdamW's (default: 3e-4)")
    parser.add_argument("--seed", type=int, default=0,
                        help="of the initial weights and of the batches (default: 0)")
    parser.add_argument("--json", metavar="PATH", help="also write the results here as JSON")
    return parser


def parse_args(argv=None, parser: argparse.ArgumentParser | None = None) -> argparse.Namespace:
    """The options, the preset's sizes filled in and checked; `parser` defaults to
    make_parser()'s."""
    parser = parser or make_parser()
    args = parser.parse_args(argv)

    for name, value in PRESETS[args.size].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in PRESETS[args.size]:
        minimum = 0 if name == "warmup" else 1
        if getattr(args, name) < minimum:
            parser.error(f"--{name} must be at least {minimum}, got {getattr(args, name)}")
    if args.hidden % args.heads:
        parser.error(f"--hidden {args.hidden} is not a multiple of --heads {args.heads}")
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown or not args.variants:
        parser.error(f"--variants: unknown {', '.join(unknown) or '(none given)'}; "
                     f"choose from {', '.join(VARIANTS)}")
    args.variants = list(dict.fromkeys(args.variants))  # once each, in the order given
    args.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.dtype is None:
        args.dtype = "bfloat16" if args.device.type == "cuda" else "float32"
    return args


# ---------------------------------------------------------------------------------- data

def corpus_bytes() -> tuple[torch.Tensor, str]:
    """The text to train on as a 1-D uint8 tensor, and where it came from: the help texts of
    Python's ``pydoc_data.topics`` (part of the standard library, about 0.5 MB of English), in
    sorted key order, UTF-8 encoded."""
    try:
        from pydoc_data.topics import topics
        text, source = "\n\n".join(topics[k] for k in sorted(topics)), "pydoc_data.topics"
    except ImportError:  # a Python packaged without its help texts: its own source instead
        text = "\n\n".join(Path(m.__file__).read_text(encoding="utf-8")
                             for m in (argparse, inspect, json))
        source = "the standard library's argparse, inspect and json sources"
    return torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8), source


def make_batches(data: torch.Tensor, *, steps: int, batch: int, seq: int,
                 seed: int) -> torch.Tensor:
    """``(steps, batch, seq)`` int64 token ids: for each step, ``batch`` windows of ``seq``
    consecutive bytes of ``data`` at offsets drawn by a generator seeded with ``seed``, so the
    same arguments give the same batches on every run and device."""
    if data.dim() != 1 or len(data) <= seq:
        raise ValueError(f"make_batches: data must be 1-D and longer than seq={seq}, "
                         f"got shape {tuple(data.shape)}")
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(data) - seq + 1, (steps, batch), generator=generator)
    return data[starts[..., None] + torch.arange(seq)].long()


# ---------------------------------------------------------------------------------- model

def build_model(args) -> torch.nn.Module:
    """A LlamaForCausalLM with random weights (seeded), on the CPU in ``args.dtype``."""
    from transformers import LlamaConfig, LlamaForCausalLM
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads,
        num_key_value_heads=args.heads, max_position_embeddings=args.seq, hidden_act="silu",
        attention_dropout=0.0, tie_word_embeddings=False, bos_token_id=None,
        eos_token_id=None, pad_token_id=None)
    config._attn_implementation = "sdpa"
    torch.manual_seed(args.seed)
    return LlamaForCausalLM(config).to(getattr(torch, args.dtype))


def apply_variant(variant: str, model: torch.nn.Module, device: torch.device) -> list[str]:
    """Patch ``model`` in place for ``variant``; the names of the modules replaced. Raises
    ``Skip`` with a reason when the variant cannot run here."""
    if variant == "eager":
        return []
    if variant == "fused-fp8" and next(model.parameters()).dtype == torch.float32:
        raise Skip("float8 takes bfloat16 or float16 weights: run it with --dtype bfloat16")
    if variant in ("fused", "fused-recompute", "fused-fp8"):
        from fused_swiglu import patch_model
        names = patch_model(model, recompute=variant == "fused-recompute",
                            fp8=variant == "fused-fp8")
    else:
        names = apply_liger_swiglu(model, device)
    if not names:
        raise RuntimeError(f"{variant}: no MLP of the model was patched; it would time eager")
    return names


class Skip(Exception):
    pass


def apply_liger_swiglu(model: torch.nn.Module, device: torch.device) -> list[str]:
    """Liger-Kernel's SwiGLU MLP on every decoder layer, and none of its other kernels."""
    try:
        from liger_kernel.transformers import apply_liger_kernel_to_llama
    except ImportError:
        raise Skip("liger_kernel is not installed (pip install liger-kernel)") from None
    if device.type != "cuda":
        raise Skip("Liger-Kernel's kernels need a CUDA device")
    from transformers.models.llama import modeling_llama
    wanted = dict(rope=False, rms_norm=False, cross_entropy=False,
                  fused_linear_cross_entropy=False, swiglu=True, model=model)
    accepted = inspect.signature(apply_liger_kernel_to_llama).parameters
    if "model" not in accepted:
        raise Skip("this liger_kernel cannot patch a model instance (too old)")
    original_mlp_class = modeling_llama.LlamaMLP
    try:
        apply_liger_kernel_to_llama(**{k: v for k, v in wanted.items() if k in accepted})
    finally:
        # Liger also swaps the class in transformers' module, which would change every Llama
        # built afterwards in this process; the patched instance keeps its own forward.
        modeling_llama.LlamaMLP = original_mlp_class
    return [name for name, module in model.named_modules()
            if name.endswith(".mlp") and "forward" in vars(module)]


# ---------------------------------------------------------------------------------- training

def timed_steps(model, optimizer, batches: torch.Tensor, args, synchronize) -> dict:
    """``args.warmup`` training steps, then ``args.steps`` timed ones, on ``batches`` (on the
    model's device): the losses (one tensor), the timed seconds and, on CUDA, the peak and the
    memory allocated between steps. ``synchronize()`` waits for the device (and the other
    processes, where there are)."""
    device = args.device
    on_cuda = device.type == "cuda"

    def step(ids):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    losses = [step(batches[i]) for i in range(args.warmup)]
    synchronize()
    resting = torch.cuda.memory_allocated(device) if on_cuda else None
    if on_cuda:
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    losses += [step(batches[i]) for i in range(args.warmup, args.warmup + args.steps)]
    synchronize()
    return {"losses": torch.stack(losses).float(), "seconds": time.perf_counter() - start,
            "peak": torch.cuda.max_memory_allocated(device) if on_cuda else None,
            "resting": resting}


def train(variant: str, master: torch.nn.Module, batches: torch.Tensor, args) -> dict:
    device = args.device
    model = copy.deepcopy(master).to(device)
    patched = apply_variant(variant, model, device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)

    def synchronize():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    run = timed_steps(model, optimizer, batches.to(device), args, synchronize)
    peak, seconds = run["peak"], run["seconds"]
    return {
        "patched_modules": patched,
        "tokens_per_s": args.steps * args.batch * args.seq / seconds,
        "timed_seconds": seconds,
        "peak_memory_bytes": peak,
        "above_resting_bytes": None if peak is None else peak - run["resting"],
        "losses": run["losses"].tolist(),
    }


def run_variants(variants, device, train_one, report, say):
    """``({variant: result}, {variant: why skipped})``: ``train_one(variant)`` for each, then
    ``report(variant, result)``, or ``say`` the reason it raised Skip; each variant's model,
    gradients and optimizer state are freed before the next starts."""
    results, skipped = {}, {}
    for variant in variants:
        try:
            results[variant] = train_one(variant)
        except Skip as reason:
            skipped[variant] = str(reason)
            say(f"{variant}: skipped, {reason}")
            continue
        finally:
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        report(variant, results[variant])
    return results, skipped


# ---------------------------------------------------------------------------------- report

def kernel_path(device: torch.device) -> str:
    if device.type == "cuda":
        return "Triton kernels"
    if os.environ.get("TRITON_INTERPRET") == "1":
        return "Triton kernels under the interpreter (slow: tokens/s mean nothing)"
    return "plain PyTorch (no GPU, no TRITON_INTERPRET=1)"


def gib(n) -> str:
    return "n/a" if n is None else f"{n / GIB:.2f} GiB"


def ratio(a, b) -> str:
    return "n/a" if a is None or b is None or b == 0 else f"{a / b:.3f}"


def print_table(results: dict) -> None:
    eager = results.get("eager")
    header = ("variant", "tokens/s", "speed/eager", "peak memory", "memory/eager",
              "above resting", "max |loss - eager|")
    rows = []
    for name, r in results.items():
        diff = "n/a"
        if eager is not None:
            diff = f"{max(abs(a - b) for a, b in zip(r['losses'], eager['losses'])):.3g}"
        rows.append((name, f"{r['tokens_per_s']:,.0f}",
                     ratio(r["tokens_per_s"], eager and eager["tokens_per_s"]),
                     gib(r["peak_memory_bytes"]),
                     ratio(r["peak_memory_bytes"], eager and eager["peak_memory_bytes"]),
                     gib(r["above_resting_bytes"]), diff))
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        print("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                        for i, (cell, w) in enumerate(zip(row, widths))))


def main(argv=None) -> int:
    args = parse_args(argv)
    import transformers

    import fused_swiglu

    device = args.device
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {card}; torch {torch.__version__}, transformers {transformers.__version__}, "
          f"fused_swiglu {fused_swiglu.__version__}: {kernel_path(device)}")

    data, source = corpus_bytes()
    batches = make_batches(data, steps=args.warmup + args.steps, batch=args.batch,
                           seq=args.seq, seed=args.seed)
    master = build_model(args)
    n_params = sum(p.numel() for p in master.parameters())
    print(f"model: LlamaForCausalLM, {args.layers} layers, hidden {args.hidden}, intermediate "
          f"{args.intermediate}, {args.heads} heads, vocab {VOCAB} (bytes), "
          f"{n_params / 1e6:.1f}M parameters, {args.dtype}")
    print(f"data: {source}, {len(data):,} bytes; batch {args.batch} x seq {args.seq} = "
          f"{args.batch * args.seq:,} tokens a step; {args.warmup} warm-up + {args.steps} timed "
          f"steps of AdamW (lr {args.lr:g}), seed {args.seed}")

    def report(variant, r):
        patched = f", {len(r['patched_modules'])} MLPs patched" if r["patched_modules"] else ""
        print(f"{variant}: {r['tokens_per_s']:,.0f} tokens/s, peak memory "
              f"{gib(r['peak_memory_bytes'])} ({gib(r['above_resting_bytes'])} above resting), "
              f"loss {r['losses'][0]:.4f} -> {r['losses'][-1]:.4f}{patched}")
    results, skipped = run_variants(args.variants, device,
                                    lambda variant: train(variant, master, batches, args),
                                    report, print)

    if results:
        print()
        print_table(results)
        if "eager" in results:
            print(f"(max |loss - eager| over all {args.warmup + args.steps} steps, "
                  f"warm-up included)")
    if args.json:
        config = {k: v for k, v in vars(args).items() if k != "json"}
        config.update(device=str(device), dtype=args.dtype, card=card,
                      kernel_path=kernel_path(device), data=source, parameters=n_params)
        Path(args.json).write_text(json.dumps(
            {"config": config, "results": results, "skipped": skipped}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
