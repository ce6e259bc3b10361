"""The ``fp8=`` option of the public functions and module: which recipe, and what it takes."""

import torch

from ..checks import without_data

# fp8=True takes the first. "rowwise": one scale per token of each activation and gradient and
# one per channel of each weight, along every GEMM's K (fused_swiglu.fp8.training).
RECIPES = ("rowwise",)
INPUT_DTYPES = (torch.bfloat16, torch.float16)
# float8 tensor cores: Ada (8.9) and Hopper (9.0) or newer
MIN_CAPABILITY = (8, 9)


def fp8_recipe(caller: str, fp8, fast_accum) -> str | None:
    """The recipe's name for fp8=True or a recipe name, None for fp8=False."""
    if fp8 is False:
        return None
    if fp8 is True:
        recipe = RECIPES[0]
    elif isinstance(fp8, str):
        if fp8 not in RECIPES:
            raise ValueError(f"{caller}: unknown fp8 recipe {fp8!r}; use True or one of "
                             f"{', '.join(map(repr, RECIPES))}")
        recipe = fp8
    else:
        raise TypeError(f"{caller}: fp8 must be True, False or a recipe name "
                        f"({', '.join(map(repr, RECIPES))}), got {fp8!r}")
    if fast_accum:
        raise TypeError(f"{caller}: fast_accum=True is float16 accumulation of 16-bit GEMMs; "
                        f"with fp8={fp8!r} every GEMM runs in float8 with float32 sums: pass "
                        f"fast_accum=False")
    return recipe


def check_fp8_inputs(caller: str, x, *weights) -> None:
    """The inputs fp8 takes: bfloat16 or float16 (the output and gradients come back in it),
    on a device with float8 tensor cores or on the CPU, not under torch.func."""
    if x.dtype not in INPUT_DTYPES:
        raise TypeError(f"{caller}: fp8 takes bfloat16 or float16 inputs, got {x.dtype}")
    if x.is_cuda and torch.cuda.get_device_capability(x.device) < MIN_CAPABILITY:
        raise NotImplementedError(
            f"{caller}: fp8 needs float8 tensor cores (compute capability 8.9 or newer); "
            f"{torch.cuda.get_device_name(x.device)} has "
            f"{'.'.join(map(str, torch.cuda.get_device_capability(x.device)))}")
    if x.device.type not in ("cuda", "cpu"):
        raise NotImplementedError(f"{caller}: fp8 runs on CUDA or CPU tensors, got {x.device}")
    if not torch.compiler.is_compiling() and without_data(x, *weights):
        raise NotImplementedError(f"{caller}: fp8 with fake tensors outside torch.compile, or "
                                  f"under torch.func transforms, is not supported")
