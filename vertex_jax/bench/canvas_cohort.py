"""Random canvases as a cohort: the loop benchmark's data when none is given.

:func:`write_random_cohort` writes, in ``<data_dir>/random-<H>x<W>-<dtype>-<train>+<val>-seed<S>/``,

    manifest.csv          one row per canvas: its own patient, 30% positive labels for
                          every task in each split, age, sex and BMI drawn in plausible
                          ranges, the split
    random-canvases.txt   the one file every row's ``path`` names (a manifest must name
                          existing files); it is no image

and the cache of those rows where :func:`vertex_jax.data.prepare.prepare` looks for it
(``<cache_dir or data_dir/cache>/<fingerprint>/``), through the project's cache writer
(:func:`vertex_jax.data.cache.write_shard`, ArrayRecord shards with checksums,
``COMPLETE.json``). ``prepare`` then finds a finished cache for the manifest, verifies it
and training reads it through the real grain pipeline; nothing is generated, read or
preprocessed. If the cache is deleted or damaged, its rebuild stops on the placeholder
file (not an image): write the cohort again.

Each canvas is noise of the cache's dtype: a window, at a random offset, into one block of
random bytes drawn per shard, so every canvas differs while the random numbers drawn are
about one canvas per shard (drawing every byte costs ~2 ms per 1024×512 canvas). Noise
does not compress, so zstd stores it raw: the read side decompresses less than for a
radiograph (~330 KiB a 1024×512 canvas) and reads ~1.8× faster per thread.

``python -m vertex_jax.bench.canvas_cohort [--config=configs/xray.py] [--canvases 1024]
[--batches 20] [--repeats 3] [--workers N]`` times the writing (canvases/s) and the
training input pipeline alone, cache -> device batch (images/s, no step).
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

from vertex_jax.data.cache import (COMPLETE, Cache, build_cache, finish_cache, fingerprint, shard_pool,
                                   write_shard)
from vertex_jax.data.manifest import load_manifest
from vertex_jax.data.preprocess import Geometry, PreprocessConfig
from vertex_jax.files import write_text
from vertex_jax.tasks import TASKS
from vertex_jax.errors import ConfigError

SHARD_SIZE = 128  # canvases per shard, as build_cache's default
POOL_FROM = 2048  # canvases from which writing uses several processes (a pool takes ~1 s to start)
_SHIFT = 4096  # canvases are windows of one random block at offsets below this many bytes
PLACEHOLDER = "random-canvases.txt"


@dataclasses.dataclass(frozen=True)
class RandomCohort:
    """A written random cohort: its manifest, its cache and how many canvases this call wrote
    (0 when a finished one was found)."""

    manifest: Path
    cache: Cache
    written: int


def preprocess_config(data: Any) -> PreprocessConfig:
    """The canvas settings of ``config.data``, as ``prepare`` builds them (the cache's
    fingerprint covers them: any difference and ``prepare`` would not find the cache)."""
    return PreprocessConfig(canvas=tuple(data.canvas), border_crop=data.border_crop,
                            out_dtype=data.cache_dtype)


def noise_canvases(rng: np.random.Generator, n: int, shape: tuple[int, int], dtype: Any
                   ) -> Iterator[np.ndarray]:
    """``n`` noise canvases of ``shape`` and ``dtype``: windows at random offsets into one
    block of random bytes (views, valid until the next draw from the same block)."""
    itemsize = np.dtype(dtype).itemsize
    size = math.prod(shape) * itemsize
    block = rng.integers(0, 256, size + _SHIFT, dtype=np.uint8)
    for offset in rng.integers(0, _SHIFT // itemsize, n) * itemsize:
        yield block[offset:offset + size].view(dtype).reshape(shape)


def _labels(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` labels, 30% positive in random order, both classes present from 2 on (so that a
    validation AUROC is defined)."""
    positives = min(max(1, round(0.3 * n)), n - 1) if n >= 2 else 0
    return (rng.permutation(n) < positives).astype(int)


def random_manifest(train: int, val: int, *, domain: str, splits: tuple[str, str], seed: int
                    ) -> pd.DataFrame:
    """A manifest table of ``train`` + ``val`` rows (``splits``: their split names), every
    row naming :data:`PLACEHOLDER` as its file; in each split 30% of every task's labels
    are positive."""
    rng = np.random.default_rng(seed)
    n = train + val
    ids = [f"R{i:07d}" for i in range(n)]
    table = {"image_id": ids, "patient_id": ids, "path": PLACEHOLDER, "domain": domain}
    table.update({t: np.concatenate([_labels(rng, train), _labels(rng, val)]) for t in TASKS})
    table.update(age=rng.uniform(50, 90, n).round(1), sex=rng.choice(["F", "M"], n),
                 bmi=rng.uniform(17, 35, n).round(1), split=[splits[0]] * train + [splits[1]] * val)
    return pd.DataFrame(table)


def _write_noise_shard(root: str, shard: int, image_ids: list[str], config: PreprocessConfig,
                       seed: int) -> int:
    """One shard of noise canvases (seeded by ``seed`` and the shard number)."""
    shape = tuple(config.canvas)
    geometry = Geometry(original=shape, crop=(0, 0, *shape), resized=shape, offset=(0, 0),
                        canvas=shape).to_dict()
    canvases = noise_canvases(np.random.default_rng([seed, shard]), len(image_ids), shape,
                              config.out_dtype)
    write_shard(root, shard, ((i, c, geometry) for i, c in zip(image_ids, canvases)))
    return len(image_ids)


def write_random_cohort(config: Any, data_dir: str | os.PathLike, *, train: int, val: int,
                        seed: int = 0, workers: int | None = None) -> RandomCohort:
    """Write (or find) a cohort of ``train`` + ``val`` random canvases of ``config.data``'s
    canvas and dtype, and its cache (module docstring). ``workers``: processes writing
    shards (default: 1 below :data:`POOL_FROM` canvases, else every core)."""
    if train < 1 or val < 0:
        raise ConfigError(f"need train >= 1 and val >= 0 canvases, got {train} and {val}")
    data = config.data
    pconfig = preprocess_config(data)
    (h, w), dtype = pconfig.canvas, pconfig.out_dtype
    folder = Path(data_dir) / f"random-{h}x{w}-{dtype}-{train}+{val}-seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    placeholder, manifest = folder / PLACEHOLDER, folder / "manifest.csv"
    if not placeholder.exists():  # never rewritten: its mtime is part of the cache's fingerprint
        write_text(placeholder, "Stands in for the random canvases of this folder's cache; no image.\n")
    if not manifest.exists():
        table = random_manifest(train, val, domain=data.domain, seed=seed,
                                splits=(data.train_split, data.val_split))
        write_text(manifest, table.to_csv(index=False))
    frame = load_manifest(manifest)
    cache_dir = Path(data.cache_dir or Path(data_dir) / "cache")
    root = cache_dir / fingerprint(frame, pconfig)
    if (root / COMPLETE).exists():  # verified and opened as prepare() will
        return RandomCohort(manifest, build_cache(frame, cache_dir, pconfig, progress=False), 0)
    root.mkdir(parents=True, exist_ok=True)
    ids = frame["image_id"].tolist()
    shards = [(str(root), s, ids[i:i + SHARD_SIZE], pconfig, seed)
              for s, i in enumerate(range(0, len(ids), SHARD_SIZE))]
    workers = workers or ((os.cpu_count() or 1) if len(ids) >= POOL_FROM else 1)
    if workers == 1:
        written = sum(_write_noise_shard(*s) for s in shards)
    else:
        with shard_pool(min(workers, len(shards)), __name__) as pool:
            written = sum(pool.map(_write_noise_shard, *zip(*shards)))
    return RandomCohort(manifest, finish_cache(root, pconfig, SHARD_SIZE), written)


def main() -> None:
    """Time :func:`write_random_cohort` and then the input pipeline alone on its cache."""
    import argparse
    import json
    import shutil
    import statistics
    import tempfile
    import time

    from vertex_jax.bench.feed import measure_input
    from vertex_jax.config_files import load_config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/xray.py", help="config file[:variant]")
    parser.add_argument("--canvases", type=int, default=1024, help="training canvases written per run")
    parser.add_argument("--batch", type=int, default=32, help="global batch of the input pipeline")
    parser.add_argument("--batches", type=int, default=20, help="batches per timed input run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0, help="writing processes (0: auto)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    config = load_config(args.config)
    config.batch_size = args.batch
    rates = []
    with tempfile.TemporaryDirectory(prefix="vertex_canvases_") as tmp:
        for i in range(args.repeats):  # a fresh directory each time (every canvas written),
            if i:                          # the previous one deleted (memory as one run uses)
                shutil.rmtree(Path(tmp) / f"data{i - 1}")
            t0 = time.perf_counter()
            cohort = write_random_cohort(config, Path(tmp) / f"data{i}", train=args.canvases, val=0,
                                         workers=args.workers or None)
            rates.append(cohort.written / (time.perf_counter() - t0))
        config.data.manifest, config.data.data_dir = str(cohort.manifest), str(Path(tmp) / f"data{i}")
        feed = measure_input(config, str(Path(tmp) / "work"), batches=args.batches, repeats=args.repeats)
    h, w = config.data.canvas
    print(f"{h}x{w} {config.data.cache_dtype} canvases, {os.cpu_count()} cores")
    print(f"  written: {statistics.median(rates):8.0f} canvases/s  (runs: "
          f"{', '.join(f'{r:.0f}' for r in rates)}; {args.canvases} each)")
    print(f"  input alone, cache -> device batch {args.batch}: {feed['images_per_s']:8.0f} images/s  "
          f"(runs: {', '.join(f'{r:.0f}' for r in feed['images_per_s_runs'])}; {args.batches} "
          f"batches each; {feed['read_threads']} read threads, {feed['read_buffer_batches']} batches ahead)")
    if args.json:
        Path(args.json).write_text(json.dumps({"write_canvases_per_s_runs": rates, "input": feed,
                                               "args": vars(args)}, indent=2))


if __name__ == "__main__":
    main()
