"""Named sets of XLA:GPU flags (``config.xla_preset``), measured in ``benchmarks/NOTES.md``.

XLA reads ``XLA_FLAGS`` once, when the backend starts, so :func:`apply_preset` must run
before the first device is touched; flags already in ``XLA_FLAGS`` win over the preset's
(a user's own setting is never overridden). The flags only concern GPUs: XLA:CPU accepts
and ignores them.
"""

from __future__ import annotations

import os

__all__ = ["PRESETS", "preset_flags", "apply_preset"]

PRESETS: dict[str, tuple[str, ...]] = {
    # XLA's own defaults.
    "default": (),
    # Dots (squeeze-excitation, fusion head) on cuBLAS rather than autotuned Triton GEMM
    # fusions: autotuning then times a few cuBLAS algorithms instead of compiling dozens of
    # Triton configurations per dot.
    "fast-compile": ("--xla_gpu_enable_triton_gemm=false",),
    # fast-compile without any autotuning: cuDNN's heuristics pick each convolution's
    # algorithm (the shortest cold compile; what it costs a step is measured).
    "no-autotune": ("--xla_gpu_enable_triton_gemm=false", "--xla_gpu_autotune_level=0"),
}


def preset_flags(name: str) -> tuple[str, ...]:
    """The flags of preset ``name``."""
    if name not in PRESETS:
        raise ValueError(f"xla_preset must be one of {sorted(PRESETS)}, got {name!r}")
    return PRESETS[name]


def apply_preset(name: str, environ: dict[str, str] | None = None) -> str:
    """Add preset ``name``'s flags to ``XLA_FLAGS`` (of ``environ``, default this process's
    environment) unless the flag is already set there; the resulting ``XLA_FLAGS``."""
    env = os.environ if environ is None else environ
    current = env.get("XLA_FLAGS", "").split()
    given = {flag.split("=", 1)[0] for flag in current}
    added = [flag for flag in preset_flags(name) if flag.split("=", 1)[0] not in given]
    env["XLA_FLAGS"] = " ".join(current + added)
    return env["XLA_FLAGS"]
