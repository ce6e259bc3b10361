"""Times the whole SwiGLU block with its down projection, forward+backward, as models run it:
out = (silu(x @ W_gate^T) * (x @ W_up^T)) @ W_down^T on nn.Linear weights. fused_swiglu's
SwiGLUMLP, in 16 bits and with fp8=True, against the same block in eager PyTorch (HuggingFace's
LlamaMLP), its torch.compile, Liger-Kernel's LigerSwiGLUMLP and torchao's float8 training
(tensorwise and rowwise recipes, compiled), all holding the same weights, and against two
bounds timed in the same run: the block's GEMMs alone (block_gemms), no elementwise work, in
16-bit cuBLAS and as cuBLAS float8 e4m3 GEMMs with one scale per row and per column
(torch._scaled_mm). The float8 bound's operands are quantized beforehand: its time leaves out
the quantization that every float8 implementation pays. Run through
``python -m fused_swiglu.bench --block``; benchmarks/mlp_step.py builds its modules here too."""

import copy
import dataclasses
import math
import pathlib
import time
import types

import torch
import triton
from torch import nn

from . import bench
from .fp8.recipe import quantize_rowwise
from .modules import SwiGLUMLP

# The block is a training-size measurement: below this many tokens a step is a decode step,
# which bench.py times as the forward alone
MIN_TOKENS = 512
DTYPES = (torch.bfloat16, torch.float16)

EAGER = "eager"
COMPILE = "torch.compile"
LIGER = "liger"
OURS = bench.OURS
OURS_FP8 = bench.FP8
TORCHAO_RECIPES = ("tensorwise", "rowwise")
TORCHAO_TENSORWISE = "torchao tensorwise"
FP8_BOUND = "fp8 GEMMs"


def bound_name(dtype) -> str:
    """The 16-bit GEMM bound's row name: "bf16 GEMMs" or "fp16 GEMMs"."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype] + " GEMMs"


# ---- the bounds

@dataclasses.dataclass(frozen=True)
class Gemm:
    """One GEMM of the block: out (rows, cols) = a @ b, summed over `inner`. An operand names
    a tensor of block_tensors(), with "^T" for its transpose: a view, as autograd hands it to
    cuBLAS, not a copy."""
    name: str
    a: str
    b: str
    rows: int
    cols: int
    inner: int

    @property
    def flops(self) -> int:
        return 2 * self.rows * self.cols * self.inner


def block_gemms(m: int, d_model: int, d_ff: int) -> list:
    """The GEMMs of one forward+backward of the block on m tokens, gate and up packed into one
    GEMM wherever they share an operand, as fused_swiglu runs them: two forward, four backward,
    with the FLOPs of the nine GEMMs of the unpacked block (three per weight, 18 m d_model
    d_ff in all). w_gate_up is [W_gate; W_up], (2 d_ff, d_model); y = silu(g) * u, the down
    projection's input; d_gate_up = [dg | du], the gradients of the two projections."""
    d_2ff = 2 * d_ff
    return [
        Gemm("forward x @ [Wg;Wu]^T", "x", "w_gate_up^T", m, d_2ff, d_model),
        Gemm("forward y @ Wd^T", "y", "w_down^T", m, d_model, d_ff),
        Gemm("backward dy = dout @ Wd", "d_out", "w_down", m, d_ff, d_model),
        Gemm("backward dWd = dout^T @ y", "d_out^T", "y", d_model, d_ff, m),
        Gemm("backward dx = [dg|du] @ [Wg;Wu]", "d_gate_up", "w_gate_up", m, d_model, d_2ff),
        Gemm("backward dW[g;u] = [dg|du]^T @ x", "d_gate_up^T", "x", d_2ff, d_model, m),
    ]


def tensor_shapes(m: int, d_model: int, d_ff: int) -> dict:
    """{name: shape} of the tensors that block_gemms' operands name."""
    return {"x": (m, d_model), "w_gate_up": (2 * d_ff, d_model), "w_down": (d_model, d_ff),
            "y": (m, d_ff), "d_out": (m, d_model), "d_gate_up": (m, 2 * d_ff)}


def block_tensors(m, d_model, d_ff, dtype, device="cuda") -> dict:
    """Random tensors of tensor_shapes(), contiguous as the block holds them, the weights
    scaled as nn.Linear's are (so that products stay near unit size)."""
    tensors = {}
    for name, shape in tensor_shapes(m, d_model, d_ff).items():
        t = torch.randn(shape, device=device, dtype=dtype)
        tensors[name] = t * shape[1] ** -0.5 if name.startswith("w_") else t
    return tensors


def operand(tensors: dict, name: str) -> torch.Tensor:
    """tensors[name], or the transposed view of tensors[name without "^T"]."""
    if name.endswith("^T"):
        return tensors[name[:-2]].t()
    return tensors[name]


def gemm_bound(gemms, tensors):
    """A call that runs every GEMM of `gemms` once with torch.mm (cuBLAS), in the operands'
    layouts."""
    pairs = [(operand(tensors, g.a), operand(tensors, g.b)) for g in gemms]

    def run():
        for a, b in pairs:
            torch.mm(a, b)
    return run


def fp8_operands(gemm: Gemm, tensors: dict, quantize=quantize_rowwise):
    """(a_q, b_q, scale_a, scale_b) of one GEMM in float8 e4m3 as torch._scaled_mm takes them
    with rowwise scaling: a_q (rows, inner) row-major and b_q (inner, cols) column-major, each
    scaled along the shared dimension, scales float32 (rows, 1) and (1, cols)."""
    a_q, scale_a = quantize(operand(tensors, gemm.a))
    # b's columns are the rows of b^T, quantized row-major: b_q is then b^T's transpose
    b_t_q, scale_b = quantize(operand(tensors, gemm.b).t())
    return a_q, b_t_q.t(), scale_a, scale_b.t().contiguous()


def scaled_mm(a_q, b_q, scale_a, scale_b):
    # cuBLAS's rowwise-scaled float8 GEMM writes bfloat16 only
    return torch._scaled_mm(a_q, b_q, scale_a=scale_a, scale_b=scale_b,
                            out_dtype=torch.bfloat16)


def fp8_gemm_bound(gemms, tensors, matmul=None):
    """A call that runs every GEMM of `gemms` once on float8 operands quantized here, before
    any timing: `matmul(a_q, b_q, scale_a, scale_b)`, by default scaled_mm."""
    matmul = scaled_mm if matmul is None else matmul
    operands = [fp8_operands(g, tensors) for g in gemms]

    def run():
        for ops in operands:
            matmul(*ops)
    return run


def fp8_bound_fits(m: int, d_model: int, d_ff: int) -> bool:
    """Whether cuBLAS's float8 GEMM takes every GEMM of the block: it needs every size in
    multiples of 16 (and every size of the block is some GEMM's shared dimension)."""
    return all(n % 16 == 0 for n in (m, d_model, d_ff))


# ---- the implementations

class EagerMLP(SwiGLUMLP):
    """HuggingFace LlamaMLP's forward on SwiGLUMLP's parameters."""

    def forward(self, x):
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


def liger_mlp(d_model, d_ff, device="cuda", dtype=torch.bfloat16):
    """Liger-Kernel's LigerSwiGLUMLP, or None where Liger-Kernel is not installed."""
    try:
        from liger_kernel.transformers.swiglu import LigerSwiGLUMLP
    except ImportError:
        return None
    config = types.SimpleNamespace(hidden_size=d_model, intermediate_size=d_ff,
                                   hidden_act="silu")
    return LigerSwiGLUMLP(config).to(device, dtype)


def torchao_float8(module, recipe):
    """(torch.compile of torchao's float8 training conversion of a copy of module, None), or
    (None, why not) where torchao does not import or refuses the conversion. Compiled, as
    torchao is meant to run: its eager casts are separate kernels."""
    try:
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training
    except ImportError as e:
        return None, f"torchao does not import ({e})"
    try:
        converted = convert_to_float8_training(
            copy.deepcopy(module), config=Float8LinearConfig.from_recipe_name(recipe))
    except Exception as e:  # whatever torchao raises: a version or a card it does not take
        return None, f"torchao refused the {recipe} conversion ({type(e).__name__}: {e})"
    return torch.compile(converted), None


def implementations(d_model, d_ff, dtype=torch.bfloat16, device="cuda"):
    """({name: module}, notes): every block the benchmark compares, all holding eager's
    weights, in the order of the output, and a line for each one left out and why."""
    eager = EagerMLP(d_model, d_ff, device=device, dtype=dtype)
    liger = liger_mlp(d_model, d_ff, device, dtype)
    ours = SwiGLUMLP(d_model, d_ff, device=device, dtype=dtype)
    ours_fp8 = SwiGLUMLP(d_model, d_ff, device=device, dtype=dtype, fp8=True)
    state = eager.state_dict()
    for module in (liger, ours, ours_fp8):
        if module is not None:
            module.load_state_dict(state)
    notes = []
    # dynamic shapes: one compilation serves every token count of the shape
    found = {EAGER: eager, COMPILE: torch.compile(eager, dynamic=True)}
    if liger is not None:
        found[LIGER] = liger
    else:
        notes.append("liger: Liger-Kernel is not installed")
    found[OURS] = ours
    found[OURS_FP8] = ours_fp8
    for recipe in TORCHAO_RECIPES:
        module, why_not = torchao_float8(eager, recipe)
        if module is None:
            notes.append(f"torchao {recipe}: {why_not}")
        else:
            found[f"torchao {recipe}"] = module
    return found, notes


def block_steps(modules, x, d_out):
    """{name: one forward+backward of that module on x: the gradients of x and of its
    parameters for d_out}."""
    return {name: (lambda module=module: torch.autograd.grad(
                module(x), (x, *module.parameters()), d_out))
            for name, module in modules.items()}


# ---- one case, the rows, the run

def bench_case(modules, m, d_model, d_ff, dtype, rounds=bench.ROUNDS, with_memory=True,
               device="cuda"):
    """(rows, notes) of one case: the bounds, then every module of `modules` that runs, in
    interleaved rounds (at least HOST_BOUND_ROUNDS at the host-bound sizes, as in bench.py),
    and each module's memory (bench.memory_bytes) unless with_memory is False."""
    x = torch.randn(m, d_model, device=device, dtype=dtype, requires_grad=True)
    d_out = torch.randn(m, d_model, device=device, dtype=dtype)
    steps = block_steps(modules, x, d_out)
    notes = []
    for name in [n for n in steps if n.startswith("torchao")]:
        # a first step, outside the timing: torchao compiles here, and what it cannot run on
        # this card or version would otherwise end the whole sweep
        try:
            steps[name]()
        except Exception as e:
            notes.append(f"{name}: its step failed, no row ({type(e).__name__}: {e})")
            del steps[name]
    gemms = block_gemms(m, d_model, d_ff)
    tensors = block_tensors(m, d_model, d_ff, dtype, device)
    bounds = {bound_name(dtype): gemm_bound(gemms, tensors)}
    if fp8_bound_fits(m, d_model, d_ff):
        bounds[FP8_BOUND] = fp8_gemm_bound(gemms, tensors, scaled_mm)
    else:
        notes.append(f"{FP8_BOUND}: no row, cuBLAS's float8 GEMM needs sizes in multiples "
                     f"of 16")
    if m <= bench.HOST_BOUND_TOKENS:
        rounds = max(rounds, bench.HOST_BOUND_ROUNDS)
    times = bench.interleaved_medians(bench.median_ms, {**bounds, **steps}, rounds)
    del bounds, tensors  # the bounds' operands, before the peaks are measured
    memory = {}
    if with_memory:
        memory = {name: bench.memory_bytes(lambda x, *weights, module=modules[name]: module(x),
                                           (x, *modules[name].parameters()), d_out)
                  for name in steps}
    return case_rows(m, d_model, d_ff, dtype, times, memory), notes


def case_rows(m, d_model, d_ff, dtype, times, memory=None):
    """One row per entry of `times` ({name: forward+backward ms}, the 16-bit bound and eager
    among them): speed-ups over eager, Liger and torchao tensorwise (NaN where that one has no
    time), gemm_bound_ratio = the 16-bit GEMMs' time / this row's (1 = at the bound), and
    MB saved for the backward and peak MB above the inputs from `memory` ({name: (saved
    bytes, peak bytes)}, NaN where absent)."""
    memory = memory or {}
    flops = sum(g.flops for g in block_gemms(m, d_model, d_ff))
    bound = times[bound_name(dtype)]
    rows = []
    for name, ms in times.items():
        saved, peak = memory.get(name, (math.nan, math.nan))
        rows.append(dict(impl=name, m=m, d_model=d_model, d_ff=d_ff,
                         dtype=bench.dtype_name(dtype), fwd_bwd_ms=ms,
                         tflops=flops / ms * 1e-9, vs_eager=times[EAGER] / ms,
                         vs_liger=times.get(LIGER, math.nan) / ms,
                         vs_torchao_tensorwise=times.get(TORCHAO_TENSORWISE, math.nan) / ms,
                         gemm_bound_ratio=bound / ms, saved_mb=saved / 2**20,
                         peak_mb=peak / 2**20))
    return rows


def print_rows(rows):
    first = rows[0]
    print(f"\n{first['dtype']} block forward+backward, M={first['m']} "
          f"d_model={first['d_model']} d_ff={first['d_ff']}")
    print(f"{'implementation':22s} {'ms':>8s} {'TFLOP/s':>8s} {'x eager':>8s} {'x liger':>8s} "
          f"{'x ao tw':>8s} {'bound/t':>8s} {'saved MB':>9s} {'peak MB':>9s}")
    for r in rows:
        print(f"{r['impl']:22s} {r['fwd_bwd_ms']:8.3f} {r['tflops']:8.0f} {r['vs_eager']:8.3f} "
              f"{r['vs_liger']:8.3f} {r['vs_torchao_tensorwise']:8.3f} "
              f"{r['gemm_bound_ratio']:8.3f} {r['saved_mb']:9.0f} {r['peak_mb']:9.0f}")


def by_shape(cases):
    """[((d_model, d_ff), [m, ...]), ...] of ((d_model, d_ff), m) cases, shapes in the order
    they first come, each shape's token counts in theirs."""
    shapes = {}
    for shape, m in cases:
        shapes.setdefault(shape, []).append(m)
    return list(shapes.items())


def run(cases, dtypes, out_dir=None, rounds=bench.ROUNDS, tag=None, skipped=()):
    """Bench the block at every ((d_model, d_ff), m) case in every dtype; with out_dir, write
    the CSV to out_dir/<card>/block.csv (block_TAG.csv) after every case, so that a cut-short
    run keeps what it measured. `skipped` are the token counts left out (decode sizes), for
    the log. Returns the rows."""
    card = torch.cuda.get_device_name()
    print(f"# {card}: the block's forward+backward, torch {torch.__version__}, "
          f"triton {triton.__version__}")
    if skipped:
        print(f"# M = {', '.join(map(str, skipped))} skipped: the block is timed from "
              f"M = {MIN_TOKENS} (decode steps: without --block)")
    csv_path = None
    if out_dir is not None:
        csv_path = (pathlib.Path(out_dir) / bench.card_folder(card)
                    / (f"block_{tag}.csv" if tag else "block.csv"))
        print(f"# results: {csv_path}")
    rows = []
    start = time.perf_counter()
    for dtype in dtypes:
        for (d_model, d_ff), tokens in by_shape(cases):
            # a fresh compilation cache for each shape's new modules: the compiled blocks all
            # run EagerMLP.forward, and past torch._dynamo's recompile limit a cache that
            # kept every earlier shape's entries would silently fall back to eager
            torch._dynamo.reset()
            modules, notes = implementations(d_model, d_ff, dtype)
            for note in notes:
                print(f"# {note}")
            for m in tokens:
                case_start = time.perf_counter()
                case, notes = bench_case(modules, m, d_model, d_ff, dtype, rounds)
                for note in notes:
                    print(f"# {m}x{d_model}x{d_ff} {note}")
                rows += case
                print_rows(case)
                if csv_path is not None:
                    bench.write_csv(rows, csv_path)
                now = time.perf_counter()
                print(f"# {m}x{d_model}x{d_ff} {bench.dtype_name(dtype)}: "
                      f"{now - case_start:.0f} s; {now - start:.0f} s in all")
            del modules
    if csv_path is not None:
        print(f"# wrote {csv_path}")
    return rows


def check_args(args, parser):
    """--block's part of bench.parse_args: 16-bit dtypes only, nn.Linear weights (no other
    --layouts), no --impls, and the cases from MIN_TOKENS tokens up (args.block_skipped: the
    token counts left out); a parser error where nothing is left to run."""
    wrong = [bench.dtype_name(d) for d in args.dtypes if d not in DTYPES]
    if wrong:
        parser.error(f"--block runs 16-bit dtypes only (bfloat16, float16), got "
                     f"{', '.join(wrong)}: its float8 rows and bounds have no float32 "
                     f"counterpart")
    if args.layouts not in (list(bench.LAYOUTS), ["linear"]):
        parser.error("--block runs nn.Linear weights (the linear layout) only; leave out "
                     "--layouts")
    if args.impl_names != list(bench.IMPL_NAMES.values()):
        parser.error("--block runs every block implementation; leave out --impls")
    args.block_skipped = sorted({m for _, m in args.cases if m < MIN_TOKENS})
    args.cases = [(shape, m) for shape, m in args.cases if m >= MIN_TOKENS]
    if not args.cases:
        parser.error(f"--block times forward+backward from M = {MIN_TOKENS} tokens up, and "
                     f"--tokens {args.tokens} has none (decode steps run without --block)")
