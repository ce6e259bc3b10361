"""Shared by the configuration sweeps: whether a configuration runs and gives the right answer
before it is timed."""

import torch


def runs_correctly(name: str, run, out: torch.Tensor, ref: torch.Tensor) -> bool:
    """Run once into `out`, poisoned with NaN first, and compare with `ref` (float32); print
    why and answer False when this Triton cannot build the configuration or it is wrong."""
    try:
        out.fill_(float("nan"))
        run()
        err = ((out.float() - ref).norm() / ref.norm()).item()
        assert err < 1e-2, f"relative error {err}"
    except Exception as e:  # a configuration this Triton cannot build, or a wrong one
        print(f"  {name}: {type(e).__name__}: {str(e)[:200]}")
        return False
    return True
