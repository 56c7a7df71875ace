"""Orbax checkpoints of a run: model + optimizer state, data iterator, progress, config.

One ``CheckpointManager`` per workdir (``<workdir>/checkpoints``; :mod:`vertex_jax.runs`
describes the layout and reads a run back). Saves are asynchronous and atomic (Orbax
writes a temporary directory and renames it when every item is on disk), so a killed
process never leaves a checkpoint that restores wrongly. Retention keeps the latest
``keep_latest`` **and** the best ``keep_best`` by validation AUROC; the best step itself
is :func:`vertex_jax.runs.best_step`. If the newest checkpoint cannot be read, that is
reported and the previous one is used.

Faults beyond a killed process:

* Damaged arrays: the ``progress`` item carries a SHA-256 of the state's arrays (every
  leaf's path, dtype, shape and bytes in tree order, on the host; the training state is
  replicated, so any process's copy is the whole value). A restore recomputes it; a
  mismatch sets the step aside like an unreadable one ("array checksum mismatch").
* A full disk (or any failed write): Orbax saves in the background and reports a failure
  at the next save or at :meth:`Checkpoints.wait`; both raise :class:`CheckpointSaveError`
  naming the directory and its free space. The half-written step stays a temporary
  directory that is never listed as a checkpoint and is removed at the next start.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterator

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from vertex_jax import mesh as meshlib, runs
from vertex_jax.errors import UserError

CHECKSUM = "state_sha256"  # progress keys written by Checkpoints.save, removed on restore
LAYOUT = "state_layout_sha256"


class CheckpointSaveError(UserError, RuntimeError):
    """A checkpoint could not be written (full disk, lost mount...); the previous one stands."""


def _host_leaves(state: Any) -> list[tuple[str, np.ndarray]]:
    """(path, host value) of every leaf; a replicated multi-process array gives its local copy."""
    out = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(state):
        if isinstance(leaf, jax.Array):
            if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
                leaf = jax.random.key_data(leaf)
            if not leaf.is_fully_addressable:
                if not leaf.is_fully_replicated:
                    raise ValueError(f"{jax.tree_util.keystr(path)} is sharded across processes; "
                                     "only replicated state can be checksummed on one host")
                leaf = leaf.addressable_data(0)
        out.append((jax.tree_util.keystr(path), np.asarray(jax.device_get(leaf))))
    return out


def state_checksums(state: Any) -> dict[str, str]:
    """SHA-256 of the state's layout (paths, dtypes, shapes) and of layout plus array bytes."""
    layout, full = hashlib.sha256(), hashlib.sha256()
    for path, value in _host_leaves(state):
        line = f"{path}|{value.dtype.str}|{value.shape}\n".encode()
        layout.update(line)
        full.update(line)
        full.update(np.ascontiguousarray(value).data)
    return {LAYOUT: layout.hexdigest(), CHECKSUM: full.hexdigest()}


def _checksum_problem(state: Any, progress: dict) -> str | None:
    """Why a restored state does not match the checksum saved with it (None: it matches).

    Checkpoints from before checksums, or restored into another layout (a changed dtype),
    cannot be compared and pass with a log line.
    """
    if CHECKSUM not in progress:
        logging.info("checkpoint without an array checksum: not verified")
        return None
    got = state_checksums(state)
    if got[LAYOUT] != progress.get(LAYOUT):
        logging.warning("checkpoint restored into a different layout (dtype or shape change): "
                        "its array checksum cannot be compared")
        return None
    if got[CHECKSUM] != progress[CHECKSUM]:
        return (f"array checksum mismatch: the restored arrays hash to {got[CHECKSUM][:16]}..., "
                f"{progress[CHECKSUM][:16]}... when saved")
    return None


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


@dataclasses.dataclass
class EarliestBestN(ocp.checkpoint_managers.BestN):
    """Orbax's BestN with the project's tie rule: among steps with the same metric the
    earliest are kept (:func:`vertex_jax.runs.improves`), so the step training reports as
    best is never deleted. BestN sorts stably and keeps the last ``n``; giving it the
    checkpoints latest-first puts the earliest of a tie last."""

    def should_preserve(self, checkpoints, *, context):
        order = sorted(range(len(checkpoints)), key=lambda i: -checkpoints[i].step)
        flags = super().should_preserve([checkpoints[i] for i in order], context=context)
        keep = [False] * len(checkpoints)
        for flag, i in zip(flags, order):
            keep[i] = flag
        return keep


class Checkpoints:
    def __init__(self, directory: str | Path, *, keep_latest: int = 2, keep_best: int = 2):
        policy = ocp.checkpoint_managers.AnyPreservationPolicy([
            ocp.checkpoint_managers.LatestN(keep_latest),
            EarliestBestN(get_metric_fn=lambda m: m[runs.METRIC], n=keep_best,
                          keep_checkpoints_without_metrics=False)])
        # best_fn makes Orbax write each step's metrics to disk (ranking survives a restart).
        options = ocp.CheckpointManagerOptions(preservation_policy=policy, create=True,
                                               enable_async_checkpointing=True,
                                               best_fn=lambda m: m[runs.METRIC], best_mode="max")
        self.directory = Path(directory).absolute()
        # A save cut short (full disk, kill) leaves a temporary step directory; it is never
        # listed as a checkpoint, and removed here to free its space. Not Orbax's
        # cleanup_tmp_directories: that runs in the background and reports its errors at the
        # next save, so a late cleanup is a failed save (or a race with this one).
        if jax.process_index() == 0:
            for leftover in self.directory.glob("*.orbax-checkpoint-tmp*"):
                shutil.rmtree(leftover, ignore_errors=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)
        self._pending: int | None = None  # step of the background save not yet known to be done

    def save(self, step: int, state: nnx.State, iterator: Any, progress: dict, config: dict,
             card: dict, metrics: dict[str, float] | None = None) -> None:
        """``card``: what inference needs beside the arrays (tasks, clinical statistics,
        preprocessing), so a step directory is usable on its own."""
        progress = {**progress, **state_checksums(state)}
        args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  data=grain.checkpoint.CheckpointSave(iterator),
                                  progress=ocp.args.JsonSave(progress),
                                  config=ocp.args.JsonSave(config),
                                  card=ocp.args.JsonSave(card))
        with self._save_errors(step):  # also reports a failure of the previous background save
            self.manager.save(step, args=args, metrics=metrics, force=True)
        self._pending = step

    @contextlib.contextmanager
    def _save_errors(self, step: int | None) -> Iterator[None]:
        """Turn any failed write into a :class:`CheckpointSaveError` naming the disk's state."""
        try:
            yield
        except Exception as e:  # noqa: BLE001 - Orbax and TensorStore raise many types
            failed = self._pending if self._pending is not None else step
            try:
                usage = shutil.disk_usage(self.directory)
                space = f"{_size(usage.free)} free of {_size(usage.total)} on that file system"
            except OSError as du:
                space = f"free space unknown ({du})"
            kept = [int(p.name) for p in self.directory.iterdir() if p.name.isdigit()]
            previous = f"step {max(kept)} is untouched" if kept else "no earlier checkpoint exists"
            raise CheckpointSaveError(
                f"saving checkpoint step {failed} to {self.directory} failed ({type(e).__name__}: "
                f"{e}); {space}. The previous checkpoint stands ({previous}); free space and "
                f"re-run the same command to resume from it.") from e
        finally:
            self._pending = None

    def restore_latest(self, target: nnx.State, iterator: Any) -> tuple[int, nnx.State, dict] | None:
        """Newest readable checkpoint as (step, state, progress); the iterator is restored in place."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                got = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract),
                    data=grain.checkpoint.CheckpointRestore(iterator),
                    progress=ocp.args.JsonRestore()))
                progress = dict(got["progress"])
                problem = _checksum_problem(got["state"], progress)
            except Exception as e:  # noqa: BLE001 - any unreadable checkpoint: fall back
                problem = f"{type(e).__name__}: {e}"
            if problem:
                aside = self._set_aside(step)
                logging.error("checkpoint %s/%d cannot be restored (%s); moved to %s, trying "
                              "the previous one", self.directory, step, problem, aside)
                continue
            for key in (CHECKSUM, LAYOUT):
                progress.pop(key, None)
            return step, got["state"], progress
        return None

    def restore_state(self, step: int, target: nnx.State) -> nnx.State:
        """The model + optimizer arrays of ``step``, in ``target``'s sharding (no iterator),
        checked against the checksum saved with them."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        got = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), progress=ocp.args.JsonRestore()))
        if problem := _checksum_problem(got["state"], dict(got["progress"])):
            raise RuntimeError(f"checkpoint {self.path(step)} cannot be used: {problem}")
        return got["state"]

    def _set_aside(self, step: int) -> Path:
        """Move an unreadable step out of the manager's way, keeping it for inspection."""
        aside = self.directory.parent / "corrupt_checkpoints" / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
        if jax.process_index() == 0:
            aside.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.directory / str(step), aside)
        meshlib.barrier(f"checkpoint:set_aside:{step}")
        self.manager.reload()
        return aside

    def best_step(self) -> int | None:
        return runs.best_step(self.manager)

    def path(self, step: int) -> Path:
        return self.directory / str(step)

    def wait(self) -> None:
        """Block until the background save is on disk (:class:`CheckpointSaveError` if it failed)."""
        with self._save_errors(self._pending):
            self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
