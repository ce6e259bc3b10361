"""Times fused_swiglu against the cuBLAS GEMM bound, eager PyTorch, torch.compile and
Liger-Kernel, forward and forward+backward, with the memory autograd saves and the peak, for
each way a model may hold the two weights (--layouts). Every number comes from this one run
on this one card: ratios are to the cuBLAS time of the packed GEMM x @ [w_gate | w_up], in the
same layout as the weights (three such GEMMs for forward+backward), measured here too. Each
timing is the median of interleaved rounds over all implementations. The CSV and the plots go
to OUT/<card>/ (see --out); benchmarks/summarize.py reads CSVs of several runs together.

weight layouts (w_gate and w_up are (d_model, d_ff) matrices in every one):
  linear            separate nn.Linear(d_model, d_ff) weights, as .T views (Llama, Mistral)
  row_major         two contiguous (d_model, d_ff) tensors
  packed_linear     one (2 d_ff, d_model) buffer: buf[:d_ff].T, buf[d_ff:].T (Phi-3's
                    gate_up_proj); its gradient flows back through the slices to the buffer
  packed_row_major  one (d_model, 2 d_ff) buffer: buf[:, :d_ff], buf[:, d_ff:]
"""

import argparse
import csv
import dataclasses
import functools
import gc
import math
import pathlib
import random
import statistics
import tempfile
import time

import torch
import triton

from . import launch
from .functional import swiglu

TRAIN_SHAPES = [(2048, 5632), (4096, 11008), (4096, 14336), (8192, 28672)]
TRAIN_TOKENS = [4096, 8192, 16384]
DECODE_TOKENS = [1, 8, 32]
LAYOUTS = ("linear", "row_major", "packed_linear", "packed_row_major")
DTYPES = ("bfloat16", "float16", "float32")


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


OURS = "fused_swiglu"
RECOMPUTE = OURS + " recompute"
FAST_ACCUM = OURS + " fast_accum"
FP8 = OURS + " fp8"
# --impls names -> the implementations' names in the output
IMPL_NAMES = {"eager": "eager", "torch.compile": "torch.compile", "liger": "liger",
              "fused_swiglu": OURS, "recompute": RECOMPUTE, "fast_accum": FAST_ACCUM,
              "fp8": FP8}


def implementations(dtype, names=None):
    """{name: fn(x, w_gate, w_up)} of every implementation the benchmark compares, or of those
    among `names` (output names); fast_accum for float16 only, fp8 (float8 GEMMs, rowwise
    scales) for 16-bit dtypes, Liger where it is installed."""
    impls = {"eager": _eager, "torch.compile": _torch_compile}
    liger = _liger()
    if liger is not None:
        impls["liger"] = liger
    impls[OURS] = swiglu
    if dtype == torch.float16:
        impls[FAST_ACCUM] = lambda x, wg, wu: swiglu(x, wg, wu, fast_accum=True)
    impls[RECOMPUTE] = lambda x, wg, wu: swiglu(x, wg, wu, recompute=True)
    if dtype in (torch.bfloat16, torch.float16):
        impls[FP8] = lambda x, wg, wu: swiglu(x, wg, wu, fp8=True)
    if names is not None:
        impls = {name: fn for name, fn in impls.items() if name in names}
    return impls


# Every timing is taken in ROUNDS interleaved rounds over all implementations and the median
# kept: the card's clocks drift with its power draw, and timing one implementation after
# another would hand that drift to whichever ran last. On an H100 one implementation's
# forward+backward spread 8-19% over twelve rounds (NOTES.md, v11), so three rounds left a
# row's median several % loose. Eager calls with up to HOST_BOUND_TOKENS tokens measure the
# host more than the GPU (a forward+backward's host time exceeds its GPU time), and one
# implementation's rounds there spread by 1.5-2x (benchmarks/host_bound.py): those rows take
# HOST_BOUND_ROUNDS rounds, whose median moves less.
ROUNDS = 5
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


def captured_step(step):
    """step captured once as a CUDA graph (replay it to run the step again)."""
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step()  # warm-up on the capture stream
    torch.cuda.current_stream().wait_stream(stream)
    with torch.cuda.graph(graph):
        step()
    return graph


def captured_median_ms(step):
    """GPU time of step, captured once as a CUDA graph and replayed: a forward+backward whose
    eager time the host bounds. Graphs do not capture torch.compile's dynamic-shape program
    (its mode="reduce-overhead" would time a different one)."""
    return median_ms(captured_step(step).replay)


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


def memory_bytes(fn, inputs, d_out, leaves=None):
    """(bytes autograd saves for fn(*inputs) beyond the inputs' memory, peak bytes above the
    inputs during its forward and the backward from d_out to `leaves` (default: inputs))."""
    input_storages = {t.untyped_storage().data_ptr() for t in inputs}
    saved = []

    def pack(t):
        if t.untyped_storage().data_ptr() not in input_storages:
            saved.append(t.numel() * t.element_size())
        return t

    # what the previous measurement left for the garbage collector would otherwise be freed
    # during this one, and lower its peak by that much
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*inputs)
    torch.autograd.grad(out, inputs if leaves is None else leaves, d_out)
    del out
    torch.cuda.synchronize()
    return sum(saved), torch.cuda.max_memory_allocated() - base


BOUND = "cuBLAS packed GEMM (bound)"


@dataclasses.dataclass
class Operands:
    """x (m, d_model) and the (d_model, d_ff) weights of one layout; `leaves` are the tensors
    a training step differentiates: x and both weights, or x and the one buffer that packed
    layouts slice the weights from (`packed`, else None)."""
    layout: str
    x: torch.Tensor
    w_gate: torch.Tensor
    w_up: torch.Tensor
    packed: torch.Tensor | None

    @property
    def leaves(self):
        if self.packed is not None:
            return self.x, self.packed
        return self.x, self.w_gate, self.w_up

    def weights(self):
        """(w_gate, w_up), packed layouts' sliced from the buffer anew, as a model's forward
        slices them: a CUDA graph then captures the slices' backward too, which autograd runs
        on the stream the slice was made on (slices made once, outside the capture, would put
        it on the default stream, which a capture may not touch)."""
        if self.packed is not None:
            return _halves(self.layout, self.packed)
        return self.w_gate, self.w_up

    @torch.no_grad()
    def packed_weight(self):
        """[w_gate | w_up], (d_model, 2 d_ff), in the weights' layout: the bound's operand. A
        view of the buffer for packed layouts, a new tensor for the others."""
        if self.packed is not None:
            return self.packed.T if self.layout == "packed_linear" else self.packed
        if self.layout == "linear":
            # one (2 d_ff, d_model) nn.Linear weight, transposed
            return torch.cat([self.w_gate.T, self.w_up.T]).T
        return torch.cat([self.w_gate, self.w_up], dim=1)


def _halves(layout, packed):
    """(w_gate, w_up): the two (d_model, d_ff) views of a packed layout's buffer."""
    if layout == "packed_linear":
        d_ff = packed.shape[0] // 2
        return packed[:d_ff].T, packed[d_ff:].T
    d_ff = packed.shape[1] // 2
    return packed[:, :d_ff], packed[:, d_ff:]


def layout_operands(layout, m, d_model, d_ff, dtype, device="cuda", requires_grad=False):
    """Operands of `layout` (LAYOUTS; the module docstring says what each is), the weights
    scaled so that x @ w stays near unit size, and the leaves requiring grad if asked."""
    x = torch.randn(m, d_model, device=device, dtype=dtype).requires_grad_(requires_grad)

    def weight(*shape, grad=requires_grad):
        return (torch.randn(*shape, device=device, dtype=dtype) * d_model ** -0.5
                ).requires_grad_(grad)
    packed = None
    if layout == "linear":
        # transposed views of tensors without grad: leaves of their own
        w_gate, w_up = (weight(d_ff, d_model, grad=False).T.requires_grad_(requires_grad)
                        for _ in range(2))
    elif layout == "row_major":
        w_gate, w_up = weight(d_model, d_ff), weight(d_model, d_ff)
    elif layout == "packed_linear":
        packed = weight(2 * d_ff, d_model)
        w_gate, w_up = _halves(layout, packed)
    elif layout == "packed_row_major":
        packed = weight(d_model, 2 * d_ff)
        w_gate, w_up = _halves(layout, packed)
    else:
        raise ValueError(f"unknown weight layout {layout!r}; the layouts are {', '.join(LAYOUTS)}")
    return Operands(layout, x, w_gate, w_up, packed)


def linear_layout_operands(m, d_model, d_ff, dtype, device="cuda"):
    """x (m, d_model) and w_gate, w_up (d_model, d_ff) as models hold them: transposed views of
    nn.Linear (d_ff, d_model) weights, scaled so that x @ w stays near unit size."""
    ops = layout_operands("linear", m, d_model, d_ff, dtype, device)
    return ops.x, ops.w_gate, ops.w_up


def training_problem(m, d_model, d_ff, dtype, impls, layout="linear"):
    """{name: one forward+backward of that implementation}, all on the same operands:
    layout_operands() that require grad and one gradient dy for the output."""
    ops = layout_operands(layout, m, d_model, d_ff, dtype, requires_grad=True)
    dy = torch.randn(m, d_ff, device=ops.x.device, dtype=dtype)
    return training_steps(impls, ops.x, ops.w_gate, ops.w_up, dy, ops.leaves, ops.weights)


def training_steps(impls, x, w_gate, w_up, dy, leaves=None, weights=None):
    """{name: one forward+backward of that implementation: the gradients of `leaves` (default
    x, w_gate and w_up) for dy}; `weights`, where given, returns (w_gate, w_up) anew in each
    step (Operands.weights)."""
    leaves = (x, w_gate, w_up) if leaves is None else tuple(leaves)
    if weights is None:
        def weights():
            return w_gate, w_up
    return {name: (lambda fn=fn: torch.autograd.grad(fn(x, *weights()), leaves, dy))
            for name, fn in impls.items()}


def bench_shape(m, d_model, d_ff, dtype, impls, with_backward=True, with_memory=True,
                rounds=ROUNDS, layout="linear", device="cuda"):
    """Rows of results for one shape and weight layout: the bound first, then every
    implementation; `rounds` interleaved rounds (at least HOST_BOUND_ROUNDS for the
    host-bound sizes). Without grad the recompute variant is the default's call, so its
    forward is not timed again (fwd_ms NaN), and without a backward it has no row."""
    if not with_backward:
        impls = {name: fn for name, fn in impls.items() if name != RECOMPUTE}
    ops = layout_operands(layout, m, d_model, d_ff, dtype, device, requires_grad=with_backward)
    x, w_gate, w_up = ops.x, ops.w_gate, ops.w_up
    dy = torch.randn(m, d_ff, device=x.device, dtype=dtype)
    names = [BOUND, *impls]
    fwd = {BOUND: _no_grad(functools.partial(torch.mm, x, ops.packed_weight()))}
    fwd.update({name: _no_grad(lambda fn=fn: fn(x, w_gate, w_up))
                for name, fn in impls.items() if name != RECOMPUTE})
    # decode rows (no backward) are timed as CUDA graphs, which the host does not bound
    eager_rounds = rounds
    if with_backward and m <= HOST_BOUND_TOKENS:
        eager_rounds = max(rounds, HOST_BOUND_ROUNDS)
    fwd_ms = interleaved_medians(median_ms if with_backward else graph_median_ms, fwd,
                                 eager_rounds)
    del fwd  # the bound's closure held the only reference to a packed copy: freed here
    fwd_bwd_ms, fwd_bwd_graph_ms, memory = {}, {}, {}
    if with_backward:
        steps = training_steps(impls, x, w_gate, w_up, dy, ops.leaves, ops.weights)
        fwd_bwd_ms = interleaved_medians(median_ms, steps, eager_rounds)
        fwd_bwd_ms[BOUND] = 3 * fwd_ms[BOUND]
        if ops.packed is not None:
            # each slice's gradient is summed into the buffer's on the stream the buffer (a
            # leaf) was made on, the default stream, which a capture may not touch: PyTorch
            # refuses the capture, for every implementation alike
            if m <= HOST_BOUND_TOKENS:
                print(f"# {layout}: no CUDA-graph timing (the buffer's gradient sums two "
                      f"slices' outside the capture stream)")
        else:
            # the GPU's time too: at M = 512 the eager time is the host's, and up to a few
            # thousand tokens at d_model 2048 the host's launches take about as long as the
            # GPU's work, so the eager rows there move with the host's jitter (NOTES.md, v14)
            graphs = {name: captured_step(step) for name, step in steps.items()
                      if name != "torch.compile"}
            fwd_bwd_graph_ms = interleaved_medians(
                median_ms, {name: graph.replay for name, graph in graphs.items()}, rounds)
            del graphs  # their memory pools, before the peak is measured
        if with_memory:
            memory = {name: memory_bytes(fn, (x, w_gate, w_up), dy, ops.leaves)
                      for name, fn in impls.items()}
    path = launch.forward_path(x, w_gate, w_up)
    rows = []
    for name in names:
        saved, peak = memory.get(name, (math.nan, math.nan))
        row_path = "fp8 rowwise" if name == FP8 else path if name.startswith(OURS) else ""
        row = dict(impl=name, layout=layout, path=row_path,
                   m=m, d_model=d_model, d_ff=d_ff, dtype=dtype_name(dtype),
                   fwd_ms=fwd_ms.get(name, math.nan), fwd_bwd_ms=fwd_bwd_ms.get(name, math.nan),
                   fwd_bwd_graph_ms=fwd_bwd_graph_ms.get(name, math.nan),
                   saved_mb=saved / 2**20, peak_mb=peak / 2**20)
        row["fwd_tflops"] = 2 * m * d_model * 2 * d_ff / row["fwd_ms"] * 1e-9
        row["fwd_vs_bound"] = row["fwd_ms"] / fwd_ms[BOUND]
        row["fwd_bwd_vs_bound"] = row["fwd_bwd_ms"] / (3 * fwd_ms[BOUND])
        rows.append(row)
    return rows


def weight_read_ms(d_model, d_ff, dtype, bandwidth_gbs):
    return 2 * d_model * d_ff * dtype.itemsize / bandwidth_gbs * 1e-6


def copy_bandwidth_gbs():
    """Device-to-device copy bandwidth, counting bytes read plus bytes written."""
    src = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src))
    return 2 * src.numel() / ms * 1e-6


def default_out_dir() -> pathlib.Path:
    """Where results go without --out: the temporary directory, not the source tree."""
    return pathlib.Path(tempfile.gettempdir()) / "fused_swiglu_bench"


def run(shapes_and_tokens, dtypes, out_dir=None, with_memory=True, rounds=ROUNDS,
        layouts=("linear",), impl_names=None, tag=None):
    """Bench every ((d_model, d_ff), m) case in every dtype and layout; with out_dir, write
    the CSV (after every shape, so that a cut-short run keeps what it measured) and the plots
    to out_dir/<card>/. Returns the rows."""
    card = torch.cuda.get_device_name()
    bandwidth = copy_bandwidth_gbs()
    print(f"# {card}: copy bandwidth {bandwidth:.0f} GB/s, torch {torch.__version__}, "
          f"triton {triton.__version__}")
    folder = pathlib.Path(out_dir) / card_folder(card) if out_dir is not None else None
    csv_path = folder / (f"swiglu_{tag}.csv" if tag else "swiglu.csv") if folder else None
    if folder is not None:
        print(f"# results: {csv_path}")
    rows = []
    start = time.perf_counter()
    for dtype in dtypes:
        impls = implementations(dtype, impl_names)
        for (d_model, d_ff), m in shapes_and_tokens:
            shape_start = time.perf_counter()
            read_ms = weight_read_ms(d_model, d_ff, dtype, bandwidth)
            for layout in layouts:
                shape_rows = bench_shape(m, d_model, d_ff, dtype, impls, with_backward=m >= 512,
                                         with_memory=with_memory, rounds=rounds, layout=layout)
                for row in shape_rows:
                    row["vs_weight_read"] = row["fwd_ms"] / read_ms
                rows += shape_rows
                _print_rows(shape_rows)
                if csv_path is not None:
                    write_csv(rows, csv_path)
            now = time.perf_counter()
            print(f"# {m}x{d_model}x{d_ff} {dtype_name(dtype)}, {len(layouts)} layout(s): "
                  f"{now - shape_start:.0f} s; {now - start:.0f} s in all")
    if folder is not None:
        write_plots(rows, folder, card)
        print(f"# wrote {csv_path} and the plots beside it")
    return rows


def dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


def card_folder(card: str) -> str:
    """The results folder's name for a card: its name with runs of other characters as _."""
    return "".join(c if c.isalnum() else "_" for c in card).strip("_")


def _print_rows(rows):
    first = rows[0]
    print(f"\n{first['dtype']} M={first['m']} d_model={first['d_model']} d_ff={first['d_ff']} "
          f"layout={first['layout']}")
    print(f"{'implementation':28s} {'fwd ms':>8s} {'TFLOP/s':>8s} {'x bound':>8s} "
          f"{'fwd+bwd ms':>10s} {'x bound':>8s} {'graph ms':>9s} {'saved MB':>9s} "
          f"{'peak MB':>9s}  path")
    for r in rows:
        print(f"{r['impl']:28s} {r['fwd_ms']:8.3f} {r['fwd_tflops']:8.0f} "
              f"{r['fwd_vs_bound']:8.3f} {r['fwd_bwd_ms']:10.3f} {r['fwd_bwd_vs_bound']:8.3f} "
              f"{r.get('fwd_bwd_graph_ms', math.nan):9.3f} "
              f"{r.get('saved_mb', math.nan):9.0f} {r.get('peak_mb', math.nan):9.0f}  "
              f"{r.get('path', '')}")


def write_csv(rows, path: pathlib.Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def write_plots(rows, folder: pathlib.Path, card: str):
    """Speed relative to the bound, per dtype and layout: <dtype>_fwd.png and
    <dtype>_fwd_bwd.png for the linear layout, <dtype>_<layout>_fwd(_bwd).png for others."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plots")
        return
    folder.mkdir(parents=True, exist_ok=True)
    for dtype in sorted({r["dtype"] for r in rows}):
        for layout in dict.fromkeys(r.get("layout") or "linear" for r in rows):
            # training sizes only: decode rows have no backward
            training = [r for r in rows if r["dtype"] == dtype and r["m"] >= 512
                        and (r.get("layout") or "linear") == layout]
            if not training:
                continue
            stem = dtype if layout == "linear" else f"{dtype}_{layout}"
            for column, title in (("fwd_ms", "forward"), ("fwd_bwd_ms", "forward+backward")):
                _plot(plt, training, column, f"{dtype} {title}, {layout} weights ({card})",
                      folder / f"{stem}_{column[:-3]}.png")


def _plot(plt, rows, column, title, path):
    # grouped by model shape, tokens ascending
    shapes = sorted(dict.fromkeys((r["m"], r["d_model"], r["d_ff"]) for r in rows),
                    key=lambda s: (s[1], s[2], s[0]))
    impls = [i for i in dict.fromkeys(r["impl"] for r in rows) if i != BOUND]
    by_key = {(r["m"], r["d_model"], r["d_ff"], r["impl"]): r for r in rows}
    fig, ax = plt.subplots(figsize=(max(8, len(shapes) * 0.8), 4.5))
    width = 0.8 / max(len(impls), 1)
    for i, impl in enumerate(impls):
        speed = []
        for shape in shapes:
            row, bound = by_key.get((*shape, impl)), by_key.get((*shape, BOUND))
            speed.append(bound[column] / row[column] if row and bound else math.nan)
        ax.bar([j + i * width for j in range(len(shapes))], speed, width, label=impl)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(shapes))])
    ax.set_xticklabels([f"{m}\n{d}x{f}" for m, d, f in shapes], fontsize=7)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_ylabel("speed relative to the cuBLAS GEMM bound")
    ax.set_title(title)
    # below the axes, where it covers no bar
    ax.legend(fontsize=7, ncol=max(len(impls), 1), loc="upper center",
              bbox_to_anchor=(0.5, -0.14))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _names(text: str, allowed, what: str, parser):
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in allowed]
    if unknown or not names:
        parser.error(f"unknown {what} {', '.join(map(repr, unknown)) or repr(text)}; choose "
                     f"from {', '.join(allowed)}")
    return list(dict.fromkeys(names))


def _ints(text: str, what: str, parser):
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        parser.error(f"{what} must be positive integers separated by commas, got {text!r}")
    return values


def _model_shapes(text: str, parser):
    shapes = []
    for item in text.split(","):
        try:
            d_model, d_ff = (int(v) for v in item.lower().split("x"))
        except ValueError:
            parser.error(f"--shapes takes D_MODELxD_FF pairs separated by commas, got {item!r}")
        if d_model < 1 or d_ff < 1:
            parser.error(f"--shapes: sizes must be positive, got {item!r}")
        shapes.append((d_model, d_ff))
    return shapes


def parser():
    p = argparse.ArgumentParser(prog="python -m fused_swiglu.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="one model shape (4096 x 11008) at M = 8192, 512, 1 and 32 tokens, "
                        "instead of every model shape at M = 4096, 8192, 16384, 512, 1, 8, 32")
    p.add_argument("--shapes", metavar="DxF,...",
                   help="model shapes to run, d_model x d_ff, e.g. 4096x11008,8192x28672 "
                        "(default: " + ",".join(f"{d}x{f}" for d, f in TRAIN_SHAPES) + ")")
    p.add_argument("--tokens", metavar="M,...",
                   help="token counts to run at every model shape, e.g. 512,1,8,32 (default: "
                        + ",".join(map(str, TRAIN_TOKENS + [512] + DECODE_TOKENS))
                        + "); from 512 up forward and forward+backward, below it (decode) "
                        "the forward alone, as CUDA-graph replays")
    p.add_argument("--dtypes", metavar="NAME,...",
                   help=f"dtypes to run, from {', '.join(DTYPES)} (default: bfloat16,float16; "
                        "with --block, bfloat16)")
    p.add_argument("--layouts", default=",".join(LAYOUTS), metavar="NAME,...",
                   help="weight layouts to run, each against the bound and baselines in the "
                        "same layout (default: all four, see above)")
    p.add_argument("--impls", default=",".join(IMPL_NAMES), metavar="NAME,...",
                   help="implementations to run besides the cuBLAS bound, which every ratio "
                        f"needs, from {', '.join(IMPL_NAMES)} (default: all; fast_accum runs "
                        "for float16 only, fp8 for 16-bit dtypes, liger where liger-kernel is "
                        "installed)")
    p.add_argument("--rounds", type=int, default=ROUNDS,
                   help="interleaved rounds per timing (more steady on a noisy card; "
                        f"default {ROUNDS}, at least {HOST_BOUND_ROUNDS} for the "
                        f"forward+backward rows with M <= {HOST_BOUND_TOKENS})")
    p.add_argument("--out", metavar="DIR",
                   help="write the CSV and plots to DIR/<card>/, e.g. --out benchmarks/results "
                        f"(default: {default_out_dir()})")
    p.add_argument("--tag", help="name the CSV swiglu_TAG.csv instead of swiglu.csv, so that "
                                 "split runs can share one folder")
    p.add_argument("--block", action="store_true",
                   help="time the whole block with its down projection instead "
                        "(fused_swiglu.bench_block), forward+backward on nn.Linear weights: "
                        "eager, torch.compile, Liger, SwiGLUMLP, SwiGLUMLP(fp8=True) and "
                        "torchao's float8 tensorwise and rowwise (where torchao imports), "
                        "against the block's GEMMs alone in 16-bit cuBLAS and in cuBLAS "
                        "float8 with rowwise scales (operands quantized beforehand: the "
                        "quantization is not in that bound). From M = 512 up: smaller --tokens "
                        "are skipped, and --tokens with none from 512 up is an error. 16-bit "
                        "--dtypes only; writes block.csv (block_TAG.csv)")
    return p


def parse_args(argv=None):
    """The command line, checked: an argparse namespace with the lists the run takes (cases,
    dtypes, layouts, impl_names) and out; with --block, bench_block.check_args's too."""
    p = parser()
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error(f"--rounds must be at least 1, got {args.rounds}")
    dtypes = args.dtypes or ("bfloat16" if args.block else "bfloat16,float16")
    args.dtypes = [getattr(torch, n) for n in _names(dtypes, DTYPES, "dtype", p)]
    args.layouts = _names(args.layouts, LAYOUTS, "layout", p)
    args.impl_names = [IMPL_NAMES[n] for n in _names(args.impls, IMPL_NAMES, "impl", p)]
    if args.tag is not None and not all(c.isalnum() or c in "-_." for c in args.tag):
        p.error(f"--tag takes letters, digits, '-', '_' and '.', got {args.tag!r}")
    if args.quick:
        cases = [((4096, 11008), m) for m in (8192, 512, 1, 32)]
    else:
        cases = [(shape, m) for shape in TRAIN_SHAPES for m in TRAIN_TOKENS]
        cases += [(shape, 512) for shape in TRAIN_SHAPES]
        cases += [(shape, m) for shape in TRAIN_SHAPES for m in DECODE_TOKENS]
    # --shapes and --tokens replace the model shapes or the token counts of those cases
    shapes = list(dict.fromkeys(shape for shape, _ in cases))
    tokens = list(dict.fromkeys(m for _, m in cases))
    if args.shapes:
        shapes = _model_shapes(args.shapes, p)
    if args.tokens:
        tokens = _ints(args.tokens, "--tokens", p)
    if args.shapes or args.tokens:
        # in the default order: large M, then M = 512, then decode, each by shape
        cases = sorted(((shape, m) for shape in shapes for m in tokens),
                       key=lambda c: (c[1] < 512) + (c[1] <= 512))
    args.cases = cases
    args.out = pathlib.Path(args.out) if args.out else default_out_dir()
    if args.block:
        # imported here: bench_block imports this module
        from . import bench_block
        bench_block.check_args(args, p)
    return args


def main(argv=None):
    args = parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("the benchmark needs a CUDA GPU")
    if args.block:
        from . import bench_block
        bench_block.run(args.cases, args.dtypes, out_dir=args.out, rounds=args.rounds,
                        tag=args.tag, skipped=args.block_skipped)
        return
    run(args.cases, args.dtypes, out_dir=args.out, rounds=args.rounds, layouts=args.layouts,
        impl_names=args.impl_names, tag=args.tag)


if __name__ == "__main__":
    main()
