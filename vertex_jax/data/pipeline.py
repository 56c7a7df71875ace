"""grain input pipelines over the preprocessed cache.

Every batch is a dict of NumPy arrays for this process's share of the global batch::

    image          [b, H, W, 1] uint8/uint16 canvas (scaled to float on the accelerator)
    clinical       [b, 3] float32 age, sex (1=F), BMI normalised with training statistics, 0 if missing
    clinical_mask  [b, 3] float32, 1 where the value is present
    labels         [b, T] float32 per task (0/1), 0 where unknown
    label_mask     [b, T] float32, 1 where the label is known
    index          [b] int64 row of the split table (-1 for padding); the example's id
    epoch          [b] int64 training epoch of the example (augmentation key)
    valid          [b] bool, False for the padding that completes the last evaluation batch

plus any ``extra`` per-example arrays a caller adds (the vertebra slots of
:mod:`vertex_jax.vertebrae.slots` when the vertebra head trains).

Training: a per-epoch reshuffle of the split (grain's index shuffle, reseeded each
epoch), repeated, and cut into global batches of ``B`` consecutive examples; process ``p``
of ``P`` reads only rows ``[p*B/P, (p+1)*B/P)`` of each (:class:`ProcessShard`), so the
global batch is identical, in content and order, whatever the process count. Augmentation runs on the accelerator
(:mod:`vertex_jax.train.augment`), keyed by (seed, epoch, index); the benchmark shows why.
Evaluation: in order, no augmentation, every example exactly once, padded to whole
global batches with ``valid`` marking real examples.

Both read whole local batches ahead on a few threads (:func:`read_options`: grain's
defaults are sized for 1-10 KiB records, a batch of canvases is megabytes).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Mapping, Sequence

import grain
from absl import flags
import numpy as np
import pandas as pd

from vertex_jax.data.cache import Cache, CacheDamagedError
from vertex_jax.data.clinical import ClinicalStats
from vertex_jax.errors import ConfigError, InputDataError


class CacheSource(grain.sources.RandomAccessDataSource):
    """Examples of one split: cached canvases joined with labels and clinical values.

    ``records[i] == -1`` is a padding example (zeros, ``valid=False``).
    """

    def __init__(self, cache: Cache, records: np.ndarray, tables: dict[str, np.ndarray]):
        self._shape, self._dtype = cache.shape, np.dtype(cache.config.out_dtype)
        self._cache = cache
        try:
            self._source = grain.sources.ArrayRecordDataSource(cache.shard_paths)
        except Exception:  # noqa: BLE001 - a shard whose footer cannot be read: say which
            for path in cache.shard_paths:
                try:
                    grain.sources.ArrayRecordDataSource([path])
                except Exception as e:  # noqa: BLE001
                    raise CacheDamagedError(path, f"{type(e).__name__}: {e}") from e
            raise
        self._records = records
        self._tables = tables

    def _read(self, record: int) -> bytes:
        """One record; a read error names the damaged shard (:class:`CacheDamagedError`)."""
        try:
            return self._source[record]
        except Exception as e:  # noqa: BLE001 - Riegeli reports damage as RuntimeError
            raise CacheDamagedError(self._cache.shard_of(record),
                                    f"record {record}: {type(e).__name__}: {e}") from e

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        record = int(self._records[i])
        valid = record >= 0
        if valid:
            image = np.frombuffer(self._read(record), self._dtype).reshape(*self._shape, 1)
        else:
            image = np.zeros((*self._shape, 1), self._dtype)
        example = {k: v[i] for k, v in self._tables.items()}
        example.update(image=image, valid=np.bool_(valid), epoch=np.int64(0),
                       index=np.int64(self._tables["row"][i] if valid else -1))
        del example["row"]
        return example


def example_tables(df: pd.DataFrame, tasks: Sequence[str], stats: ClinicalStats
                   ) -> dict[str, np.ndarray]:
    """Per-example arrays (everything but the image) for the rows of ``df``."""
    clinical, clinical_mask = stats.apply(df)
    labels = df[list(tasks)].to_numpy(np.float64)
    known = ~np.isnan(labels)
    return {"clinical": clinical, "clinical_mask": clinical_mask,
            "labels": np.where(known, labels, 0.0).astype(np.float32),
            "label_mask": known.astype(np.float32),
            "row": np.arange(len(df), dtype=np.int64)}


@dataclasses.dataclass(frozen=True)
class _TagEpoch:
    """Stamp each example of the repeated stream with its epoch (picklable for workers)."""

    epoch_length: int

    def __call__(self, i: int, example: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {**example, "epoch": np.int64(i // self.epoch_length)}


class ProcessShard(grain.MapDataset):
    """This process's rows of every global batch: rows ``[p*b, (p+1)*b)`` of batch ``k``.

    Concatenating the processes' local batches in process order gives the global batch in
    the same order as a single process would see it, so per-example randomness (dropout,
    drop-connect) lands on the same examples whatever the process count.
    """

    def __init__(self, parent: grain.MapDataset, global_batch: int, index: int, count: int):
        super().__init__(parent)
        self._global, self._local = global_batch, global_batch // count
        self._offset = index * self._local

    def __len__(self) -> int:
        return len(self._parent) // self._global * self._local

    def __str__(self) -> str:
        return f"ProcessShard(offset={self._offset}, local={self._local})"

    def __getitem__(self, j):
        if isinstance(j, slice):
            return self.slice(j)
        k, r = divmod(j, self._local)
        return self._parent[k * self._global + self._offset + r]


def _local_batch(global_batch: int, process_count: int) -> int:
    if global_batch % process_count:
        raise ConfigError(f"global batch {global_batch} does not divide over {process_count} "
                         f"processes; use a multiple of {process_count}")
    return global_batch // process_count


READ_THREADS = 8  # most threads reading batches ahead, with ``read_threads=0`` (auto)
READ_BUFFER_MIB = 256.0  # most memory held in batches read ahead


def read_options(batch_bytes: int, *, threads: int = 0, buffer_mib: float = READ_BUFFER_MIB,
                 workers: int = 0) -> grain.ReadOptions:
    """grain's read-ahead for a dataset whose elements are whole batches of ``batch_bytes``.

    grain's defaults (16 threads, 500 elements) are tuned for 1-10 KiB records read one by
    one. Here an element is a local batch: 32 canvases of 0.5 MiB at the paper's 1024×512
    uint8, 16 MiB, so 500 of them would be 8 GiB of host memory, all requested at the
    first ``next``. Instead:

    - ``threads`` (0: auto): one per core, at most :data:`READ_THREADS`, shared among the
      ``workers`` processes. A thread reads a whole batch; the ArrayRecord read and its
      zstd decompression run without the GIL (the copies into Python bytes and the batch
      stack hold it), ~3,000-6,000 records/s per thread at 1024×512, far ahead of what one
      accelerator's step takes (a few hundred images/s for B4), so a few threads suffice;
      more only refill the buffer faster after a stall.
    - ``prefetch_buffer_size``: two batches per thread (one being read, one ready), no
      more than ``buffer_mib`` of memory, at least one. A thread beyond the buffer would
      idle, so ``num_threads`` is at most the buffer.

    At 1024×512 uint8, batch 32, 16 cores: 8 threads, 16 batches (256 MiB); on 2 cores:
    2 threads, 4 batches (64 MiB). Measured there (cache -> device batch, no step): 1,600-
    3,300 images/s and 0.6 GiB resident, against 500-840 images/s and 2.2 GiB with grain's
    defaults (``python -m vertex_jax.bench.canvas_cohort``).
    """
    if threads < 0 or buffer_mib <= 0:
        raise ConfigError(f"read threads must be >= 0 and the read buffer > 0 MiB, got "
                         f"{threads} and {buffer_mib}")
    threads = threads or max(1, min(READ_THREADS, os.cpu_count() or 1) // max(1, workers))
    fits = max(1, int(buffer_mib * 2**20) // max(1, batch_bytes))
    buffer = min(2 * threads, fits)
    return grain.ReadOptions(num_threads=min(threads, buffer), prefetch_buffer_size=buffer)


def batch_bytes(cache: Cache, local_batch: int) -> int:
    """Bytes of the canvases of one local batch (the rest of a batch is a few floats each)."""
    height, width = cache.shape
    return local_batch * height * width * np.dtype(cache.config.out_dtype).itemsize


def _prefetch(ds: grain.IterDataset, workers: int, buffer: int = 2) -> grain.IterDataset:
    """Read ahead: ``workers`` processes (whole batches each), else a background thread.

    Batches are formed before the split across workers, so the stream is the same for
    any worker count. A raw-canvas cache makes a batch mostly a memory copy, so a thread
    is usually the faster choice (``python -m vertex_jax.bench.input`` compares both);
    processes pay off when per-example CPU work grows.
    """
    if workers > 0:
        # grain 0.2.18 workers read an absl flag and fail unless flags count as parsed
        # (true under absl.app.run; not in a notebook, a test or a plain script).
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        return ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers,
                                                           per_worker_buffer_size=buffer))
    return grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=buffer)


def train_dataset(cache: Cache, df: pd.DataFrame, *, tasks: Sequence[str], stats: ClinicalStats,
                  global_batch: int, seed: int, num_epochs: int | None = None, workers: int = 0,
                  process_index: int = 0, process_count: int = 1, read_threads: int = 0,
                  read_buffer_mib: float = READ_BUFFER_MIB,
                  extra: Mapping[str, np.ndarray] | None = None) -> grain.IterDataset:
    """Shuffled, repeated training batches for this process (see module docstring);
    ``read_threads``, ``read_buffer_mib``: :func:`read_options`; ``extra``: more per-example
    arrays, one row per row of ``df``, batched under their names."""
    if len(df) < global_batch:
        raise InputDataError(f"training split has {len(df)} examples, fewer than one batch "
                             f"({global_batch})",
                             todo="use a smaller --config.batch_size, or give that split more images "
                                  "(--config.data.split_fractions, or more rows in the manifest)")
    local = _local_batch(global_batch, process_count)
    tables = example_tables(df, tasks, stats)
    for name, values in (extra or {}).items():
        if name in tables or len(values) != len(df):
            raise ValueError(f"extra table {name!r}: a new name with one row per example "
                             f"({len(df)}) expected, got {len(values)} rows")
        tables[name] = values
    source = CacheSource(cache, cache.records_for(df["image_id"]), tables)
    ds = (grain.MapDataset.source(source).seed(seed).shuffle().repeat(num_epochs)
          .map_with_index(_TagEpoch(len(source))))
    ds = ProcessShard(ds, global_batch, process_index, process_count).batch(local)
    options = read_options(batch_bytes(cache, local), threads=read_threads,
                           buffer_mib=read_buffer_mib, workers=workers)
    return _prefetch(ds.to_iter_dataset(options), workers)


def eval_dataset(cache: Cache, df: pd.DataFrame, *, tasks: Sequence[str], stats: ClinicalStats,
                 global_batch: int, workers: int = 0, process_index: int = 0,
                 process_count: int = 1, read_threads: int = 0,
                 read_buffer_mib: float = READ_BUFFER_MIB) -> grain.IterDataset:
    """Ordered evaluation batches: each example once, padded to whole global batches;
    ``read_threads``, ``read_buffer_mib``: :func:`read_options`."""
    local = _local_batch(global_batch, process_count)
    tables = example_tables(df, tasks, stats)
    records = cache.records_for(df["image_id"])
    pad = -len(records) % global_batch
    records = np.concatenate([records, np.full(pad, -1, np.int64)])
    tables = {k: np.concatenate([v, np.zeros((pad, *v.shape[1:]), v.dtype)])
              for k, v in tables.items()}
    source = CacheSource(cache, records, tables)
    ds = ProcessShard(grain.MapDataset.source(source), global_batch, process_index, process_count)
    options = read_options(batch_bytes(cache, local), threads=read_threads,
                           buffer_mib=read_buffer_mib, workers=workers)
    return _prefetch(ds.batch(local).to_iter_dataset(options), workers)
