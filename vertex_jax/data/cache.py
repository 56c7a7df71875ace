"""Preprocess once, in parallel, into ArrayRecord shards keyed by a fingerprint.

Layout of one cache (``<cache_dir>/<fingerprint>/``)::

    shard-00003.array_record   one record per image: the raw canvas bytes (H×W uint8/16)
    shard-00003.json           image ids in record order, their geometry, unreadable files,
                               SHA-256 and size of the .array_record
    COMPLETE.json              written last: settings, record count, failures, shard size

Why ArrayRecord: random access by record number (what a shuffled grain source needs),
no per-record decoding (a canvas is stored raw, 512 KiB at 1024×512 uint8), and a
format grain reads natively. A shard becomes visible only when complete (its JSON is
renamed into place after the records), so a crashed build resumes from the finished
shards and a cache without ``COMPLETE.json`` is never used. The fingerprint covers
every preprocessing setting and each image's path, size and mtime: change either and a
fresh cache is built beside the stale one.

A finished cache is verified each time a process first opens it: every shard's SHA-256
(recorded in its JSON at write time; hashing runs at ~1.3 GB/s per core, a little faster
than reading the records back, which also decompresses them) and size. A damaged,
truncated or missing shard is named in a warning, removed with ``COMPLETE.json``, and
rebuilt from the source images like an interrupted build. Damage that appears after the
check (a read error during training) stops the run with :class:`CacheDamagedError`
naming the shard; the next start rebuilds it. Caches of version 1 (no checksums) are not
reused: their fingerprint differs, so a fresh cache is built beside them.

:func:`write_shard` and :func:`finish_cache` are the writer itself, also used for caches
of other canvases (the loop benchmark's random ones, :mod:`vertex_jax.bench.canvas_cohort`).
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
from array_record.python.array_record_module import ArrayRecordWriter
from tqdm import tqdm

from vertex_jax.data.io import ImageReadError, read_image
from vertex_jax.data.preprocess import Geometry, PreprocessConfig, preprocess
from vertex_jax.files import atomic_path, write_text
from vertex_jax.processes import die_with_parent
from vertex_jax.errors import UserError

CACHE_VERSION = 2  # 2: per-shard SHA-256 and size, shard size in COMPLETE.json
COMPLETE = "COMPLETE.json"
_VERIFIED: set[tuple] = set()  # stamps (_stamp) of caches this process has checked or built


class CacheDamagedError(UserError, RuntimeError):
    """A cache shard cannot be read; the message names the file and how to recover."""

    def __init__(self, shard: str | os.PathLike, error: str):
        super().__init__(str(shard), error)  # plain args: the error pickles out of grain workers
        self.shard, self.error = str(shard), error

    def __str__(self) -> str:
        return (f"cache shard {self.shard} is damaged ({self.error}); re-run the same command: "
                "a cache is verified when opened and a damaged shard is rebuilt from the source "
                "images")


@dataclasses.dataclass(frozen=True)
class Cache:
    """A finished cache: where its shards are and which image each record holds."""

    root: Path
    config: PreprocessConfig
    index: pd.DataFrame  # columns: image_id, record, geometry (dict), shard (file name)
    failures: pd.DataFrame  # columns: image_id, path, reason

    @property
    def shard_paths(self) -> list[str]:
        return sorted(str(p) for p in self.root.glob("shard-*.array_record"))

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.config.canvas)

    def records_for(self, image_ids: Sequence[str]) -> np.ndarray:
        """Record numbers of ``image_ids`` (KeyError naming the first id not cached)."""
        lookup = dict(zip(self.index["image_id"], self.index["record"]))
        try:
            return np.array([lookup[i] for i in image_ids], np.int64)
        except KeyError as e:
            raise KeyError(f"image_id {e.args[0]!r} is not in the cache {self.root}") from None

    def shard_of(self, record: int) -> Path:
        """The shard file that holds record number ``record``."""
        return self.root / self.index["shard"].iloc[record]

    def decode(self, record: bytes) -> np.ndarray:
        return np.frombuffer(record, self.config.out_dtype).reshape(self.shape)

    def geometry(self, image_id: str) -> Geometry:
        row = self.index.loc[self.index["image_id"] == image_id, "geometry"]
        return Geometry.from_dict(row.iloc[0])


def fingerprint(df: pd.DataFrame, config: PreprocessConfig) -> str:
    """Hash of the preprocessing settings and each image's id, path, size and mtime."""
    h = hashlib.sha256(json.dumps({"version": CACHE_VERSION, **config.to_dict()},
                                  sort_keys=True).encode())
    for image_id, path in zip(df["image_id"], df["path"]):
        try:
            st = os.stat(path)
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        h.update(f"{image_id}\0{path}\0{stamp}\n".encode())
    return h.hexdigest()[:16]


RECORD_OPTIONS = "group_size:1"  # one record per chunk: random access (what grain requires)


def write_shard(root: str | os.PathLike, shard: int,
                examples: Iterable[tuple[str, np.ndarray, dict[str, Any]]],
                failures: Sequence[dict[str, str]] = ()) -> dict[str, Any]:
    """Write ``shard-NNNNN.array_record`` (one record per canvas) and its JSON into ``root``.

    ``examples`` yields (image id, canvas, geometry dict); ``failures`` (image_id, path,
    reason) is listed as it stands once ``examples`` is exhausted, so a generator may
    append to it as it goes. The JSON, renamed into place last, holds the ids in record
    order, the failures and the records file's SHA-256 and size. Returns that JSON.
    """
    base = Path(root) / f"shard-{shard:05d}"
    entries = []
    with atomic_path(base.with_suffix(".array_record")) as tmp_records:
        writer = ArrayRecordWriter(str(tmp_records), RECORD_OPTIONS)
        try:
            for image_id, canvas, geometry in examples:
                writer.write(canvas.tobytes())
                entries.append({"image_id": image_id, "geometry": geometry})
        finally:
            writer.close()
        checks = {}
        if entries:
            with open(tmp_records, "rb") as f:
                checks = {"sha256": hashlib.file_digest(f, "sha256").hexdigest(),
                          "bytes": os.fstat(f.fileno()).st_size}
        else:  # ArrayRecord cannot hold an empty shard usefully: keep only the JSON
            tmp_records.unlink(missing_ok=True)
    meta = {"shard": shard, "entries": entries, "failures": list(failures), **checks}
    write_text(base.with_suffix(".json"), json.dumps(meta))
    return meta


def _preprocessed(image_ids: list[str], paths: list[str], config: PreprocessConfig,
                  skip_errors: bool, failures: list[dict[str, str]]
                  ) -> Iterator[tuple[str, np.ndarray, dict[str, Any]]]:
    """(image id, canvas, geometry dict) of each readable image; the unreadable ones are
    appended to ``failures`` with ``skip_errors``, else the first one raises."""
    for image_id, path in zip(image_ids, paths):
        try:
            canvas, geometry = preprocess(read_image(path).pixels, config)
        except ImageReadError as e:
            if not skip_errors:
                raise
            failures.append({"image_id": image_id, "path": path, "reason": e.reason})
            continue
        yield image_id, canvas, geometry.to_dict()


def _write_shard(root: str, shard: int, image_ids: list[str], paths: list[str],
                 config: PreprocessConfig, skip_errors: bool) -> dict[str, Any]:
    """Preprocess one shard's images into ``shard-NNNNN.array_record`` (+ its JSON)."""
    failures: list[dict[str, str]] = []
    return write_shard(root, shard, _preprocessed(image_ids, paths, config, skip_errors, failures),
                       failures)


def _shard_problem(shard_json: Path) -> str | None:
    """Why a finished shard cannot be used (None if it is intact)."""
    try:
        meta = json.loads(shard_json.read_text())
    except FileNotFoundError:
        return f"missing its record list {shard_json.name}"
    except (OSError, ValueError) as e:
        return f"listed in an unreadable {shard_json.name} ({type(e).__name__}: {e})"
    try:
        if not meta["entries"]:
            return None
        want_hash, want_bytes = meta["sha256"], meta["bytes"]
    except (KeyError, TypeError) as e:
        return f"listed without a checksum in {shard_json.name} ({type(e).__name__}: {e})"
    records = shard_json.with_suffix(".array_record")
    try:
        with open(records, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size != want_bytes:
                return f"truncated or overwritten: {size} bytes, {want_bytes} written"
            if hashlib.file_digest(f, "sha256").hexdigest() != want_hash:
                return "damaged: its SHA-256 differs from the one recorded when it was written"
    except FileNotFoundError:
        return "missing"
    except OSError as e:
        return f"unreadable ({e})"
    return None


def _stamp(root: Path) -> tuple:
    """Name, size and mtime of every file of a cache: a change means it must be checked again."""
    stamp = []
    for p in sorted(root.iterdir()):
        st = p.stat()
        stamp.append((p.name, st.st_size, st.st_mtime_ns))
    return str(root), tuple(stamp)


def _drop_damaged(root: Path, shards: Sequence[int], finished: bool) -> int:
    """Verify the finished shards among ``shards``; remove the damaged ones so they are rebuilt.

    In a ``finished`` cache a shard without its JSON is damaged too (in an unfinished
    one it is simply still to do). Returns how many shards were found damaged.
    """
    names = [root / f"shard-{s:05d}.json" for s in shards]
    if not finished:
        names = [p for p in names if p.exists()]
    with cf.ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:  # hashing releases the GIL
        problems = [(p, why) for p, why in zip(names, pool.map(_shard_problem, names)) if why]
    for shard_json, why in problems:
        logging.warning("cache shard %s is %s; rebuilding it from the source images",
                        shard_json.with_suffix(".array_record"), why)
        shard_json.unlink(missing_ok=True)
        shard_json.with_suffix(".array_record").unlink(missing_ok=True)
    return len(problems)


def _open(root: Path, config: PreprocessConfig) -> Cache:
    done = json.loads((root / COMPLETE).read_text())
    rows, failures = [], []
    for shard_json in sorted(root.glob("shard-*.json")):
        meta = json.loads(shard_json.read_text())
        rows.extend({**r, "shard": shard_json.with_suffix(".array_record").name}
                    for r in meta["entries"])
        failures.extend(meta["failures"])
    index = pd.DataFrame({"image_id": [r["image_id"] for r in rows],
                          "record": np.arange(len(rows)),
                          "geometry": [r["geometry"] for r in rows],
                          "shard": [r["shard"] for r in rows]})
    if len(index) != done["num_records"]:
        raise RuntimeError(f"cache {root} is inconsistent ({len(index)} records listed, "
                           f"{done['num_records']} expected); delete it to rebuild")
    return Cache(root, config, index, pd.DataFrame(failures, columns=["image_id", "path", "reason"]))


def _finished(root: Path, config: PreprocessConfig, skip_errors: bool) -> Cache:
    """Open a finished, verified cache; without ``skip_errors`` a recorded failure is an error."""
    cache = _open(root, config)
    if len(cache.failures) and not skip_errors:
        first = cache.failures.iloc[0]
        raise ImageReadError(first["path"], f"{first['reason']} (recorded in {root}; "
                             f"{len(cache.failures)} unreadable image(s) in all)")
    return cache


def shard_pool(workers: int, module: str) -> cf.ProcessPoolExecutor:
    """A process pool for writing shards, its workers forked from a server that has imported
    ``module`` once (a spawn would import it in every worker), never from this process,
    which may hold JAX threads; each worker dies with this process."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([module])
    return cf.ProcessPoolExecutor(workers, mp_context=ctx, initializer=die_with_parent)


def build_cache(df: pd.DataFrame, cache_dir: str | os.PathLike,
                config: PreprocessConfig = PreprocessConfig(), *, workers: int | None = None,
                shard_size: int = 128, skip_errors: bool = False, progress: bool = True) -> Cache:
    """Preprocess every image of a validated manifest into a cache (or reuse a finished one).

    With ``skip_errors`` unreadable images are left out and listed (``Cache.failures`` and
    ``unreadable.csv``); without it the first one stops the build with its file named.
    A finished cache is verified first and its damaged shards rebuilt (module docstring).
    """
    root = Path(cache_dir) / fingerprint(df, config)
    complete = root / COMPLETE
    if complete.exists():
        if _stamp(root) in _VERIFIED:
            return _finished(root, config, skip_errors)
        try:  # rebuild with the cache's own shard size, so shard numbers keep their images
            shard_size = int(json.loads(complete.read_text())["shard_size"])
        except (OSError, ValueError, KeyError) as e:
            logging.warning("cache %s: %s is unreadable (%s); checking the shards and finishing "
                            "the cache again", root, complete, e)
            complete.unlink()
    ids, paths = df["image_id"].tolist(), df["path"].tolist()
    shards = [(s, ids[i:i + shard_size], paths[i:i + shard_size])
              for s, i in enumerate(range(0, len(ids), shard_size))]
    finished = complete.exists()
    if root.exists() and _drop_damaged(root, [s for s, _, _ in shards], finished):
        complete.unlink(missing_ok=True)  # written again only once the rebuilt shards are in
    elif finished:
        _VERIFIED.add(_stamp(root))
        return _finished(root, config, skip_errors)
    root.mkdir(parents=True, exist_ok=True)
    (root / "settings.json").write_text(json.dumps(config.to_dict()))
    todo = [s for s in shards if not (root / f"shard-{s[0]:05d}.json").exists()]
    bar = tqdm(total=len(ids), initial=len(ids) - sum(len(s[1]) for s in todo),
               desc="preprocess", unit="img", disable=not progress)
    workers = max(1, min(workers or os.cpu_count() or 1, len(todo) or 1))
    if workers == 1:
        for s, i, p in todo:
            _write_shard(str(root), s, i, p, config, skip_errors)
            bar.update(len(i))
    else:
        with shard_pool(workers, __name__) as pool:
            futures = {pool.submit(_write_shard, str(root), s, i, p, config, skip_errors): len(i)
                       for s, i, p in todo}
            try:
                for future in cf.as_completed(futures):
                    future.result()
                    bar.update(futures[future])
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
    bar.close()
    return finish_cache(root, config, shard_size)


def finish_cache(root: str | os.PathLike, config: PreprocessConfig, shard_size: int) -> Cache:
    """Mark a cache whose shards are all written (:func:`write_shard`) as finished: list
    the failures in ``unreadable.csv``, write ``COMPLETE.json`` last, and open it (counted
    as verified in this process)."""
    root = Path(root)
    for stale in root.glob("*.tmp"):
        stale.unlink()
    metas = [json.loads(p.read_text()) for p in sorted(root.glob("shard-*.json"))]
    num_records = sum(len(m["entries"]) for m in metas)
    failures = [f for m in metas for f in m["failures"]]
    if failures:
        pd.DataFrame(failures).to_csv(root / "unreadable.csv", index=False)
    write_text(root / COMPLETE, json.dumps({"num_records": num_records, "num_failures": len(failures),
                                            "shard_size": shard_size, "settings": config.to_dict()}))
    _VERIFIED.add(_stamp(root))
    return _open(root, config)
