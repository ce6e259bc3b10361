"""The autotuner's search space: which configurations a problem may use. Plain Python, so it runs
the same on the CPU as on a GPU."""

import pytest
import torch

from fused_swiglu.tuning import (SHARED_MEMORY_LIMIT, _prune, dual_gemm_configs,
                                 stacked_gemm_configs, stacked_shared_memory, token_bucket,
                                 tuned_dual_gemm, tuned_stacked_gemm, untimed_config)


def kept(dtype, m_bucket, fast_accum):
    out = torch.empty(1, 1, dtype=dtype)
    return _prune(dual_gemm_configs(), {"out_a": out, "M_BUCKET": m_bucket},
                  FAST_ACCUM=fast_accum)


@pytest.mark.parametrize("m, bucket", [(1, 1), (2, 2), (3, 4), (512, 512), (513, 1024),
                                       (10**6, 16384)])
def test_token_bucket(m, bucket):
    assert token_bucket(m) == bucket


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("m_bucket", [8, 8192])
def test_float32_accumulators_by_default(dtype, m_bucket):
    configs = kept(dtype, m_bucket, fast_accum=False)
    assert configs and not any(c.kwargs["FP16_ACC"] for c in configs)


@pytest.mark.parametrize("m_bucket", [8, 8192])
def test_fast_accum_times_both_accumulators(m_bucket):
    # float16 inputs only (swiglu rejects fast_accum for others): both kinds stay in the
    # search, so the autotuner keeps float32 accumulators where they are faster
    kinds = {c.kwargs["FP16_ACC"] for c in kept(torch.float16, m_bucket, fast_accum=True)}
    assert kinds == {False, True}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("m_bucket", [1, 32, 64, 128, 16384])
@pytest.mark.parametrize("fast_accum", [False, True])
def test_kept_configurations_fit(dtype, m_bucket, fast_accum):
    configs = kept(dtype, m_bucket, fast_accum)
    assert configs
    size = torch.empty((), dtype=dtype).element_size()
    for c in configs:
        bm, bn, bk = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"]
        assert c.num_stages * (bm * bk + 2 * bk * bn) * size <= SHARED_MEMORY_LIMIT
        if dtype == torch.float32:
            # full-precision products run on FMA units: small K tiles only
            assert bk == 32
        else:
            # decode buckets take decode tiles, training buckets training tiles
            assert (bm <= 32) == (m_bucket <= 64)


def test_stacked_kernel_configurations():
    configs = stacked_gemm_configs()
    assert configs
    for c in configs:
        assert stacked_shared_memory(c) <= SHARED_MEMORY_LIMIT


@pytest.mark.parametrize("dtype, m_bucket, tile", [
    (torch.bfloat16, 1, (32, 32, 128)), (torch.bfloat16, 32, (32, 32, 128)),
    (torch.bfloat16, 4096, (128, 128, 64)), (torch.float32, 4096, (64, 64, 32))])
def test_untimed_configuration(dtype, m_bucket, tile):
    # inside a CUDA-graph capture nothing is timed: the default must be one the pruning keeps
    # for these arguments, with float32 accumulators
    out = torch.empty(1, 1, dtype=dtype)
    config = untimed_config(False, {"out_a": out, "M_BUCKET": m_bucket, "FAST_ACCUM": False})
    assert tuple(config.kwargs[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K")) == tile
    assert not config.kwargs["FP16_ACC"]
    assert untimed_config(True, {}) is not None


def test_one_autotuner_per_gpu_model():
    # Triton's autotuner caches its timings by argument values alone: two GPU models in one
    # process must not share them
    assert tuned_dual_gemm("GPU A") is tuned_dual_gemm("GPU A")
    assert tuned_dual_gemm("GPU A") is not tuned_dual_gemm("GPU B")
    assert tuned_stacked_gemm("GPU A") is not tuned_stacked_gemm("GPU B")
