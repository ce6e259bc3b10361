"""Benchmark: fused_swiglu against the cuBLAS GEMM bound, eager PyTorch, torch.compile and
Liger-Kernel, forward and forward+backward, with saved and peak memory.

    python -m fused_swiglu.bench [--quick] [--out benchmarks/results]

Every number comes from this one run on this one card; ratios are to the cuBLAS time of the
packed GEMM ``x @ [w_gate | w_up]`` (three such GEMMs for forward+backward) measured here too,
with the packed weight in the same nn.Linear layout as the weights.
"""

import argparse
import csv
import functools
import math
import pathlib
import random
import statistics

import torch
import triton

from .functional import swiglu

TRAIN_SHAPES = [(2048, 5632), (4096, 11008), (4096, 14336), (8192, 28672)]
TRAIN_TOKENS = [4096, 8192, 16384]
DECODE_TOKENS = [1, 8, 32]


def _eager(x, w_gate, w_up):
    return torch.nn.functional.silu(x @ w_gate) * (x @ w_up)


_compiled = None


def _torch_compile(x, w_gate, w_up):
    global _compiled
    if _compiled is None:
        # dynamic shapes: one compilation serves the whole sweep
        _compiled = torch.compile(_eager, dynamic=True)
    return _compiled(x, w_gate, w_up)


def _liger():
    try:
        from liger_kernel.ops.swiglu import LigerSiLUMulFunction
    except ImportError:
        return None

    def run(x, w_gate, w_up):
        return LigerSiLUMulFunction.apply(x @ w_gate, x @ w_up)
    return run


def implementations(dtype):
    impls = {"eager": _eager, "torch.compile": _torch_compile}
    liger = _liger()
    if liger is not None:
        impls["liger"] = liger
    impls["fused_swiglu"] = swiglu
    if dtype == torch.float16:
        impls["fused_swiglu fast_accum"] = lambda x, wg, wu: swiglu(x, wg, wu, fast_accum=True)
    impls["fused_swiglu recompute"] = lambda x, wg, wu: swiglu(x, wg, wu, recompute=True)
    return impls


# Every timing is taken in ROUNDS interleaved rounds over all implementations and the median
# kept: the card's clocks drift with its power draw, and timing one implementation after
# another would hand that drift to whichever ran last. Eager calls with up to
# HOST_BOUND_TOKENS tokens measure the host more than the GPU (a forward+backward's host time
# exceeds its GPU time), and one implementation's rounds there spread by 1.5-2x (benchmarks/
# host_bound.py): those rows take HOST_BOUND_ROUNDS rounds, whose median moves less.
ROUNDS = 3
HOST_BOUND_TOKENS = 512
HOST_BOUND_ROUNDS = 11


def median_ms(fn):
    # 100 ms of repetitions: a 35 ms forward+backward still gets a few samples per round
    # (with 25 ms it got one, and rows of the largest shapes moved by 2% between runs)
    return triton.testing.do_bench(fn, warmup=10, rep=100, return_mode="median")


def graph_median_ms(fn):
    """Kernel time of fn replayed as a CUDA graph, as serving engines run decode steps: at a
    few tokens the host's launch overhead would otherwise be what is measured."""
    fn()  # compile and autotune outside the capture
    return triton.testing.do_bench_cudagraph(fn, rep=25, return_mode="median")


def captured_median_ms(step):
    """GPU time of step, captured once as a CUDA graph and replayed: a forward+backward whose
    eager time the host bounds. Graphs do not capture torch.compile's dynamic-shape program
    (its mode="reduce-overhead" would time a different one)."""
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step()  # warm-up on the capture stream
    torch.cuda.current_stream().wait_stream(stream)
    with torch.cuda.graph(graph):
        step()
    return triton.testing.do_bench(graph.replay, warmup=10, rep=100, return_mode="median")


def _no_grad(fn):
    def run():
        with torch.no_grad():
            return fn()
    return run


def interleaved_samples(timer, fns, rounds=ROUNDS):
    """{name: [ms of fn in each round]}, each round timing every fn once, in an order of its
    own (a seeded shuffle, the same in every run). In one fixed order, on an H100, the GEMM
    timed first in each round came out 7-13% faster than the same GEMMs timed after it
    (NOTES.md, v11); rotating the order would still keep every fn's neighbour."""
    names = list(fns)
    samples = {name: [] for name in names}
    shuffle = random.Random(0).shuffle
    for _ in range(rounds):
        order = names[:]
        shuffle(order)
        for name in order:
            samples[name].append(timer(fns[name]))
    return samples


def interleaved_medians(timer, fns, rounds=ROUNDS):
    """{name: median ms of fn over `rounds` interleaved rounds}."""
    return {name: statistics.median(times)
            for name, times in interleaved_samples(timer, fns, rounds).items()}


def memory_bytes(fn, inputs, d_out):
    """(bytes autograd saves for fn(*inputs) beyond the inputs, peak bytes above the inputs
    during its forward and the backward from d_out)."""
    input_pointers = {t.data_ptr() for t in inputs}
    saved = []

    def pack(t):
        if t.data_ptr() not in input_pointers:
            saved.append(t.numel() * t.element_size())
        return t

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*inputs)
    torch.autograd.grad(out, inputs, d_out)
    del out
    torch.cuda.synchronize()
    return sum(saved), torch.cuda.max_memory_allocated() - base


BOUND = "cuBLAS packed GEMM (bound)"


def linear_layout_operands(m, d_model, d_ff, dtype, device="cuda"):
    """x (m, d_model) and w_gate, w_up (d_model, d_ff) as models hold them: transposed views of
    nn.Linear (d_ff, d_model) weights, scaled so that x @ w stays near unit size."""
    x = torch.randn(m, d_model, device=device, dtype=dtype)
    w_gate, w_up = ((torch.randn(d_ff, d_model, device=device, dtype=dtype) * d_model ** -0.5).T
                    for _ in range(2))
    return x, w_gate, w_up


def training_problem(m, d_model, d_ff, dtype, impls):
    """{name: one forward+backward of that implementation}, all on the same operands:
    linear_layout_operands() that require grad and one gradient dy for the output."""
    x, w_gate, w_up = linear_layout_operands(m, d_model, d_ff, dtype)
    for t in (x, w_gate, w_up):
        t.requires_grad_(True)
    dy = torch.randn(m, d_ff, device=x.device, dtype=dtype)
    return training_steps(impls, x, w_gate, w_up, dy)


def training_steps(impls, x, w_gate, w_up, dy):
    """{name: one forward+backward of that implementation: the gradients of x, w_gate and
    w_up for dy}."""
    return {name: (lambda fn=fn: torch.autograd.grad(fn(x, w_gate, w_up), (x, w_gate, w_up), dy))
            for name, fn in impls.items()}


def bench_shape(m, d_model, d_ff, dtype, impls, with_backward=True, with_memory=True,
                rounds=ROUNDS):
    """Rows of results for one shape: the bound first, then every implementation; `rounds`
    interleaved rounds (at least HOST_BOUND_ROUNDS for the host-bound sizes)."""
    x, w_gate, w_up = linear_layout_operands(m, d_model, d_ff, dtype)
    dy = torch.randn(m, d_ff, device="cuda", dtype=dtype)
    flops_fwd = 2 * m * d_model * 2 * d_ff
    x.requires_grad_(with_backward)
    w_gate.requires_grad_(with_backward)
    w_up.requires_grad_(with_backward)
    # the bound's packed weight in the same layout: one (2 d_ff, d_model) Linear, transposed
    packed = torch.cat([w_gate.T, w_up.T]).T
    fwd = {BOUND: _no_grad(functools.partial(torch.mm, x, packed))}
    del packed  # only the bound's closure holds it, so that dropping that frees it
    fwd.update({name: _no_grad(lambda fn=fn: fn(x, w_gate, w_up)) for name, fn in impls.items()})
    # decode rows (no backward) are timed as CUDA graphs, which the host does not bound
    if with_backward and m <= HOST_BOUND_TOKENS:
        rounds = max(rounds, HOST_BOUND_ROUNDS)
    fwd_ms = interleaved_medians(median_ms if with_backward else graph_median_ms, fwd, rounds)
    fwd[BOUND] = None  # frees the packed weight before the forward+backward timings
    fwd_bwd_ms, fwd_bwd_graph_ms = {}, {}
    if with_backward:
        steps = training_steps(impls, x, w_gate, w_up, dy)
        fwd_bwd_ms = interleaved_medians(median_ms, steps, rounds)
        fwd_bwd_ms[BOUND] = 3 * fwd_ms[BOUND]
        if m <= HOST_BOUND_TOKENS:  # the GPU's time too, where the eager one is the host's
            fwd_bwd_graph_ms = interleaved_medians(captured_median_ms, {
                name: step for name, step in steps.items() if name != "torch.compile"})
    rows = []
    for name in fwd:
        row = dict(impl=name, fwd_ms=fwd_ms[name], fwd_bwd_ms=fwd_bwd_ms.get(name, math.nan),
                   fwd_bwd_graph_ms=fwd_bwd_graph_ms.get(name, math.nan),
                   saved_mb=math.nan, peak_mb=math.nan)
        if with_backward and with_memory and name in impls:
            saved, peak = memory_bytes(impls[name], (x, w_gate, w_up), dy)
            row["saved_mb"], row["peak_mb"] = saved / 2**20, peak / 2**20
        rows.append(row)
    for row in rows:
        row.update(m=m, d_model=d_model, d_ff=d_ff, dtype=str(dtype).replace("torch.", ""))
        row["fwd_tflops"] = flops_fwd / row["fwd_ms"] * 1e-9
        row["fwd_vs_bound"] = row["fwd_ms"] / fwd_ms[BOUND]
        row["fwd_bwd_vs_bound"] = row["fwd_bwd_ms"] / (3 * fwd_ms[BOUND])
    return rows


def weight_read_ms(d_model, d_ff, dtype, bandwidth_gbs):
    return 2 * d_model * d_ff * dtype.itemsize / bandwidth_gbs * 1e-6


def copy_bandwidth_gbs():
    """Device-to-device copy bandwidth, counting bytes read plus bytes written."""
    src = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src))
    return 2 * src.numel() / ms * 1e-6


def run(shapes_and_tokens, dtypes, out_dir=None, with_memory=True, rounds=ROUNDS):
    card = torch.cuda.get_device_name()
    bandwidth = copy_bandwidth_gbs()
    print(f"# {card}: copy bandwidth {bandwidth:.0f} GB/s, torch {torch.__version__}, "
          f"triton {triton.__version__}")
    rows = []
    for dtype in dtypes:
        impls = implementations(dtype)
        for (d_model, d_ff), m in shapes_and_tokens:
            decode = m < 512
            shape_rows = bench_shape(m, d_model, d_ff, dtype, impls, with_backward=not decode,
                                     with_memory=with_memory, rounds=rounds)
            read_ms = weight_read_ms(d_model, d_ff, dtype, bandwidth)
            for row in shape_rows:
                row["vs_weight_read"] = row["fwd_ms"] / read_ms
            rows += shape_rows
            _print_rows(shape_rows)
            if out_dir is not None:  # after every shape: a cut-short run keeps what it measured
                _write_csv(rows, pathlib.Path(out_dir) / _card_folder(card))
    if out_dir is not None:
        write_plots(rows, pathlib.Path(out_dir) / _card_folder(card), card)
    return rows


def _card_folder(card: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in card).strip("_")


def _print_rows(rows):
    first = rows[0]
    print(f"\n{first['dtype']} M={first['m']} d_model={first['d_model']} d_ff={first['d_ff']}")
    print(f"{'implementation':28s} {'fwd ms':>8s} {'TFLOP/s':>8s} {'x bound':>8s} "
          f"{'fwd+bwd ms':>10s} {'x bound':>8s} {'graph ms':>9s} {'saved MB':>9s} "
          f"{'peak MB':>9s}")
    for r in rows:
        print(f"{r['impl']:28s} {r['fwd_ms']:8.3f} {r['fwd_tflops']:8.0f} "
              f"{r['fwd_vs_bound']:8.3f} {r['fwd_bwd_ms']:10.3f} {r['fwd_bwd_vs_bound']:8.3f} "
              f"{r.get('fwd_bwd_graph_ms', math.nan):9.3f} "
              f"{r.get('saved_mb', math.nan):9.0f} {r.get('peak_mb', math.nan):9.0f}")


def _write_csv(rows, folder: pathlib.Path):
    folder.mkdir(parents=True, exist_ok=True)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(folder / "swiglu.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def write_plots(rows, folder: pathlib.Path, card: str):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plots")
        return
    for dtype in sorted({r["dtype"] for r in rows}):
        # training sizes only: decode rows have no backward
        training = [r for r in rows if r["dtype"] == dtype and r["m"] >= 512]
        if not training:
            continue
        for column, title in (("fwd_ms", "forward"), ("fwd_bwd_ms", "forward+backward")):
            _plot(plt, training, column, f"{dtype} {title} ({card})",
                  folder / f"{dtype}_{column[:-3]}.png")


def _plot(plt, rows, column, title, path):
    # grouped by model shape, tokens ascending
    shapes = sorted(dict.fromkeys((r["m"], r["d_model"], r["d_ff"]) for r in rows),
                    key=lambda s: (s[1], s[2], s[0]))
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    fig, ax = plt.subplots(figsize=(max(8, len(shapes) * 0.8), 4.5))
    width = 0.8 / len(impls)
    for i, impl in enumerate(impls):
        speed = []
        for shape in shapes:
            row = next(r for r in rows if (r["m"], r["d_model"], r["d_ff"]) == shape
                       and r["impl"] == impl)
            bound = next(r for r in rows if (r["m"], r["d_model"], r["d_ff"]) == shape
                         and r["impl"].startswith("cuBLAS"))
            speed.append(bound[column] / row[column])
        ax.bar([j + i * width for j in range(len(shapes))], speed, width, label=impl)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(shapes))])
    ax.set_xticklabels([f"{m}\n{d}x{f}" for m, d, f in shapes], fontsize=7)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_ylabel("speed relative to the cuBLAS GEMM bound")
    ax.set_title(title)
    # below the axes, where it covers no bar
    ax.legend(fontsize=7, ncol=len(impls), loc="upper center", bbox_to_anchor=(0.5, -0.14))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one shape per size class")
    parser.add_argument("--out", default="benchmarks/results", help="folder for csv and png")
    parser.add_argument("--dtypes", default="bfloat16,float16")
    parser.add_argument("--tokens", help="only these token counts, e.g. 512,1,8,32")
    parser.add_argument("--rounds", type=int, default=ROUNDS,
                        help="interleaved rounds per row (more steady on a noisy card; "
                             f"default {ROUNDS}, at least {HOST_BOUND_ROUNDS} for M <= "
                             f"{HOST_BOUND_TOKENS})")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    if not torch.cuda.is_available():
        raise SystemExit("the benchmark needs a CUDA GPU")
    dtypes = [getattr(torch, name) for name in args.dtypes.split(",")]
    if args.quick:
        cases = [((4096, 11008), m) for m in (8192, 512, 1, 32)]
    else:
        cases = [(shape, m) for shape in TRAIN_SHAPES for m in TRAIN_TOKENS]
        cases += [(shape, 512) for shape in TRAIN_SHAPES]
        cases += [(shape, m) for shape in TRAIN_SHAPES for m in DECODE_TOKENS]
    if args.tokens:
        tokens = {int(m) for m in args.tokens.split(",")}
        cases = [(shape, m) for shape, m in cases if m in tokens]
    run(cases, dtypes, out_dir=args.out, rounds=args.rounds)


if __name__ == "__main__":
    main()
