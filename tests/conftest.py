"""Pick the device: CUDA when present, else the CPU with the Triton interpreter, which must be
switched on before triton (and so fused_swiglu) is imported."""

import os
import zlib

import pytest
import torch

ON_GPU = torch.cuda.is_available()
if not ON_GPU:
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE = "cuda" if ON_GPU else "cpu"


@pytest.fixture(autouse=True)
def kernel_outputs(monkeypatch):
    """Kernel outputs start as NaN, so an element a kernel fails to write shows up; the
    returned list holds the shape of every output allocated."""
    from fused_swiglu import launch

    shapes = []

    def nan_filled(shape, like):
        shapes.append(tuple(shape))
        return torch.full(shape, float("nan"), device=like.device, dtype=like.dtype)

    monkeypatch.setattr(launch, "new_output", nan_filled)
    return shapes


@pytest.fixture(params=["fused kernel", "cuBLAS and pass"])
def forward_path(request, monkeypatch):
    """The forward's path at every token count: the fused kernels (where the weights' layout
    allows them: 16-bit weights the stacked kernel cannot take still run cuBLAS above a
    decode step), or two cuBLAS GEMMs and the elementwise pass (16-bit dtypes only, as the
    size rule has it; float32 stays fused)."""
    from fused_swiglu import launch
    if request.param == "fused kernel":
        monkeypatch.setattr(launch, "CUBLAS_MAX_TOKENS", 0)
    else:
        monkeypatch.setattr(launch, "DECODE_MAX_TOKENS", 0)
        monkeypatch.setattr(launch, "CUBLAS_MAX_TOKENS", 2 ** 62)
    return request.param


@pytest.fixture(autouse=True)
def fresh_seed(request):
    # crc32, not hash(): str hashes change with every process (PYTHONHASHSEED), which would
    # give every run, and every pytest-xdist worker, other samples
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))
