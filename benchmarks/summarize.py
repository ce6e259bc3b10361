"""Read benchmark CSVs (python -m fused_swiglu.bench) of one card and print the project's
performance targets as measured; redraw the plots. Every row holds ratios to baselines timed in
its own run, so CSVs of several runs on one card can be read together.

    python benchmarks/summarize.py [--markdown] benchmarks/results/NVIDIA_H200/*.csv

With --markdown it also prints the README's tables.
"""

import csv
import math
import pathlib
import sys

from fused_swiglu.bench import write_plots

OURS = "fused_swiglu"


def load(path):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k, v in r.items():
            if k not in ("impl", "dtype"):
                r[k] = float(v) if v not in ("", "nan") else math.nan
        r["m"], r["d_model"], r["d_ff"] = int(r["m"]), int(r["d_model"]), int(r["d_ff"])
    return rows


def geomean(values):
    values = list(values)
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else math.nan


def main(paths):
    rows = [row for path in paths for row in load(path)]
    by_key = {(r["dtype"], r["m"], r["d_model"], r["d_ff"], r["impl"]): r for r in rows}
    shapes = sorted({k[:4] for k in by_key})
    for dtype in sorted({s[0] for s in shapes}):
        train = [s for s in shapes if s[0] == dtype and s[1] >= 4096 and (*s, OURS) in by_key]
        mid = [s for s in shapes if s[0] == dtype and s[1] >= 512 and (*s, OURS) in by_key]
        decode = [s for s in shapes if s[0] == dtype and s[1] < 512 and (*s, OURS) in by_key]
        fwd = [by_key[(*s, OURS)]["fwd_vs_bound"] for s in train]
        print(f"\n{dtype}: {len(train)} shapes with M >= 4096, {len(mid) - len(train)} with "
              f"M = 512, {len(decode)} decode")
        if fwd:
            print(f"  1. forward / cuBLAS bound: geomean {geomean(fwd):.3f}, "
                  f"worst {max(fwd):.3f}")
        for peer in ("liger", "torch.compile"):
            speedups = [by_key[(*s, peer)]["fwd_bwd_ms"] / by_key[(*s, OURS)]["fwd_bwd_ms"]
                        for s in mid if (*s, peer) in by_key]
            if speedups:
                print(f"  2. fwd+bwd speed-up over {peer}: geomean {geomean(speedups):.3f}, "
                      f"worst {min(speedups):.3f}")
        graph = [by_key[(*s, "liger")].get("fwd_bwd_graph_ms", math.nan)
                 / by_key[(*s, OURS)].get("fwd_bwd_graph_ms", math.nan)
                 for s in mid if s[1] < 4096 and (*s, "liger") in by_key]
        graph = [g for g in graph if not math.isnan(g)]
        if graph:
            print(f"  2. M = 512 fwd+bwd GPU time (CUDA graphs), speed-up over liger: geomean "
                  f"{geomean(graph):.3f}, worst {min(graph):.3f}")
        if decode:
            reads = [by_key[(*s, OURS)]["vs_weight_read"] for s in decode]
            vs_eager = [by_key[(*s, "eager")]["fwd_ms"] / by_key[(*s, OURS)]["fwd_ms"]
                        for s in decode]
            print(f"  3. decode / weight-read time: worst {max(reads):.3f}; speed-up over eager: "
                  f"worst {min(vs_eager):.3f}")
        fast = [(*s, "fused_swiglu fast_accum") for s in mid]
        if all(k in by_key for k in fast) and fast:
            ratio = [by_key[k]["fwd_ms"] / by_key[(*k[:4], OURS)]["fwd_ms"] for k in fast]
            print(f"  4. fast_accum / fp32 accumulation forward time: worst {max(ratio):.3f}")
        peak = [by_key[(*s, OURS)]["peak_mb"] / by_key[(*s, "liger")]["peak_mb"]
                for s in mid if (*s, "liger") in by_key]
        recompute = [by_key[(*s, OURS + " recompute")]["fwd_bwd_ms"]
                     / by_key[(*s, OURS)]["fwd_bwd_ms"] for s in mid]
        if peak:
            print(f"  5. peak memory / Liger's: worst {max(peak):.2f}; recompute fwd+bwd time / "
                  f"default: worst {max(recompute):.3f}")
    folder = pathlib.Path(paths[0]).parent
    write_plots(rows, folder, folder.name.replace("_", " "))
    return rows, by_key, shapes


TRAIN_COLUMNS = ("cuBLAS packed GEMM (bound)", "eager", "torch.compile", "liger", OURS,
                 OURS + " fast_accum", OURS + " recompute")


def _header(columns):
    names = [c.replace(" (bound)", " bound").replace("fused_swiglu ", "") for c in columns]
    print("| shape | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")


def markdown_tables(by_key, shapes):
    """The README's tables: ms for M >= 512 (forward / forward+backward, peak MB), µs and the
    ratio to the weight-read time for decode."""
    for dtype in sorted({s[0] for s in shapes}):
        present = [c for c in TRAIN_COLUMNS if any((*s, c) in by_key for s in shapes
                                                   if s[0] == dtype)]
        train = [s for s in shapes if s[0] == dtype and s[1] >= 512]
        train.sort(key=lambda s: (s[2], s[3], s[1]))
        print(f"\n**{dtype}**, forward / forward+backward in ms, for M = 512 also forward+backward "
              f"as CUDA-graph replays [in brackets], and peak MB of forward+backward "
              f"(M tokens x d_model x d_ff):\n")
        _header(present)
        for s in train:
            cells = []
            for c in present:
                r = by_key.get((*s, c))
                if r is None:
                    cells.append("–")
                    continue
                cell = f"{r['fwd_ms']:.3f} / {r['fwd_bwd_ms']:.3f}"
                if not math.isnan(r.get("fwd_bwd_graph_ms", math.nan)):
                    cell += f" [{r['fwd_bwd_graph_ms']:.3f}]"
                if not math.isnan(r["peak_mb"]):
                    cell += f" ({r['peak_mb']:.0f} MB)"
                cells.append(cell)
            print(f"| {s[1]}x{s[2]}x{s[3]} | " + " | ".join(cells) + " |")
        decode = [s for s in shapes if s[0] == dtype and s[1] < 512]
        decode.sort(key=lambda s: (s[2], s[3], s[1]))
        present = [c for c in present if c != OURS + " recompute"]
        print(f"\n**{dtype} decode**, forward in µs as CUDA-graph replays (in brackets: the ratio "
              f"to reading both weights once at the measured copy bandwidth):\n")
        _header(present)
        for s in decode:
            cells = [f"{by_key[(*s, c)]['fwd_ms'] * 1e3:.1f} "
                     f"({by_key[(*s, c)]['vs_weight_read']:.2f})" if (*s, c) in by_key else "–"
                     for c in present]
            print(f"| {s[1]}x{s[2]}x{s[3]} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    markdown = "--markdown" in sys.argv
    _, by_key, shapes = main([a for a in sys.argv[1:] if a != "--markdown"])
    if markdown:
        markdown_tables(by_key, shapes)
