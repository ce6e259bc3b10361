"""Reads benchmark CSVs (python -m fused_swiglu.bench) and prints the project's performance
targets as measured, per card (the CSV's folder, e.g. results/NVIDIA_H200), dtype and weight
layout: forward / cuBLAS bound, forward+backward speed-up over Liger and torch.compile (both
over M >= 4096: geometric mean and worst row), the M = 512 GPU-time speed-up over Liger (CUDA
graphs), peak memory / Liger's, decode / weight-read time, and the forward path our rows took.
Every row holds ratios to baselines timed in its own run, so CSVs of several runs on one card
can be read together (a later file's row replaces an earlier one's). CSVs without a layout
column are the linear layout's.
"""

import argparse
import collections
import csv
import math
import pathlib

OURS = "fused_swiglu"
RECOMPUTE = OURS + " recompute"
FAST_ACCUM = OURS + " fast_accum"
FP8 = OURS + " fp8"
BOUND = "cuBLAS packed GEMM (bound)"  # fused_swiglu.bench.BOUND
TEXT_COLUMNS = ("impl", "dtype", "layout", "path")
LAYOUT_ORDER = ("linear", "row_major", "packed_linear", "packed_row_major")
TRAIN_MIN_TOKENS = 4096
DECODE_MAX_TOKENS = 511  # fewer than 512 tokens: decode rows, forward only


def load(path):
    """The rows of one CSV, numbers as floats (NaN where empty), m, d_model, d_ff as ints,
    layout "linear" and path "" where the CSV has no such column, card from the folder."""
    path = pathlib.Path(path)
    with open(path) as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k, v in r.items():
            if k not in TEXT_COLUMNS:
                r[k] = float(v) if v not in ("", "nan") else math.nan
        r["m"], r["d_model"], r["d_ff"] = int(r["m"]), int(r["d_model"]), int(r["d_ff"])
        r["layout"] = r.get("layout") or "linear"
        r["path"] = r.get("path") or ""
        r.setdefault("fwd_bwd_graph_ms", math.nan)
        r["card"] = path.resolve().parent.name
    return rows


def geomean(values):
    values = list(values)
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else math.nan


def _finite(values):
    return [v for v in values if not math.isnan(v)]


def _tokens(ms):
    ms = sorted(set(ms))
    return "M = " + ", ".join(map(str, ms))


class Group:
    """The rows of one card, dtype and layout, by (m, d_model, d_ff, impl)."""

    def __init__(self, card, dtype, layout, rows):
        self.card, self.dtype, self.layout = card, dtype, layout
        self.by_key = {(r["m"], r["d_model"], r["d_ff"], r["impl"]): r for r in rows}
        shapes = sorted({k[:3] for k in self.by_key if k[3] == OURS},
                        key=lambda s: (s[1], s[2], s[0]))
        self.train = [s for s in shapes if s[0] >= TRAIN_MIN_TOKENS]
        self.mid = [s for s in shapes if DECODE_MAX_TOKENS < s[0] < TRAIN_MIN_TOKENS]
        self.decode = [s for s in shapes if s[0] <= DECODE_MAX_TOKENS]
        self.shapes = shapes

    def row(self, shape, impl):
        return self.by_key.get((*shape, impl))

    def ratios(self, shapes, impl, column, over=OURS):
        """column of impl / column of `over`, for the shapes that have both (NaN dropped)."""
        pairs = [(self.row(s, impl), self.row(s, over)) for s in shapes]
        return _finite(a[column] / b[column] for a, b in pairs if a and b)

    def targets(self):
        """{name: (geomean, worst)} of every target this group has rows for."""
        train, mid, decode = self.train, self.mid, self.decode
        out = {}

        def add(name, values, worst):
            if values:
                out[name] = (geomean(values), worst(values))
        add("fwd_vs_bound", _finite(self.row(s, OURS)["fwd_vs_bound"] for s in train), max)
        add("over_liger", self.ratios(train, "liger", "fwd_bwd_ms"), min)
        add("over_compile", self.ratios(train, "torch.compile", "fwd_bwd_ms"), min)
        add("graph_over_liger_train", self.ratios(train, "liger", "fwd_bwd_graph_ms"), min)
        add("graph_over_liger", self.ratios(mid, "liger", "fwd_bwd_graph_ms"), min)
        add("peak_vs_liger", self.ratios(train + mid, OURS, "peak_mb", over="liger"), max)
        add("recompute", self.ratios(train + mid, RECOMPUTE, "fwd_bwd_ms", over=OURS), max)
        add("fast_accum", self.ratios(train + mid, FAST_ACCUM, "fwd_ms", over=OURS), max)
        add("fp8_over_liger", self.ratios(train, "liger", "fwd_bwd_ms", over=FP8), min)
        add("fp8_fwd_over_bound", self.ratios(train, BOUND, "fwd_ms", over=FP8), min)
        add("decode_vs_read", _finite(self.row(s, OURS)["vs_weight_read"] for s in decode), max)
        add("decode_over_eager", self.ratios(decode, "eager", "fwd_ms"), min)
        return out

    def paths(self, shapes):
        """{path: [M of each of our rows that took it]} ("" where the CSV has no path)."""
        paths = collections.defaultdict(list)
        for s in shapes:
            paths[self.row(s, OURS)["path"]].append(s[0])
        return paths


def groups(rows):
    """One Group per card, dtype and layout, in card, dtype, layout order."""
    split = collections.defaultdict(list)
    for r in rows:
        split[(r["card"], r["dtype"], r["layout"])].append(r)

    def order(key):
        card, dtype, layout = key
        rank = LAYOUT_ORDER.index(layout) if layout in LAYOUT_ORDER else len(LAYOUT_ORDER)
        return card, dtype, rank, layout
    return [Group(*key, split[key]) for key in sorted(split, key=order)]


def _fmt(target, digits=3):
    mean, worst = target
    return f"geomean {mean:.{digits}f}, worst {worst:.{digits}f}"


def print_targets(group):
    t = group.targets()
    print(f"\n{group.card} {group.dtype}, {group.layout} weights: {len(group.train)} shapes "
          f"with M >= {TRAIN_MIN_TOKENS}, {len(group.mid)} with "
          f"{_tokens(s[0] for s in group.mid) if group.mid else 'M = 512'}, "
          f"{len(group.decode)} decode")
    lines = [
        ("fwd_vs_bound", f"forward / cuBLAS bound, M >= {TRAIN_MIN_TOKENS}"),
        ("over_liger", f"fwd+bwd speed-up over liger, M >= {TRAIN_MIN_TOKENS}"),
        ("over_compile", f"fwd+bwd speed-up over torch.compile, M >= {TRAIN_MIN_TOKENS}"),
        ("graph_over_liger_train", f"fwd+bwd GPU time (CUDA graphs), speed-up over liger, "
                                   f"M >= {TRAIN_MIN_TOKENS}"),
        ("graph_over_liger", "M = 512 fwd+bwd GPU time (CUDA graphs), speed-up over liger"),
        ("peak_vs_liger", "peak memory / Liger's"),
        ("recompute", "recompute fwd+bwd time / default"),
        ("fast_accum", "fast_accum / fp32 accumulation forward time"),
        ("fp8_over_liger", f"fp8 fwd+bwd speed-up over liger (bf16), M >= {TRAIN_MIN_TOKENS}"),
        ("fp8_fwd_over_bound", "fp8 forward speed-up over the 16-bit cuBLAS bound"),
        ("decode_vs_read", "decode / weight-read time"),
        ("decode_over_eager", "decode speed-up over eager"),
    ]
    for key, label in lines:
        if key in t:
            print(f"  {label}: {_fmt(t[key], 2 if key == 'peak_vs_liger' else 3)}")
    paths = group.paths(group.shapes)
    print("  path of fused_swiglu: " + "; ".join(
        f"{path or 'not recorded'} at {_tokens(ms)} ({len(ms)} rows)"
        for path, ms in sorted(paths.items())))


def _cell(t, key, digits=3):
    if key not in t:
        return "–"
    mean, worst = t[key]
    return f"{mean:.{digits}f} ({worst:.{digits}f})"


def _path_cell(group):
    if not any(p for p in group.paths(group.shapes)):
        return "–"
    parts = []
    for shapes in (group.train, group.mid, group.decode):
        paths = [p or "?" for p in group.paths(shapes)]
        parts.append("/".join(sorted(paths)) if paths else "–")
    return " · ".join(parts)


def markdown_summary(card_groups):
    """ONE table for one card: a row per dtype and layout with the targets' ratios."""
    card = card_groups[0].card.replace("_", " ")
    print(f"\n**{card}**: geometric mean (worst row) over M ≥ {TRAIN_MIN_TOKENS}, M = 512 as "
          f"CUDA-graph replays; speed-ups > 1 are faster, forward / bound and memory < 1 "
          f"less; path at M ≥ {TRAIN_MIN_TOKENS} · M = 512 · decode.\n")
    print("| dtype | weights | forward / cuBLAS | fwd+bwd over Liger | its GPU time (CUDA "
          "graphs) over Liger | fwd+bwd over torch.compile | M = 512 GPU time over Liger | "
          "peak / Liger's | decode / weight read | path |")
    print("|---" * 10 + "|")
    for g in card_groups:
        t = g.targets()
        cells = [g.dtype, g.layout, _cell(t, "fwd_vs_bound"), _cell(t, "over_liger"),
                 _cell(t, "graph_over_liger_train"), _cell(t, "over_compile"),
                 _cell(t, "graph_over_liger"), _cell(t, "peak_vs_liger", 2),
                 _cell(t, "decode_vs_read"), _path_cell(g)]
        print("| " + " | ".join(cells) + " |")


TRAIN_COLUMNS = (BOUND, "eager", "torch.compile", "liger", OURS, FAST_ACCUM, RECOMPUTE, FP8)


def _header(first, columns):
    names = [c.replace(" (bound)", " bound").replace("fused_swiglu ", "") for c in columns]
    print(f"| {first} | " + " | ".join(names) + " | path |")
    print("|---" * (len(names) + 2) + "|")


def _ms(v):
    return "–" if math.isnan(v) else f"{v:.3f}"


def markdown_rows(group):
    """The full tables of one dtype and layout: ms for M >= 512 (forward / forward+backward,
    CUDA-graph forward+backward in brackets, peak MB), µs and the ratio to the weight-read
    time for decode; our forward path in the last column."""
    present = [c for c in TRAIN_COLUMNS if any(group.row(s, c) for s in group.shapes)]
    train = group.mid + group.train
    train.sort(key=lambda s: (s[1], s[2], s[0]))
    title = f"**{group.card.replace('_', ' ')}, {group.dtype}, {group.layout} weights**"
    if train:
        print(f"\n{title}: forward / forward+backward in ms, for M = 512 also forward+backward "
              f"as CUDA-graph replays [in brackets], and peak MB of forward+backward "
              f"(M tokens x d_model x d_ff):\n")
        _header("shape", present)
        for s in train:
            cells = []
            for c in present:
                r = group.row(s, c)
                if r is None:
                    cells.append("–")
                    continue
                cell = f"{_ms(r['fwd_ms'])} / {_ms(r['fwd_bwd_ms'])}"
                if not math.isnan(r.get("fwd_bwd_graph_ms", math.nan)):
                    cell += f" [{r['fwd_bwd_graph_ms']:.3f}]"
                if not math.isnan(r.get("peak_mb", math.nan)):
                    cell += f" ({r['peak_mb']:.0f} MB)"
                cells.append(cell)
            path = group.row(s, OURS)["path"] or "–"
            print(f"| {s[0]}x{s[1]}x{s[2]} | " + " | ".join(cells) + f" | {path} |")
    if group.decode:
        present = [c for c in present if c != RECOMPUTE]
        print(f"\n{title}, decode: forward in µs as CUDA-graph replays (in brackets: the ratio "
              f"to reading both weights once at the measured copy bandwidth):\n")
        _header("shape", present)
        for s in group.decode:
            cells = []
            for c in present:
                r = group.row(s, c)
                cells.append(f"{r['fwd_ms'] * 1e3:.1f} ({r['vs_weight_read']:.2f})" if r
                             else "–")
            path = group.row(s, OURS)["path"] or "–"
            print(f"| {s[0]}x{s[1]}x{s[2]} | " + " | ".join(cells) + f" | {path} |")


def parser():
    p = argparse.ArgumentParser(
        prog="python benchmarks/summarize.py", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example: python benchmarks/summarize.py --markdown "
               "benchmarks/results/NVIDIA_H200/*.csv")
    p.add_argument("csv", nargs="+", help="CSV files written by python -m fused_swiglu.bench")
    p.add_argument("--markdown", action="store_true",
                   help="also print, per card, one compact table of the targets (a row per "
                        "dtype and layout, for the README) and the full per-row tables")
    p.add_argument("--plots", metavar="DIR",
                   help="redraw the plots from all rows into DIR (needs matplotlib)")
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    rows = [row for path in args.csv for row in load(path)]
    all_groups = groups(rows)
    for g in all_groups:
        print_targets(g)
    if args.markdown:
        for card in dict.fromkeys(g.card for g in all_groups):
            card_groups = [g for g in all_groups if g.card == card]
            markdown_summary(card_groups)
            for g in card_groups:
                markdown_rows(g)
    if args.plots:
        from fused_swiglu.bench import write_plots
        write_plots(rows, pathlib.Path(args.plots), rows[0]["card"].replace("_", " "))
    return all_groups


if __name__ == "__main__":
    main()
