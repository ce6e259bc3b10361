"""The benchmark's CPU-side logic (the timings themselves need a GPU): round order, weight
layouts, command lines, where results go, and summarize.py's ratios."""

import csv
import importlib.util
import math
import os
import pathlib
import subprocess
import sys
import time
import types

import pytest
import torch
from conftest import DEVICE

from fused_swiglu import bench
from fused_swiglu.bench import interleaved_samples

ROOT = pathlib.Path(__file__).resolve().parents[1]
SUMMARIZE = ROOT / "benchmarks" / "summarize.py"


def test_interleaved_rounds_time_every_fn_once_each_in_changing_orders():
    order = []

    def timer(fn):
        order.append(fn())
        return float(len(order))

    names = "abcde"
    fns = {name: (lambda name=name: name) for name in names}
    samples = interleaved_samples(timer, fns, rounds=6)
    rounds = [order[i:i + len(names)] for i in range(0, len(order), len(names))]
    assert len(rounds) == 6 and all(sorted(r) == list(names) for r in rounds)
    # not one fixed order: both who goes first and who follows whom change between rounds
    assert len({r[0] for r in rounds}) > 1
    assert len({tuple(r) for r in rounds}) > 1
    # each sample is the timer's answer for that fn in that round
    for name in names:
        assert samples[name] == [float(i * len(names) + r.index(name) + 1)
                                 for i, r in enumerate(rounds)]
    # the same orders in every run, so two runs time the same sequence
    order.clear()
    interleaved_samples(timer, fns, rounds=6)
    assert [order[i:i + len(names)] for i in range(0, len(order), len(names))] == rounds


# ---- weight layouts

M, D_MODEL, D_FF = 5, 16, 24
# (w_gate stride, stored as: None for two tensors of their own, else the buffer's shape)
EXPECTED = {
    "linear": ((1, D_MODEL), None),
    "row_major": ((D_FF, 1), None),
    "packed_linear": ((1, D_MODEL), (2 * D_FF, D_MODEL)),
    "packed_row_major": ((2 * D_FF, 1), (D_MODEL, 2 * D_FF)),
}


@pytest.mark.parametrize("layout", bench.LAYOUTS)
def test_layout_operands_shapes_strides_and_storage(layout):
    stride, buffer_shape = EXPECTED[layout]
    ops = bench.layout_operands(layout, M, D_MODEL, D_FF, torch.bfloat16, "cpu",
                                requires_grad=True)
    assert ops.x.shape == (M, D_MODEL)
    for w in (ops.w_gate, ops.w_up):
        assert w.shape == (D_MODEL, D_FF) and w.stride() == stride and w.dtype == torch.bfloat16
    gate_storage = ops.w_gate.untyped_storage().data_ptr()
    up_storage = ops.w_up.untyped_storage().data_ptr()
    if buffer_shape is None:
        assert ops.packed is None and gate_storage != up_storage
        assert ops.leaves == (ops.x, ops.w_gate, ops.w_up)
        assert all(t.is_leaf and t.requires_grad for t in ops.leaves)
    else:
        # both weights are views of the one buffer, w_up right after w_gate in it
        assert ops.packed.shape == buffer_shape and ops.packed.is_contiguous()
        assert gate_storage == up_storage == ops.packed.untyped_storage().data_ptr()
        assert ops.w_gate.data_ptr() == ops.packed.data_ptr()
        offset = D_FF * (D_MODEL if layout == "packed_linear" else 1)
        assert ops.w_up.data_ptr() - ops.w_gate.data_ptr() == offset * 2
        assert ops.leaves == (ops.x, ops.packed) and ops.packed.is_leaf
        assert not ops.w_gate.is_leaf and ops.w_gate.requires_grad
    packed = ops.packed_weight()
    assert packed.shape == (D_MODEL, 2 * D_FF) and packed.stride() == (
        (1, D_MODEL) if "linear" in layout else (2 * D_FF, 1))
    assert torch.equal(packed, torch.cat([ops.w_gate, ops.w_up], dim=1))
    if buffer_shape is None:  # a copy for the bound, outside autograd
        assert not packed.requires_grad and packed.untyped_storage().data_ptr() != gate_storage
    else:  # the buffer itself
        assert packed.untyped_storage().data_ptr() == gate_storage


@pytest.mark.parametrize("layout", ["packed_linear", "packed_row_major"])
def test_packed_layout_gradient_reaches_the_buffer_through_both_slices(layout):
    ops = bench.layout_operands(layout, M, D_MODEL, D_FF, torch.float32, "cpu",
                                requires_grad=True)
    dy = torch.randn(M, D_FF)
    steps = bench.training_steps({"eager": bench._eager}, ops.x, ops.w_gate, ops.w_up, dy,
                                 ops.leaves)
    dx, d_packed = steps["eager"]()
    w_gate, w_up = (w.detach().requires_grad_() for w in (ops.w_gate, ops.w_up))
    expected = torch.autograd.grad(bench._eager(ops.x, w_gate, w_up), (ops.x, w_gate, w_up), dy)
    assert d_packed.shape == ops.packed.shape
    halves = (d_packed[:D_FF].T, d_packed[D_FF:].T) if layout == "packed_linear" else (
        d_packed[:, :D_FF], d_packed[:, D_FF:])
    for got, want in zip((dx, *halves), expected):
        torch.testing.assert_close(got, want)


def test_unknown_layout_raises():
    with pytest.raises(ValueError, match="bogus.*linear, row_major"):
        bench.layout_operands("bogus", M, D_MODEL, D_FF, torch.float32, "cpu")


def test_bench_shape_rows_every_layout(monkeypatch):
    """bench_shape's bookkeeping with a fake timer: one row per implementation, the layout
    and, for ours, the forward path; the recompute forward is the default's call and not
    timed again; every implementation's step runs on the layout's tensors."""
    calls = []

    def timer(fn):
        calls.append(fn)
        fn()
        return 2.0

    monkeypatch.setattr(bench, "median_ms", timer)
    monkeypatch.setattr(bench, "graph_median_ms", timer)
    monkeypatch.setattr(bench, "captured_step", lambda step: types.SimpleNamespace(replay=step))
    impls = bench.implementations(torch.float32, ["eager", "fused_swiglu",
                                                  "fused_swiglu recompute"])
    assert list(impls) == ["eager", "fused_swiglu", "fused_swiglu recompute"]
    for layout in bench.LAYOUTS:
        calls.clear()
        rows = bench.bench_shape(8, 16, 32, torch.float32, impls, with_memory=False, rounds=1,
                                 layout=layout, device=DEVICE)
        assert [r["impl"] for r in rows] == [bench.BOUND, *impls]
        assert {r["layout"] for r in rows} == {layout}
        # forward: bound, eager, ours (1 round); fwd+bwd and graphs: 3 each (11 rounds for
        # the host-bound forward and fwd+bwd, the graph replays keep `rounds`); no graphs
        # for the packed layouts, whose capture PyTorch refuses
        graph_calls = 0 if layout.startswith("packed") else 3
        assert len(calls) == 3 * 11 + 3 * 11 + graph_calls
        graph_ms = [r["fwd_bwd_graph_ms"] for r in rows if r["impl"] != bench.BOUND]
        assert all(math.isnan(t) for t in graph_ms) == layout.startswith("packed")
        by_impl = {r["impl"]: r for r in rows}
        assert math.isnan(by_impl["fused_swiglu recompute"]["fwd_ms"])
        assert by_impl["fused_swiglu"]["fwd_vs_bound"] == 1.0
        assert by_impl[bench.BOUND]["fwd_bwd_ms"] == 6.0
        assert by_impl["eager"]["path"] == by_impl[bench.BOUND]["path"] == ""
        paths = {by_impl[n]["path"] for n in ("fused_swiglu", "fused_swiglu recompute")}
        assert len(paths) == 1
        assert paths != {""}
    decode = bench.bench_shape(4, 16, 32, torch.float32, impls, with_backward=False, rounds=1,
                               device=DEVICE)
    assert [r["impl"] for r in decode] == [bench.BOUND, "eager", "fused_swiglu"]


# ---- command line

def test_parse_args_defaults():
    args = bench.parse_args([])
    assert args.layouts == list(bench.LAYOUTS)
    assert args.impl_names == list(bench.IMPL_NAMES.values())
    assert args.dtypes == [torch.bfloat16, torch.float16]
    assert args.rounds == bench.ROUNDS >= 5
    shapes = bench.TRAIN_SHAPES
    assert len(args.cases) == len(shapes) * (len(bench.TRAIN_TOKENS) + 1
                                             + len(bench.DECODE_TOKENS))
    assert args.out == bench.default_out_dir()


def test_parse_args_selections():
    args = bench.parse_args(["--layouts", "packed_linear,linear", "--impls", "liger,fused_swiglu",
                             "--dtypes", "bfloat16", "--shapes", "2048x5632,4096X11008",
                             "--tokens", "8,4096,512", "--rounds", "7", "--out", "somewhere"])
    assert args.layouts == ["packed_linear", "linear"]
    assert args.impl_names == ["liger", "fused_swiglu"]
    assert args.dtypes == [torch.bfloat16] and args.rounds == 7
    assert args.out == pathlib.Path("somewhere")
    # large M first, then M = 512, then decode, each by shape
    assert args.cases == [((2048, 5632), 4096), ((4096, 11008), 4096), ((2048, 5632), 512),
                          ((4096, 11008), 512), ((2048, 5632), 8), ((4096, 11008), 8)]
    quick = bench.parse_args(["--quick", "--tokens", "8192"])
    assert quick.cases == [((4096, 11008), 8192)]


@pytest.mark.parametrize("argv, message", [
    (["--layouts", "bogus"], "unknown layout 'bogus'; choose from linear, row_major, "
                             "packed_linear, packed_row_major"),
    (["--layouts", "linear,bogus"], "unknown layout 'bogus'"),
    (["--impls", "cublas"], "unknown impl 'cublas'"),
    (["--dtypes", "float8"], "unknown dtype 'float8'"),
    (["--rounds", "0"], "--rounds must be at least 1"),
    (["--tokens", "8,x"], "--tokens must be positive integers"),
    (["--shapes", "4096"], "--shapes takes D_MODELxD_FF pairs"),
    (["--tag", "a/b"], "--tag takes letters"),
])
def test_parse_args_rejects_with_a_clear_error(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.parse_args(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "usage: python -m fused_swiglu.bench" in err


def test_default_out_dir_is_outside_the_source_tree():
    out = bench.default_out_dir().resolve()
    assert not out.is_relative_to(ROOT)
    assert out.is_relative_to(pathlib.Path(__import__("tempfile").gettempdir()).resolve())
    assert bench.card_folder("NVIDIA H100 80GB HBM3") == "NVIDIA_H100_80GB_HBM3"


def _run(*argv, timeout=120):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"),
                                                      env.get("PYTHONPATH")]))
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=timeout)
    return done, time.perf_counter() - start


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_python_m_fused_swiglu_help_exits_at_once(flag):
    done, seconds = _run("-m", "fused_swiglu", flag)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python -m fused_swiglu")
    assert "TRITON_INTERPRET=1" in done.stdout and "plain PyTorch" in done.stdout
    assert "self-check passed" not in done.stdout  # nothing ran
    assert seconds < 60


def test_bench_help_names_the_program_and_helps_every_option():
    done, _ = _run("-m", "fused_swiglu.bench", "--help")
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert text.startswith("usage: python -m fused_swiglu.bench")
    assert "packed_row_major  one (d_model, 2 d_ff) buffer" in text
    options = [a for a in bench.parser()._actions if a.option_strings]
    assert all(a.help for a in options)
    assert all(a.option_strings[-1] in text for a in options)


def test_summarize_help_and_no_arguments():
    done, _ = _run(str(SUMMARIZE), "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python benchmarks/summarize.py")
    done, _ = _run(str(SUMMARIZE))
    assert done.returncode == 2
    assert "usage:" in done.stderr and "Traceback" not in done.stderr


# ---- summarize.py

def _summarize():
    spec = importlib.util.spec_from_file_location("summarize", SUMMARIZE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(impl, m, fwd_ms, fwd_bwd_ms, bound_ms, graph_ms=math.nan, peak_mb=math.nan,
         vs_weight_read=math.nan, **extra):
    return dict(impl=impl, **extra, m=m, d_model=64, d_ff=128, dtype="bfloat16", fwd_ms=fwd_ms,
                fwd_bwd_ms=fwd_bwd_ms, fwd_bwd_graph_ms=graph_ms, saved_mb=math.nan,
                peak_mb=peak_mb, fwd_vs_bound=fwd_ms / bound_ms,
                vs_weight_read=vs_weight_read)


def _write(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_summarize_prints_the_targets(tmp_path, capsys):
    card = tmp_path / "NVIDIA_TEST_CARD"
    card.mkdir()
    new = ours = dict(layout="packed_linear")
    rows = []
    # two training shapes: ours over Liger 1.1 and 1.0, over torch.compile 1.2 and 1.25
    for m, ours_fwd, ours_fb, liger_fb, compile_fb, ours_peak, liger_peak in (
            (4096, 1.02, 2.0, 2.2, 2.4, 100, 110), (8192, 0.98, 4.0, 4.0, 5.0, 200, 200)):
        # the same ratios over Liger as CUDA-graph replays
        rows += [_row(bench.BOUND, m, 1.0, 3.0, 1.0, path="", **new),
                 _row("liger", m, 1.1, liger_fb, 1.0, graph_ms=liger_fb, peak_mb=liger_peak,
                      path="", **new),
                 _row("torch.compile", m, 1.2, compile_fb, 1.0, path="", **new),
                 _row("fused_swiglu", m, ours_fwd, ours_fb, 1.0, graph_ms=ours_fb,
                      peak_mb=ours_peak, path="stacked", **ours),
                 _row("fused_swiglu recompute", m, math.nan, ours_fb * 1.3, 1.0,
                      path="stacked", **ours)]
    # M = 512: GPU time over Liger 1.1; peak 50 against 49
    rows += [_row("liger", 512, 0.2, 0.9, 0.1, graph_ms=0.55, peak_mb=49, path="", **new),
             _row("fused_swiglu", 512, 0.2, 0.8, 0.1, graph_ms=0.5, peak_mb=50, path="cublas",
                  **ours)]
    # decode
    rows += [_row("eager", 8, 0.012, math.nan, 0.01, vs_weight_read=1.2, path="", **new),
             _row("fused_swiglu", 8, 0.011, math.nan, 0.01, vs_weight_read=1.1, path="dual",
                  **ours)]
    _write(card / "swiglu_new.csv", rows)
    # a CSV of the format before layouts: no layout, path or graph column
    old = [{k: v for k, v in r.items() if k not in ("layout", "path", "fwd_bwd_graph_ms")}
           for r in rows if r["m"] == 4096]
    _write(card / "swiglu_old.csv", old)

    groups = _summarize().main([str(card / "swiglu_new.csv"), str(card / "swiglu_old.csv"),
                                "--markdown"])
    out = capsys.readouterr().out
    assert [(g.card, g.layout) for g in groups] == [("NVIDIA_TEST_CARD", "linear"),
                                                    ("NVIDIA_TEST_CARD", "packed_linear")]
    packed = out[out.index("packed_linear weights: 2 shapes"):]
    for line in ("forward / cuBLAS bound, M >= 4096: geomean 1.000, worst 1.020",
                 "fwd+bwd speed-up over liger, M >= 4096: geomean 1.049, worst 1.000",
                 "fwd+bwd GPU time (CUDA graphs), speed-up over liger, M >= 4096: geomean "
                 "1.049, worst 1.000",
                 "fwd+bwd speed-up over torch.compile, M >= 4096: geomean 1.225, worst 1.200",
                 "M = 512 fwd+bwd GPU time (CUDA graphs), speed-up over liger: geomean 1.100, "
                 "worst 1.100",
                 "peak memory / Liger's: geomean 0.98, worst 1.02",
                 "recompute fwd+bwd time / default: geomean 1.300, worst 1.300",
                 "decode / weight-read time: geomean 1.100, worst 1.100",
                 "path of fused_swiglu: cublas at M = 512 (1 rows); dual at M = 8 (1 rows); "
                 "stacked at M = 4096, 8192 (2 rows)"):
        assert line in packed, line
    linear = out[out.index("linear weights: 1 shapes"):out.index("packed_linear weights")]
    assert "fwd+bwd speed-up over liger, M >= 4096: geomean 1.100, worst 1.100" in linear
    assert "path of fused_swiglu: not recorded at M = 4096 (1 rows)" in linear
    # the README's table: one row per dtype and layout
    assert "**NVIDIA TEST CARD**" in out
    assert ("| bfloat16 | packed_linear | 1.000 (1.020) | 1.049 (1.000) | 1.049 (1.000) | "
            "1.225 (1.200) | 1.100 (1.100) | 0.98 (1.02) | 1.100 (1.100) | "
            "stacked · cublas · dual |") in out
    # the old CSV has no CUDA-graph column: a dash
    assert "| bfloat16 | linear | 1.020 (1.020) | 1.100 (1.100) | – | 1.200 (1.200) | – |" in out
    # the full table: a row per shape, our path last
    assert "| 8192x64x128 | 1.000 / 3.000 | " in out and "| stacked |" in out


def test_bench_csv_reads_back_in_summarize(tmp_path):
    rows = [_row(bench.BOUND, 4096, 1.0, 3.0, 1.0, layout="row_major", path=""),
            _row("fused_swiglu", 4096, 1.0, 2.0, 1.0, layout="row_major", path="dual")]
    bench.write_csv(rows, tmp_path / "card" / "swiglu.csv")
    loaded = _summarize().load(tmp_path / "card" / "swiglu.csv")
    assert [(r["layout"], r["path"], r["m"]) for r in loaded] == [("row_major", "", 4096),
                                                                   ("row_major", "dual", 4096)]
    assert math.isnan(loaded[0]["peak_mb"]) and loaded[1]["fwd_bwd_ms"] == 2.0


def test_plot_losses_moving_mean():
    spec = importlib.util.spec_from_file_location(
        "plot_losses", ROOT / "benchmarks" / "plot_losses.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    values = [4.0, 2.0, 6.0, 8.0, 1.0]
    # each the mean of itself and up to two before it
    assert module.moving_mean(values, 3) == pytest.approx([4.0, 3.0, 4.0, 16 / 3, 5.0])
    assert module.moving_mean(values, 1) == values
