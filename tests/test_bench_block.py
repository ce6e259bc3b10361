"""The block benchmark's CPU-side logic (python -m fused_swiglu.bench --block; the timings
themselves need a GPU): its command line, the GEMMs of its bounds, the float8 operands, the
implementations and their shared weights, the rows and where they are written."""

import csv
import math
import sys
import types

import pytest
import torch
from conftest import DEVICE

from fused_swiglu import SwiGLUMLP, bench, bench_block
from fused_swiglu.bench_block import EagerMLP, block_gemms, operand

M, D_MODEL, D_FF = 12, 24, 40


# ---- the GEMMs of the bounds

def _silu_grad(g):
    s = torch.sigmoid(g)
    return s * (1 + g * (1 - s))


def test_block_gemms_are_the_block_forward_and_backward():
    """Run in order on one block's tensors, the GEMMs give its output and every gradient that
    autograd gives, each of the shape the list states: the bound times the block's own
    products."""
    torch.manual_seed(0)
    mlp = EagerMLP(D_MODEL, D_FF, dtype=torch.float64)
    x = torch.randn(M, D_MODEL, dtype=torch.float64, requires_grad=True)
    d_out = torch.randn(M, D_MODEL, dtype=torch.float64)
    out = mlp(x)
    grads = torch.autograd.grad(out, (x, mlp.gate_proj.weight, mlp.up_proj.weight,
                                      mlp.down_proj.weight), d_out)
    gemms = block_gemms(M, D_MODEL, D_FF)
    assert len(gemms) == 6 and len({g.name for g in gemms}) == 6
    # the FLOPs of the unpacked block's nine GEMMs, three per weight matrix
    assert sum(g.flops for g in gemms) == 9 * 2 * M * D_MODEL * D_FF
    tensors = {"x": x.detach(), "d_out": d_out,
               "w_gate_up": torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]).detach(),
               "w_down": mlp.down_proj.weight.detach()}
    assert {k: tuple(v.shape) for k, v in tensors.items()} == {
        k: v for k, v in bench_block.tensor_shapes(M, D_MODEL, D_FF).items() if k in tensors}
    results = {}
    for g in gemms:
        a, b = operand(tensors, g.a), operand(tensors, g.b)
        assert a.shape == (g.rows, g.inner) and b.shape == (g.inner, g.cols), g.name
        results[g.name] = a @ b
        if g.name.startswith("forward x"):
            gate, up = results[g.name].split(D_FF, dim=1)
            tensors["y"] = torch.nn.functional.silu(gate) * up
        elif g.name.startswith("backward dy"):
            dy = results[g.name]
            tensors["d_gate_up"] = torch.cat([dy * up * _silu_grad(gate),
                                              dy * torch.nn.functional.silu(gate)], dim=1)
    assert set(tensors) == set(bench_block.tensor_shapes(M, D_MODEL, D_FF))
    d_x, d_gate, d_up, d_down = grads
    by_name = dict(zip((g.name for g in gemms), results.values()))
    expected = [out.detach(), d_down, d_x, torch.cat([d_gate, d_up])]
    got = [by_name["forward y @ Wd^T"], by_name["backward dWd = dout^T @ y"],
           by_name["backward dx = [dg|du] @ [Wg;Wu]"],
           by_name["backward dW[g;u] = [dg|du]^T @ x"]]
    for want, have in zip(expected, got):
        torch.testing.assert_close(have, want, rtol=1e-12, atol=1e-12)


def test_block_tensors_and_operands_are_views():
    tensors = bench_block.block_tensors(M, D_MODEL, D_FF, torch.bfloat16, "cpu")
    for name, shape in bench_block.tensor_shapes(M, D_MODEL, D_FF).items():
        t = tensors[name]
        assert t.shape == shape and t.dtype == torch.bfloat16 and t.is_contiguous()
    # nn.Linear-scaled weights, unit-size activations
    assert tensors["w_down"].float().std() < 0.5 < tensors["x"].float().std()
    transposed = operand(tensors, "w_gate_up^T")
    assert transposed.shape == (D_MODEL, 2 * D_FF) and transposed.stride() == (1, D_MODEL)
    assert transposed.data_ptr() == tensors["w_gate_up"].data_ptr()
    assert operand(tensors, "y") is tensors["y"]


def test_gemm_bound_runs_every_gemm_once(monkeypatch):
    tensors = bench_block.block_tensors(M, D_MODEL, D_FF, torch.float32, "cpu")
    shapes = []
    real_mm = torch.mm

    def mm(a, b):
        shapes.append((tuple(a.shape), tuple(b.shape)))
        return real_mm(a, b)

    run = bench_block.gemm_bound(block_gemms(M, D_MODEL, D_FF), tensors)
    monkeypatch.setattr(torch, "mm", mm)
    run()
    assert shapes == [((g.rows, g.inner), (g.inner, g.cols))
                      for g in block_gemms(M, D_MODEL, D_FF)]


def _dequantized_mm(a_q, b_q, scale_a, scale_b):
    return (a_q.to(torch.float32) * scale_a) @ (b_q.to(torch.float32) * scale_b)


def test_fp8_operands_layouts_and_values():
    """Every GEMM's operands as torch._scaled_mm takes them (A row-major, B column-major,
    float32 scales (rows, 1) and (1, cols)), and their dequantized product is the 16-bit
    product to float8's precision."""
    torch.manual_seed(1)
    m, d_model, d_ff = 32, 48, 64
    tensors = bench_block.block_tensors(m, d_model, d_ff, torch.bfloat16, "cpu")
    for g in block_gemms(m, d_model, d_ff):
        a_q, b_q, scale_a, scale_b = bench_block.fp8_operands(g, tensors)
        assert a_q.dtype == b_q.dtype == torch.float8_e4m3fn, g.name
        assert a_q.shape == (g.rows, g.inner) and a_q.stride() == (g.inner, 1), g.name
        assert b_q.shape == (g.inner, g.cols) and b_q.stride() == (1, g.inner), g.name
        assert scale_a.shape == (g.rows, 1) and scale_b.shape == (1, g.cols)
        assert scale_a.dtype == scale_b.dtype == torch.float32
        want = operand(tensors, g.a).double() @ operand(tensors, g.b).double()
        got = _dequantized_mm(a_q, b_q, scale_a, scale_b).double()
        # e4m3 keeps 3 mantissa bits: at most 2^-4 relative error per operand element,
        # about 3% for the product's norm, far below what a misplaced scale gives
        assert ((got - want).norm() / want.norm()).item() < 0.05, g.name


def test_fp8_gemm_bound_calls_the_matmul_on_prequantized_operands():
    tensors = bench_block.block_tensors(M, 16, 32, torch.bfloat16, "cpu")
    gemms = block_gemms(M, 16, 32)
    calls = []
    run = bench_block.fp8_gemm_bound(gemms, tensors,
                                     lambda *ops: calls.append(tuple(t.dtype for t in ops)))
    assert calls == []  # quantized beforehand, nothing run yet
    run()
    run()
    assert calls == 2 * len(gemms) * [(torch.float8_e4m3fn, torch.float8_e4m3fn,
                                        torch.float32, torch.float32)]


def test_scaled_mm_matches_the_dequantized_product():
    # on the GPU where there is one (the benchmark's device), else on the CPU, where the
    # pinned PyTorch has the float8 GEMM too
    tensors = bench_block.block_tensors(32, 16, 48, torch.bfloat16, DEVICE)
    ops = bench_block.fp8_operands(block_gemms(32, 16, 48)[0], tensors)
    out = bench_block.scaled_mm(*ops)
    assert out.dtype == torch.bfloat16 and out.shape == (32, 96)
    torch.testing.assert_close(out.float(), _dequantized_mm(*ops), rtol=1e-2, atol=1e-2)


def test_fp8_bound_fits():
    assert bench_block.fp8_bound_fits(512, 4096, 11008)
    assert not bench_block.fp8_bound_fits(520, 4096, 11008)
    assert not bench_block.fp8_bound_fits(512, 4096, 11000 + 1)


# ---- the implementations

def _hide(monkeypatch, *modules):
    """Make `modules` unimportable (sys.modules entries of None), whether installed or not."""
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)


def test_implementations_share_the_weights_and_compute_the_block(monkeypatch):
    _hide(monkeypatch, "liger_kernel", "liger_kernel.transformers",
          "liger_kernel.transformers.swiglu", "torchao", "torchao.float8")
    found, notes = bench_block.implementations(16, 32, torch.bfloat16, "cpu")
    assert list(found) == ["eager", "torch.compile", "fused_swiglu", "fused_swiglu fp8"]
    assert found["torch.compile"]._orig_mod is found["eager"]
    assert found["fused_swiglu fp8"].fp8 and not found["fused_swiglu"].fp8
    state = found["eager"].state_dict()
    for name in ("fused_swiglu", "fused_swiglu fp8"):
        assert all(torch.equal(v, state[k]) for k, v in found[name].state_dict().items())
    assert any(n.startswith("liger:") for n in notes)
    assert [n.split(":")[0] for n in notes if n.startswith("torchao")] == [
        "torchao tensorwise", "torchao rowwise"]
    # one step of each (not the compiled one): the gradients of x and the three weights
    x = torch.randn(8, 16, dtype=torch.bfloat16, requires_grad=True)
    d_out = torch.randn(8, 16, dtype=torch.bfloat16)
    steps = bench_block.block_steps({k: found[k] for k in ("eager", "fused_swiglu",
                                                           "fused_swiglu fp8")}, x, d_out)
    eager = steps["eager"]()
    assert [g.shape for g in eager] == [(8, 16), (32, 16), (32, 16), (16, 32)]
    for name, tolerance in (("fused_swiglu", 2e-2), ("fused_swiglu fp8", 0.15)):
        for want, got in zip(eager, steps[name]()):
            error = ((got.float() - want.float()).norm() / want.float().norm()).item()
            assert error < tolerance, name


def test_liger_module_is_built_where_liger_imports(monkeypatch):
    built = []

    class FakeLiger(torch.nn.Module):
        def __init__(self, config):
            super().__init__()
            built.append((config.hidden_size, config.intermediate_size, config.hidden_act))
            self.gate_proj = torch.nn.Linear(config.hidden_size, config.intermediate_size,
                                             bias=False)
            self.up_proj = torch.nn.Linear(config.hidden_size, config.intermediate_size,
                                           bias=False)
            self.down_proj = torch.nn.Linear(config.intermediate_size, config.hidden_size,
                                             bias=False)

    package = types.ModuleType("liger_kernel.transformers.swiglu")
    package.LigerSwiGLUMLP = FakeLiger
    monkeypatch.setitem(sys.modules, "liger_kernel", types.ModuleType("liger_kernel"))
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers",
                        types.ModuleType("liger_kernel.transformers"))
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers.swiglu", package)
    _hide(monkeypatch, "torchao", "torchao.float8")
    found, notes = bench_block.implementations(16, 32, torch.bfloat16, "cpu")
    assert built == [(16, 32, "silu")]
    assert list(found)[:3] == ["eager", "torch.compile", "liger"]
    assert found["liger"].down_proj.weight.dtype == torch.bfloat16
    assert torch.equal(found["liger"].down_proj.weight, found["eager"].down_proj.weight)
    assert not any(n.startswith("liger") for n in notes)


def _fake_torchao(monkeypatch, convert):
    float8 = types.ModuleType("torchao.float8")
    float8.convert_to_float8_training = convert
    float8.Float8LinearConfig = types.SimpleNamespace(from_recipe_name=lambda name: name)
    torchao = types.ModuleType("torchao")
    torchao.float8 = float8
    monkeypatch.setitem(sys.modules, "torchao", torchao)
    monkeypatch.setitem(sys.modules, "torchao.float8", float8)


def test_torchao_rows_where_it_converts_notes_where_not(monkeypatch):
    eager = EagerMLP(16, 32)
    _hide(monkeypatch, "torchao", "torchao.float8")
    module, why_not = bench_block.torchao_float8(eager, "tensorwise")
    assert module is None and "does not import" in why_not

    def refuse(module, config):
        raise RuntimeError(f"no float8 on this card for {config}")
    _fake_torchao(monkeypatch, refuse)
    module, why_not = bench_block.torchao_float8(eager, "rowwise")
    assert module is None
    assert "RuntimeError: no float8 on this card for rowwise" in why_not

    converted = []

    def convert(module, config):
        converted.append((module, config))
        return module
    _fake_torchao(monkeypatch, convert)
    module, why_not = bench_block.torchao_float8(eager, "rowwise")
    assert why_not is None and converted[0][1] == "rowwise"
    # a copy, compiled: eager itself is not converted
    assert converted[0][0] is not eager and module._orig_mod is converted[0][0]
    found, notes = bench_block.implementations(16, 32, torch.float32, "cpu")
    assert list(found)[-2:] == ["torchao tensorwise", "torchao rowwise"]
    assert not any(n.startswith("torchao") for n in notes)


# ---- one case and its rows

def test_bench_case_times_bounds_and_modules_in_interleaved_rounds(monkeypatch):
    calls = []

    def timer(fn):
        calls.append(fn)
        fn()
        return 2.0

    class Broken(EagerMLP):
        def forward(self, x):
            raise RuntimeError("not on this card")

    monkeypatch.setattr(bench, "median_ms", timer)
    monkeypatch.setattr(bench_block, "scaled_mm", _dequantized_mm)
    bf16 = torch.bfloat16
    modules = {"eager": EagerMLP(16, 32, dtype=bf16),
               "fused_swiglu": SwiGLUMLP(16, 32, dtype=bf16),
               "torchao tensorwise": Broken(16, 32, dtype=bf16)}
    rows, notes = bench_block.bench_case(modules, 16, 16, 32, bf16, rounds=1,
                                         with_memory=False, device="cpu")
    assert [r["impl"] for r in rows] == ["bf16 GEMMs", "fp8 GEMMs", "eager", "fused_swiglu"]
    assert notes == ["torchao tensorwise: its step failed, no row (RuntimeError: not on this "
                     "card)"]
    # 16 tokens are host-bound: HOST_BOUND_ROUNDS rounds of two bounds and two modules
    assert len(calls) == bench.HOST_BOUND_ROUNDS * 4
    assert all(r["fwd_bwd_ms"] == 2.0 and r["gemm_bound_ratio"] == 1.0 for r in rows)
    assert all(math.isnan(r["peak_mb"]) for r in rows)
    # 24 tokens: cuBLAS's float8 GEMM cannot take them, no float8 bound
    rows, notes = bench_block.bench_case({"eager": modules["eager"]}, 24, 16, 32, bf16,
                                         rounds=1, with_memory=False, device="cpu")
    assert [r["impl"] for r in rows] == ["bf16 GEMMs", "eager"]
    assert notes == ["fp8 GEMMs: no row, cuBLAS's float8 GEMM needs sizes in multiples of 16"]
    # the rounds of bench.py: more up to HOST_BOUND_TOKENS, `rounds` above
    for m, rounds in ((bench.HOST_BOUND_TOKENS, bench.HOST_BOUND_ROUNDS),
                      (bench.HOST_BOUND_TOKENS + 16, 2)):
        calls.clear()
        bench_block.bench_case({"eager": modules["eager"]}, m, 16, 32, bf16, rounds=2,
                               with_memory=False, device="cpu")
        assert len(calls) == rounds * 3


def test_case_rows_ratios():
    m, d_model, d_ff = 1024, 64, 128
    times = {"bf16 GEMMs": 1.0, "fp8 GEMMs": 0.5, "eager": 2.0, "torch.compile": 1.6,
             "liger": 1.8, "fused_swiglu": 1.5, "fused_swiglu fp8": 1.25,
             "torchao tensorwise": 1.2}
    memory = {"eager": (3 * 2**20, 10 * 2**20), "fused_swiglu": (2 * 2**20, 6 * 2**20)}
    rows = bench_block.case_rows(m, d_model, d_ff, torch.bfloat16, times, memory)
    assert [r["impl"] for r in rows] == list(times)
    ours = rows[5]
    assert ours["impl"] == "fused_swiglu" and ours["dtype"] == "bfloat16"
    assert (ours["m"], ours["d_model"], ours["d_ff"]) == (m, d_model, d_ff)
    assert ours["vs_eager"] == pytest.approx(2.0 / 1.5)
    assert ours["vs_liger"] == pytest.approx(1.8 / 1.5)
    assert ours["vs_torchao_tensorwise"] == pytest.approx(1.2 / 1.5)
    assert ours["gemm_bound_ratio"] == pytest.approx(1.0 / 1.5)
    assert ours["tflops"] == pytest.approx(18 * m * d_model * d_ff / 1.5e-3 * 1e-12)
    assert (ours["saved_mb"], ours["peak_mb"]) == (2.0, 6.0)
    assert rows[1]["gemm_bound_ratio"] == 2.0 and rows[0]["vs_eager"] == 2.0
    assert math.isnan(rows[1]["peak_mb"])
    # without Liger and torchao: NaN, not a ratio to something else
    partial = bench_block.case_rows(m, d_model, d_ff, torch.float16,
                                    {"fp16 GEMMs": 1.0, "eager": 2.0}, None)
    assert math.isnan(partial[1]["vs_liger"]) and math.isnan(partial[1]["vs_torchao_tensorwise"])
    assert partial[1]["gemm_bound_ratio"] == 0.5


def test_run_writes_block_csv_per_card_and_builds_modules_once_per_shape(monkeypatch,
                                                                         tmp_path, capsys):
    built, benched = [], []

    def implementations(d_model, d_ff, dtype, device="cuda"):
        built.append((d_model, d_ff, dtype))
        return {"eager": None}, ["liger: Liger-Kernel is not installed"]

    def bench_case(modules, m, d_model, d_ff, dtype, rounds):
        benched.append((m, d_model, d_ff, rounds))
        times = {bench_block.bound_name(dtype): 1.0, "eager": 2.0}
        return bench_block.case_rows(m, d_model, d_ff, dtype, times), []

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda: "NVIDIA Test Card")
    monkeypatch.setattr(bench_block, "implementations", implementations)
    monkeypatch.setattr(bench_block, "bench_case", bench_case)
    cases = [((64, 128), 4096), ((32, 96), 4096), ((64, 128), 512)]
    rows = bench_block.run(cases, [torch.bfloat16], out_dir=tmp_path, rounds=3, tag="t1",
                           skipped=[1, 8])
    assert built == [(64, 128, torch.bfloat16), (32, 96, torch.bfloat16)]
    assert benched == [(4096, 64, 128, 3), (512, 64, 128, 3), (4096, 32, 96, 3)]
    path = tmp_path / "NVIDIA_Test_Card" / "block_t1.csv"
    with open(path) as f:
        written = list(csv.DictReader(f))
    assert len(written) == len(rows) == 6
    assert [(r["impl"], r["m"], r["d_model"]) for r in written[:2]] == [
        ("bf16 GEMMs", "4096", "64"), ("eager", "4096", "64")]
    assert float(written[1]["gemm_bound_ratio"]) == 0.5
    out = capsys.readouterr().out
    assert "M = 1, 8 skipped" in out and "# liger: Liger-Kernel is not installed" in out
    assert "bfloat16 block forward+backward, M=512 d_model=64 d_ff=128" in out
    bench_block.run(cases[:1], [torch.float16], out_dir=tmp_path)
    assert (tmp_path / "NVIDIA_Test_Card" / "block.csv").exists()


def test_by_shape_groups_token_counts_in_order():
    cases = [((2, 3), 4096), ((4, 5), 4096), ((2, 3), 512), ((4, 5), 512), ((2, 3), 8192)]
    assert bench_block.by_shape(cases) == [((2, 3), [4096, 512, 8192]), ((4, 5), [4096, 512])]


# ---- command line

def test_parse_block_defaults():
    args = bench.parse_args(["--block"])
    assert args.block and args.dtypes == [torch.bfloat16]
    shapes = bench.TRAIN_SHAPES
    assert len(args.cases) == len(shapes) * (len(bench.TRAIN_TOKENS) + 1)
    assert min(m for _, m in args.cases) == 512
    assert args.block_skipped == bench.DECODE_TOKENS
    assert args.out == bench.default_out_dir()
    # without --block, as before
    plain = bench.parse_args([])
    assert not plain.block and plain.dtypes == [torch.bfloat16, torch.float16]
    assert bench.parse_args(["--dtypes", "float32"]).dtypes == [torch.float32]


def test_parse_block_selections():
    args = bench.parse_args(["--block", "--dtypes", "float16,bfloat16", "--shapes",
                             "2048x5632,4096x11008", "--tokens", "8,4096,512", "--rounds", "7",
                             "--tag", "b1", "--layouts", "linear"])
    assert args.dtypes == [torch.float16, torch.bfloat16] and args.rounds == 7
    assert args.cases == [((2048, 5632), 4096), ((4096, 11008), 4096), ((2048, 5632), 512),
                          ((4096, 11008), 512)]
    assert args.block_skipped == [8] and args.tag == "b1"
    quick = bench.parse_args(["--block", "--quick"])
    assert quick.cases == [((4096, 11008), 8192), ((4096, 11008), 512)]
    assert quick.block_skipped == [1, 32]


@pytest.mark.parametrize("argv, message", [
    (["--dtypes", "float32"], "--block runs 16-bit dtypes only (bfloat16, float16), got "
                              "float32"),
    (["--dtypes", "bfloat16,float32"], "got float32"),
    (["--tokens", "1,8,32"], "--block times forward+backward from M = 512 tokens up, and "
                             "--tokens 1,8,32 has none"),
    (["--layouts", "row_major"], "--block runs nn.Linear weights"),
    (["--impls", "liger"], "leave out --impls"),
])
def test_parse_block_rejects_with_a_clear_error(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.parse_args(["--block", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "usage: python -m fused_swiglu.bench" in err


def test_block_help_says_what_the_bounds_leave_out():
    help_text = bench.parser().format_help()
    block = next(a for a in bench.parser()._actions if "--block" in a.option_strings)
    assert "--block" in help_text
    assert "quantization is not in that bound" in block.help and "block.csv" in block.help


def test_main_without_a_gpu_exits_with_a_clear_message(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(bench_block, "run", lambda *a, **k: pytest.fail("ran without a GPU"))
    with pytest.raises(SystemExit, match="the benchmark needs a CUDA GPU"):
        bench.main(["--block"])


def test_main_dispatches_block_to_bench_block(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(bench, "run", lambda *a, **k: pytest.fail("ran bench.run"))
    monkeypatch.setattr(bench_block, "run", lambda *a, **k: calls.append((a, k)))
    bench.main(["--block", "--shapes", "2048x5632", "--tokens", "1,4096", "--out",
                str(tmp_path), "--tag", "x", "--rounds", "2"])
    assert calls == [(([((2048, 5632), 4096)], [torch.bfloat16]),
                      dict(out_dir=tmp_path, rounds=2, tag="x", skipped=[1]))]
