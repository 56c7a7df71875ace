"""The training input alone: cache -> device batch, images/s, no step.

Used beside the loop (``bench --what loop``) and by ``python -m vertex_jax.bench.canvas_cohort``.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import jax

from vertex_jax.errors import ConfigError

__all__ = ["measure_input"]


def measure_input(config: Any, workdir: str, *, batches: int, repeats: int) -> dict[str, Any]:
    """The input pipeline alone, in this process: images/s of ``repeats`` runs of ``batches``
    training batches (after two warm-up batches) read from the cache through grain (the
    data ``prepare`` gives training, in ``workdir``), sharded and put on the devices by the
    loop's :class:`~vertex_jax.train.prefetch.DevicePrefetch`, no step; the median is
    ``images_per_s``."""
    from vertex_jax import mesh as meshlib
    from vertex_jax.data.pipeline import batch_bytes, read_options
    from vertex_jax.data.prepare import prepare
    from vertex_jax.models.build import tasks_of
    from vertex_jax.train.prefetch import DevicePrefetch

    if batches < 1 or repeats < 1:
        raise ConfigError(f"need batches >= 1 and repeats >= 1, got {batches} and {repeats}")
    mesh = meshlib.make_mesh()
    data = prepare(config.data, workdir, tasks=tasks_of(config))
    count = jax.process_count()
    iterator = iter(data.train(global_batch=config.batch_size, seed=config.seed,
                               split=config.data.train_split, workers=config.data.workers,
                               process_index=jax.process_index(), process_count=count))
    feed = DevicePrefetch(iterator, lambda b: meshlib.to_global(b, mesh), depth=2)
    rates = []
    try:
        for _ in range(2):  # read threads started, page cache hot, transfers set up
            jax.block_until_ready(feed.next(batches)[1])
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(batches):
                _, batch = feed.next(batches)
            jax.block_until_ready(batch)
            rates.append(batches * config.batch_size / (time.perf_counter() - t0))
    finally:
        iterator.close()
    options = read_options(batch_bytes(data.cache, config.batch_size // count),
                           workers=config.data.workers)
    return {"images_per_s": statistics.median(rates), "images_per_s_runs": rates,
            "batches": batches, "batch": config.batch_size,
            "read_threads": options.num_threads, "read_buffer_batches": options.prefetch_buffer_size}
