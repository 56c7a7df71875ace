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

XLA's autotuning results are small files, each named by a hash of the GPU (compute
capability, cores, clocks, memory bandwidth, L2, cuDNN version), XLA's autotuning version
and the instruction's canonical text: a result for another GPU is never read. Results
measured on a lent GPU ship per jaxlib release in
``vertex_jax/autotune_results/jaxlib-<version>/`` and are copied into the cache when it is
enabled (:func:`seed_autotune_results`), so a fresh machine with that GPU autotunes only
the instructions they do not cover. None ship yet: the GPU check brings them back
(``benchmarks/gpu_check.sh``).
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

from vertex_jax.files import write_bytes

__all__ = ["ENV", "AUTOTUNE_DIR", "cache_dir", "shipped_autotune_results", "autotune_result_files",
           "seed_autotune_results", "archive_autotune_results", "enable_compilation_cache"]

ENV = "VERTEX_COMPILE_CACHE"
_OFF = ("off", "0", "false", "none", "no")
# The folder inside the cache where JAX points XLA:GPU's per-fusion autotuning results.
AUTOTUNE_DIR = "xla_gpu_per_fusion_autotune_cache_dir"
SHIPPED = Path(__file__).resolve().parent / "autotune_results"


def cache_dir() -> Path | None:
    """The cache directory this process uses, or None when the cache is switched off."""
    value = os.environ.get(ENV, "").strip()
    if value.lower() in _OFF:
        return None
    if value:
        return Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vertex_jax" / "jax"


def _release() -> str:
    """The installed jaxlib's folder name among the shipped results."""
    import jaxlib

    return f"jaxlib-{jaxlib.__version__}"


def shipped_autotune_results(shipped: str | Path | None = None) -> Path:
    """The folder of autotuning results shipped (in ``shipped``, default the package's
    ``autotune_results``) for the installed jaxlib; it may not exist."""
    return Path(shipped or SHIPPED) / _release()


def autotune_result_files(folder: str | Path) -> list[Path]:
    """XLA's autotuning result files in ``folder`` (``*.textproto``; not the ones XLA is
    still writing in its ``tmp`` subfolder)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(f for f in folder.rglob("*.textproto")
                  if f.is_file() and "tmp" not in f.relative_to(folder).parts[:-1])


def seed_autotune_results(source: str | Path, cache: str | Path) -> int:
    """Copy the autotuning result files of ``source`` into ``cache``'s autotuning folder,
    keeping every result already there; the number of files copied. Each file appears
    whole (:mod:`vertex_jax.files`), so XLA in another process never reads half of one."""
    source, target = Path(source), Path(cache) / AUTOTUNE_DIR
    copied = 0
    for file in autotune_result_files(source):
        dest = target / file.relative_to(source)
        if dest.exists():
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(dest, file.read_bytes())
        copied += 1
    return copied


def archive_autotune_results(cache: str | Path, archive: str | Path) -> int:
    """Archive the autotuning results of ``cache`` as ``archive`` (.tar.gz), laid out as
    :func:`shipped_autotune_results` finds them once unpacked into ``autotune_results``
    (``jaxlib-<version>/``); how many (no archive when there are none)."""
    folder, archive = Path(cache) / AUTOTUNE_DIR, Path(archive)
    files = autotune_result_files(folder)
    if files:
        release = _release()
        archive.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive, "w:gz") as tar:
            for f in files:
                tar.add(f, arcname=f"{release}/{f.relative_to(folder).as_posix()}")
    return len(files)


def enable_compilation_cache(directory: str | Path | None = None, min_compile_s: float = 1.0,
                             shipped_autotuning: bool = True) -> Path | None:
    """Point JAX's persistent compilation cache (and XLA's autotuning cache) at
    ``directory`` (default :func:`cache_dir`); the directory used, None when off.

    Every executable that took over ``min_compile_s`` to compile is kept (the training
    and evaluation steps; not the many small ones). With ``shipped_autotuning``, the
    autotuning results shipped for this jaxlib are copied in first. Call it before the
    first compilation.
    """
    import jax

    path = Path(directory).expanduser() if directory else cache_dir()
    if path is None:
        return None
    path.mkdir(parents=True, exist_ok=True)
    if shipped_autotuning:
        seed_autotune_results(shipped_autotune_results(), path)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_s)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    jax.config.update("jax_persistent_cache_enable_xla_caches", AUTOTUNE_DIR)
    return path
