"""Orbax checkpoints of a run: model + optimizer state, data iterator, progress, config.

One ``CheckpointManager`` per workdir (``<workdir>/checkpoints``). Saves are
asynchronous and atomic (Orbax writes a temporary directory and renames it when every
item is on disk), so a killed process never leaves a checkpoint that restores wrongly.
Retention keeps the latest ``keep_latest`` **and** the best ``keep_best`` by validation
AUROC. If the newest checkpoint cannot be read, that is reported and the previous one
is used.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from jax.experimental import multihost_utils

METRIC = "val_auroc"


class Checkpoints:
    def __init__(self, directory: str | Path, *, keep_latest: int = 2, keep_best: int = 2):
        policy = ocp.checkpoint_managers.AnyPreservationPolicy([
            ocp.checkpoint_managers.LatestN(keep_latest),
            ocp.checkpoint_managers.BestN(get_metric_fn=lambda m: m[METRIC], n=keep_best,
                                          keep_checkpoints_without_metrics=False)])
        # best_fn makes Orbax write each step's metrics to disk (ranking survives a restart).
        options = ocp.CheckpointManagerOptions(preservation_policy=policy, create=True,
                                               enable_async_checkpointing=True,
                                               best_fn=lambda m: m[METRIC], best_mode="max")
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
        return best_step(self.manager)

    def path(self, step: int) -> Path:
        return self.directory / str(step)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def best_step(manager: ocp.CheckpointManager) -> int | None:
    """The step with the highest validation AUROC (the latest among ties), else the latest.

    Reads the metrics each step saved, so it works with a read-only manager (whose
    ``best_step`` would rank nothing and return the latest).
    """
    scored = [(m[METRIC], step) for step in manager.all_steps()
              if (m := manager.metrics(step)) and METRIC in m]
    return max(scored)[1] if scored else manager.latest_step()


def restore_arrays(item_dir: str | Path) -> Any:
    """A saved pytree item as host arrays, whatever devices it was saved from."""
    checkpointer = ocp.StandardCheckpointer()
    metadata = checkpointer.metadata(Path(item_dir).absolute()).item_metadata
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), metadata,
                          is_leaf=lambda m: hasattr(m, "shape"))
    def host(x):
        return np.asarray(jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x)
    return jax.tree.map(host, checkpointer.restore(Path(item_dir).absolute(), target))


def _name(path: tuple) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def _flat(tree: Any) -> dict[str, Any]:
    return {_name(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def read_json_item(step_dir: Path, item: str) -> dict:
    """A JSON item (``config``, ``card``, ``progress``) of a checkpoint step."""
    if not (step_dir / item).exists():
        raise FileNotFoundError(f"{step_dir} has no {item!r} item; is it a vertex_jax checkpoint?")
    return ocp.JsonCheckpointHandler().restore(step_dir / item)


def load_params(checkpoint: str | Path, model: nnx.Module, kinds: Any = nnx.Param
                ) -> dict[str, list[str]]:
    """Copy variables of ``kinds`` (default: parameters) from a run's checkpoint into
    ``model``, by name.

    ``checkpoint`` is a step directory, a run's ``checkpoints`` directory or its workdir
    (best step, else latest). Returns what was ``loaded``, ``missing`` from the checkpoint,
    ``unexpected`` in it and ``mismatched`` in shape, for the caller to report.
    """
    from ml_collections import ConfigDict

    from vertex_jax.train.state import build_model

    step_dir = resolve_step_dir(checkpoint)
    saved = ConfigDict(read_json_item(step_dir, "config"))
    saved.model.init_weights = ""
    source_model = nnx.eval_shape(lambda: build_model(saved, seed=0))
    source_names = set(_flat(nnx.state(source_model, kinds)))
    raw = _flat(restore_arrays(step_dir / "state"))
    source = {k.removeprefix("0/"): v for k, v in raw.items()
              if k.startswith("0/") and k.removeprefix("0/") in source_names}
    params = nnx.state(model, kinds)
    target = _flat(params)
    report: dict[str, list[str]] = {"loaded": [], "missing": [], "mismatched": [],
                                    "unexpected": sorted(set(source) - set(target))}
    for name, leaf in target.items():
        if name not in source:
            report["missing"].append(name)
        elif np.shape(source[name]) != np.shape(leaf):
            report["mismatched"].append(
                f"{name}: checkpoint {np.shape(source[name])}, model {np.shape(leaf)}")
        else:
            report["loaded"].append(name)
    loaded = set(report["loaded"])
    nnx.update(model, jax.tree_util.tree_map_with_path(
        lambda path, leaf: np.asarray(source[_name(path)], leaf.dtype) if _name(path) in loaded else leaf,
        params))
    return report


def resolve_step_dir(path: str | Path) -> Path:
    """Step directory from a step dir, a checkpoints dir or a workdir (best, else latest)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if (path / "state").is_dir():
        return path
    if (path / "checkpoints").is_dir():
        path = path / "checkpoints"
    manager = ocp.CheckpointManager(path.absolute(), options=ocp.CheckpointManagerOptions(read_only=True))
    step = best_step(manager)
    if step is None:
        raise FileNotFoundError(f"no checkpoint found in {path}")
    return path.absolute() / str(step)
