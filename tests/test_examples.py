"""examples/train_hf.py: it runs, reports both variants, and patching the model with
fused_swiglu leaves the training losses as they were; its data loader is deterministic."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import DEVICE

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "train_hf.py"

# Float32 losses of about 5.5, after 4 AdamW steps (1 warm-up + 3) at lr 1e-2, whose large
# steps make the later losses depend on the MLP's gradients as well as its forward. Measured
# on this model by perturbing HuggingFace's own LlamaMLP (largest change over the 4 losses): a
# relative error of 1e-5 in the MLP's output moves the losses by 1e-6, of 1e-3 by 2e-4, and a
# real bug (relu for silu, the MLP's output zeroed, no gradient through up_proj or to its
# input) by 2e-2 to 4e-2. A float32 kernel's error (about 1e-7 relative) stays within the
# losses' own rounding (one ulp at 5.5 is 4.8e-7; under the interpreter they match to the
# bit). 2e-5 is 40 ulps: far above rounding, 1000x below the smallest bug measured.
LOSS_ATOL = 2e-5


def load_example():
    spec = importlib.util.spec_from_file_location("train_hf", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_hf_fused_matches_eager(tmp_path):
    out = tmp_path / "results.json"
    command = [sys.executable, str(SCRIPT), "--size", "tiny", "--steps", "3", "--lr", "1e-2",
               "--variants", "eager,fused", "--device", DEVICE, "--dtype", "float32",
               "--json", str(out)]
    # the same environment, so TRITON_INTERPRET=1 (conftest, no GPU) reaches the script
    run = subprocess.run(command, env=dict(os.environ), capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    for variant in ("eager", "fused"):
        assert any(line.startswith(f"{variant}: ") and " tokens/s" in line for line in lines), \
            run.stdout

    report = json.loads(out.read_text())
    eager, fused = report["results"]["eager"], report["results"]["fused"]
    assert eager["patched_modules"] == []
    assert fused["patched_modules"] == ["model.layers.0.mlp", "model.layers.1.mlp"]
    assert len(eager["losses"]) == len(fused["losses"]) == 4
    assert all(r["tokens_per_s"] > 0 for r in (eager, fused))
    # the model trains: 4 steps at lr 1e-2 bring the loss well under ln(256) = 5.55
    assert eager["losses"][-1] < eager["losses"][0] - 0.05, eager["losses"]
    assert fused["losses"] == pytest.approx(eager["losses"], abs=LOSS_ATOL, rel=0)


def test_batches_are_deterministic_byte_windows():
    example = load_example()
    data, source = example.corpus_bytes()
    again, _ = example.corpus_bytes()
    assert source == "pydoc_data.topics"
    assert data.dtype == torch.uint8 and data.dim() == 1 and len(data) > 100_000
    assert torch.equal(data, again)

    batches = example.make_batches(data, steps=5, batch=3, seq=17, seed=1)
    assert batches.shape == (5, 3, 17) and batches.dtype == torch.int64
    assert 0 <= batches.min() and batches.max() < example.VOCAB
    assert torch.equal(batches, example.make_batches(data, steps=5, batch=3, seq=17, seed=1))
    assert not torch.equal(batches, example.make_batches(data, steps=5, batch=3, seq=17,
                                                         seed=2))
    # each row is seq consecutive bytes of the text (here: mostly printable English)
    text = bytes(data.tolist())
    for row in batches.reshape(-1, 17):
        assert bytes(row.tolist()) in text
    assert sum(32 <= c < 127 or c == 10 for c in text[:10_000]) > 9_500

    with pytest.raises(ValueError, match="longer than seq"):
        example.make_batches(data[:8], steps=1, batch=1, seq=8, seed=0)


# ---- examples/distributed.py

DISTRIBUTED = SCRIPT.parent / "distributed.py"
# the same small run as above; CPU processes over gloo, also on a machine with GPUs (one GPU
# cannot host two ranks)
DISTRIBUTED_ARGS = ["--size", "tiny", "--steps", "3", "--lr", "1e-2", "--device", "cpu",
                    "--dtype", "float32"]


def run_distributed(tmp_path, plan, processes, variants="fused"):
    out = tmp_path / f"{plan}.json"
    command = [sys.executable, str(DISTRIBUTED), "--plan", plan, "--variants", variants,
               *DISTRIBUTED_ARGS, "--json", str(out)]
    if processes > 1:
        command[1:1] = ["-m", "torch.distributed.run", "--standalone",
                        f"--nproc-per-node={processes}"]
    run = subprocess.run(command, env=dict(os.environ), capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    return json.loads(out.read_text()), run.stdout


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    return run_distributed(tmp_path_factory.mktemp("none"), "none", 1, "eager,fused")[0]


@pytest.mark.parametrize("plan, processes", [("tp", 2), ("fsdp", 2), ("2d", 4)])
def test_distributed_plans_train_as_one_process(tmp_path, one_process, plan, processes):
    """Tensor parallelism, FSDP2 and both, with patch_model: the losses of 4 steps at lr 1e-2
    (which follow the gradients) are the one-process run's, within float32 reordering."""
    report, stdout = run_distributed(tmp_path, plan, processes)
    assert report["config"]["processes"] == processes and report["config"]["plan"] == plan
    fused = report["results"]["fused"]
    assert fused["patched_modules"] == ["model.layers.0.mlp", "model.layers.1.mlp"]
    assert fused["tokens_per_s_per_gpu"] > 0
    # tp shards the 7 projections of each of the 2 layers; FSDP2 every parameter
    assert fused["dtensor_parameters"] == (14 if plan == "tp" else fused["parameters"])
    assert f"{processes} x CPU, plan {plan}" in stdout
    single = one_process["results"]
    assert single["fused"]["losses"] == pytest.approx(single["eager"]["losses"],
                                                      abs=LOSS_ATOL, rel=0)
    assert len(fused["losses"]) == 4
    assert fused["losses"] == pytest.approx(single["fused"]["losses"], abs=LOSS_ATOL, rel=0)


def test_distributed_refuses_what_it_cannot_run():
    for args, message in ((["--plan", "tp"], "runs under torchrun"),
                          (["--plan", "fsdp", "--tp", "2"], "--tp belongs to --plan 2d")):
        run = subprocess.run([sys.executable, str(DISTRIBUTED), *args, *DISTRIBUTED_ARGS],
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 2 and message in run.stderr, run.stderr
