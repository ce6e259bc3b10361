"""Adapters from other libraries' models to fused_swiglu's modules, one file per library. None of
them imports its library: they recognise modules by what they hold and compute."""
