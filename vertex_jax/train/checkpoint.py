"""Orbax checkpoints of a run: model + optimizer state, data iterator, progress, config.

One ``CheckpointManager`` per workdir (``<workdir>/checkpoints``; :mod:`vertex_jax.runs`
describes the layout and reads a run back). Saves are asynchronous and atomic (Orbax
writes a temporary directory and renames it when every item is on disk), so a killed
process never leaves a checkpoint that restores wrongly. Retention keeps the latest
``keep_latest`` **and** the best ``keep_best`` by validation AUROC; the best step itself
is :func:`vertex_jax.runs.best_step`. If the newest checkpoint cannot be read, that is
reported and the previous one is used.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from flax import nnx
from jax.experimental import multihost_utils

from vertex_jax import runs


class Checkpoints:
    def __init__(self, directory: str | Path, *, keep_latest: int = 2, keep_best: int = 2):
        policy = ocp.checkpoint_managers.AnyPreservationPolicy([
            ocp.checkpoint_managers.LatestN(keep_latest),
            ocp.checkpoint_managers.BestN(get_metric_fn=lambda m: m[runs.METRIC], n=keep_best,
                                          keep_checkpoints_without_metrics=False)])
        # best_fn makes Orbax write each step's metrics to disk (ranking survives a restart).
        options = ocp.CheckpointManagerOptions(preservation_policy=policy, create=True,
                                               enable_async_checkpointing=True,
                                               best_fn=lambda m: m[runs.METRIC], best_mode="max")
        self.directory = Path(directory).absolute()
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def save(self, step: int, state: nnx.State, iterator: Any, progress: dict, config: dict,
             card: dict, metrics: dict[str, float] | None = None) -> None:
        """``card``: what inference needs beside the arrays (tasks, clinical statistics,
        preprocessing), so a step directory is usable on its own."""
        args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  data=grain.checkpoint.CheckpointSave(iterator),
                                  progress=ocp.args.JsonSave(progress),
                                  config=ocp.args.JsonSave(config),
                                  card=ocp.args.JsonSave(card))
        self.manager.save(step, args=args, metrics=metrics, force=True)

    def restore_latest(self, target: nnx.State, iterator: Any) -> tuple[int, nnx.State, dict] | None:
        """Newest readable checkpoint as (step, state, progress); the iterator is restored in place."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                got = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract),
                    data=grain.checkpoint.CheckpointRestore(iterator),
                    progress=ocp.args.JsonRestore()))
            except Exception as e:  # noqa: BLE001 - any unreadable checkpoint: fall back
                aside = self._set_aside(step)
                logging.error("checkpoint %s/%d cannot be restored (%s: %s); moved to %s, trying "
                              "the previous one", self.directory, step, type(e).__name__, e, aside)
                continue
            return step, got["state"], dict(got["progress"])
        return None

    def _set_aside(self, step: int) -> Path:
        """Move an unreadable step out of the manager's way, keeping it for inspection."""
        aside = self.directory.parent / "corrupt_checkpoints" / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
        if jax.process_index() == 0:
            aside.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.directory / str(step), aside)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"checkpoint:set_aside:{step}")
        self.manager.reload()
        return aside

    def best_step(self) -> int | None:
        return runs.best_step(self.manager)

    def path(self, step: int) -> Path:
        return self.directory / str(step)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
