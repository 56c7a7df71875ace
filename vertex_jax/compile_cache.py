"""JAX's persistent compilation cache, on by default for every entry point.

A compiled step is written to ``$VERTEX_COMPILE_CACHE`` (default
``$XDG_CACHE_HOME/vertex_jax/jax``, i.e. ``~/.cache/vertex_jax/jax``) together with
XLA:GPU's per-fusion autotuning results (a ``xla_gpu_per_fusion_autotune_cache_dir``
subfolder that JAX manages), so a second process -- a restarted or preempted SLURM
job, ``predict`` after ``main``, the next ``bench`` point -- loads the executable
instead of compiling and autotuning again. ``VERTEX_COMPILE_CACHE=off`` (or ``0``,
``false``, ``none``) turns it off. On a cluster, point it at a shared filesystem so
that every node reuses one cache (only process 0 of a run writes; a process that reads an
entry still being written gets a warning and compiles instead).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["ENV", "cache_dir", "enable_compilation_cache"]

ENV = "VERTEX_COMPILE_CACHE"
_OFF = ("off", "0", "false", "none", "no")


def cache_dir() -> Path | None:
    """The cache directory this process uses, or None when the cache is switched off."""
    value = os.environ.get(ENV, "").strip()
    if value.lower() in _OFF:
        return None
    if value:
        return Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vertex_jax" / "jax"


def enable_compilation_cache(directory: str | Path | None = None, min_compile_s: float = 1.0
                             ) -> Path | None:
    """Point JAX's persistent compilation cache (and XLA's autotuning cache) at
    ``directory`` (default :func:`cache_dir`); the directory used, None when off.

    Every executable that took over ``min_compile_s`` to compile is kept (the training
    and evaluation steps; not the many small ones). Call it before the first compilation.
    """
    import jax

    path = Path(directory).expanduser() if directory else cache_dir()
    if path is None:
        return None
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_s)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    jax.config.update("jax_persistent_cache_enable_xla_caches",
                      "xla_gpu_per_fusion_autotune_cache_dir")
    return path
