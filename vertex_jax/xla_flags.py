"""Named sets of XLA:GPU flags (``config.xla_preset``), measured in ``docs/performance-notes.md``.

XLA reads ``XLA_FLAGS`` once, when the backend starts, so :func:`apply_preset` must run
before the first device is touched; flags already in ``XLA_FLAGS`` win over the preset's
(a user's own setting is never overridden). Presets join with ``+``
(``fast-compile-graphs+fast-compile-no-excess-precision``: every flag of each, a later
preset's value winning). The flags concern GPUs (XLA:CPU accepts and ignores them), except
``xla_allow_excess_precision``, which XLA:CPU honours too.
"""

from __future__ import annotations

import os

from vertex_jax.errors import ConfigError

__all__ = ["PRESETS", "DEFAULT_PRESET", "preset_flags", "apply_preset"]

PRESETS: dict[str, tuple[str, ...]] = {
    # XLA's own defaults.
    "default": (),
    # Dots (squeeze-excitation, fusion head) on cuBLAS rather than autotuned Triton GEMM
    # fusions: autotuning then times a few cuBLAS algorithms instead of compiling dozens of
    # Triton configurations per dot.
    "fast-compile": ("--xla_gpu_enable_triton_gemm=false",),
    # fast-compile with autotuning at level 1: every candidate still timed, without the
    # buffer initialisation and the correctness check of each (levels 2-4); a cheaper cold
    # compile, the same choices unless a candidate is wrong (measured by gpu_check).
    "fast-compile-autotune1": ("--xla_gpu_enable_triton_gemm=false", "--xla_gpu_autotune_level=1"),
    # fast-compile with every fusion on XLA's own emitters: by default XLA:GPU also compiles
    # each fusion with its block-level (Triton) emitter and times both -- 599 of the 757
    # instructions it autotunes in B4's training step (described H200, §19).
    "fast-compile-no-fusion-autotune": ("--xla_gpu_enable_triton_gemm=false",
                                        "--xla_gpu_experimental_enable_fusion_autotuner=false"),
    # fast-compile-autotune1 without fusion autotuning, LLVM's module split into parts
    # compiled to PTX in parallel (XLA already compiles each kernel's module on a thread
    # pool, so this splits little more, §19), and each cuBLAS product timed with the library's first 4
    # candidate algorithms only (XLA times all it returns by default; it has no such bound
    # for cuDNN's convolutions, so model.pointwise=dot moves B4's 1x1 convolutions under
    # this one, §16).
    "quick-compile": ("--xla_gpu_enable_triton_gemm=false", "--xla_gpu_autotune_level=1",
                      "--xla_gpu_experimental_enable_fusion_autotuner=false",
                      "--xla_gpu_enable_llvm_module_compilation_parallelism=true",
                      "--xla_gpu_autotune_max_solutions=4"),
    # fast-compile with CUDA graphs from two kernels up (XLA's default: five). On the H200 the
    # host launched ~3,700 kernels per step and ran about a step ahead of the device (§7);
    # between B4's convolutions, which cannot join a graph (cuDNN status 5003, §7), runs of
    # fusions are mostly shorter than five, so the default captures few of them.
    "fast-compile-graphs": ("--xla_gpu_enable_triton_gemm=false", "--xla_gpu_graph_min_graph_size=2"),
    # fast-compile, and bfloat16 roundings kept where the program makes them. By default XLA
    # may skip a float32 -> bfloat16 -> float32 round trip and use the float32 value, and so
    # it kept float32 copies of B4's swish outputs for the backward pass: the described H200's
    # memory plan falls from 30.0 to 25.8 GiB at batch 32 without it, and ~6% of the bytes
    # (docs/performance-notes.md, section 12). model.batchnorm_grad=compute needs it.
    "fast-compile-no-excess-precision": ("--xla_gpu_enable_triton_gemm=false",
                                         "--xla_allow_excess_precision=false"),
    # fast-compile without any autotuning: cuDNN's heuristics pick each convolution's
    # algorithm. The shortest cold compile, and a step some 25x slower: for measurements only.
    "no-autotune": ("--xla_gpu_enable_triton_gemm=false", "--xla_gpu_autotune_level=0"),
}
# What main, bench and predict apply (config.xla_preset): on the H200, a cold compile of
# 113 s and 336 images/s at batch 32; no-autotune compiled in 58 s but its step took over
# 2 s (docs/performance-notes.md, section 7).
DEFAULT_PRESET = "fast-compile"


def preset_flags(name: str) -> tuple[str, ...]:
    """The flags of preset ``name``: one of :data:`PRESETS`, or several joined with ``+``."""
    flags: dict[str, str] = {}
    for part in name.split("+"):
        if part not in PRESETS:
            raise ConfigError(f"xla_preset must be one of {sorted(PRESETS)} (or several joined "
                              f"with '+'), got {name!r}")
        flags.update((flag.split("=", 1)[0], flag) for flag in PRESETS[part])
    return tuple(flags.values())


def apply_preset(name: str, environ: dict[str, str] | None = None) -> str:
    """Add preset ``name``'s flags to ``XLA_FLAGS`` (of ``environ``, default this process's
    environment) unless the flag is already set there; the resulting ``XLA_FLAGS``."""
    env = os.environ if environ is None else environ
    current = env.get("XLA_FLAGS", "").split()
    given = {flag.split("=", 1)[0] for flag in current}
    added = [flag for flag in preset_flags(name) if flag.split("=", 1)[0] not in given]
    env["XLA_FLAGS"] = " ".join(current + added)
    return env["XLA_FLAGS"]
