"""A training run's directory: where everything in it is, and reading it back.

The layout (the names of the files and folders) is :mod:`vertex_jax.run_layout`. Training writes checkpoints through :class:`vertex_jax.train.checkpoint.Checkpoints`; everything
that reads a run (inference, predict, evaluate, export, and training's ``init_from``) comes here.
The best checkpoint has one rule, :func:`improves`: training's progress and :func:`best_step`
both take the **earliest** step with the highest validation metric.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
import pandas as pd
from flax import nnx
from ml_collections import ConfigDict

from vertex_jax.data.prepare import synthetic_manifest_path
from vertex_jax.models.build import build_model
from vertex_jax.config_files import load_config
from vertex_jax.errors import MissingInputError
from vertex_jax.run_layout import (CARD_FILE, CHECKPOINTS, CONFIG_FILE, SUMMARY_FILE, THRESHOLDS_FILE, data_dir,
                                   evaluation_dir, splits_path)

NO_RUN_TODO = ("give a run's workdir, its checkpoints folder or one step folder "
               "(<workdir>/checkpoints/<step>) of a finished training run")

STATE = "state"          # the arrays item of a step directory
METRIC = "val_auroc"     # the validation metric saved with each step and ranked
JSON_ITEM_FILE = "metadata"  # the file name JsonCheckpointHandler gives a JSON item


def checkpoints_dir(workdir: str | Path) -> Path:
    return Path(workdir) / CHECKPOINTS


def config_path(workdir: str | Path) -> Path:
    return Path(workdir) / CONFIG_FILE


def card_path(workdir: str | Path) -> Path:
    return Path(workdir) / CARD_FILE


def summary_path(workdir: str | Path) -> Path:
    return Path(workdir) / SUMMARY_FILE


def thresholds_path(workdir: str | Path) -> Path:
    """The thresholds the run's evaluation chose (``evaluation/thresholds.json``)."""
    return evaluation_dir(workdir) / THRESHOLDS_FILE


def workdir_of(step_dir: str | Path) -> Path:
    """The run a step directory (``<workdir>/checkpoints/<step>``) belongs to."""
    return Path(step_dir).parent.parent


def with_defaults(saved: dict[str, Any]) -> ConfigDict:
    """A saved run config over the base config (``configs/xray.py``): a field added since
    the run was saved takes its default from the one home of defaults, not from the code."""
    def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
        out = dict(base)
        for key, value in over.items():
            out[key] = merge(base[key], value) if isinstance(base.get(key), dict) and isinstance(value, dict) \
                else value
        return out

    return ConfigDict(merge(load_config("xray").to_dict(), dict(saved)))


def read_config(workdir: str | Path) -> ConfigDict:
    """The run's ``config.json``."""
    path = config_path(workdir)
    if not path.exists():
        raise MissingInputError(f"{workdir} is not a training run (no {CONFIG_FILE})", todo=NO_RUN_TODO)
    return with_defaults(json.loads(path.read_text()))


def read_splits(workdir: str | Path) -> pd.DataFrame:
    """The run's ``splits.csv`` (image_id, patient_id, split), as text."""
    return pd.read_csv(splits_path(workdir), dtype=str)


def run_manifest(workdir: str | Path) -> Path:
    """The manifest a run trained on (the synthetic cohort's when none was configured)."""
    workdir = Path(workdir)
    data = read_config(workdir).data
    if data.manifest:
        return Path(data.manifest)
    return synthetic_manifest_path(data, data_dir(workdir, data.data_dir))


def improves(value: float, best: float) -> bool:
    """The best-checkpoint rule: a validation metric improves on the best so far only when
    strictly higher (NaN never does), so among tied steps the earliest stays the best."""
    return value > best


def earliest_best(scored: Iterable[tuple[int, float]]) -> int | None:
    """The step :func:`improves` leaves best when the ``(step, metric)`` pairs come in step
    order, as during training; None when no metric ever improves on -inf."""
    best, best_value = None, -math.inf
    for step, value in sorted(scored):
        if improves(value, best_value):
            best, best_value = step, value
    return best


def best_step(manager: ocp.CheckpointManager) -> int | None:
    """The earliest step with the highest validation metric, else the latest step.

    Reads the metrics each step saved, so it works with a read-only manager (whose own
    ``best_step`` would rank nothing and return the latest).
    """
    scored = [(step, m[METRIC]) for step in manager.all_steps()
              if (m := manager.metrics(step)) and METRIC in m]
    best = earliest_best(scored)
    return manager.latest_step() if best is None else best


# Orbax's notices when a finished run is opened read-only: how it is opened, not a problem.
_READ_NOTICES = re.compile(r"read_only=True|read only|Metadata file does not exist")


def _no_read_notices(record: logging.LogRecord) -> bool:
    return not (record.levelno == logging.WARNING and _READ_NOTICES.search(record.getMessage()))


@contextlib.contextmanager
def _quiet_read():
    """Drop Orbax's read-only notices (absl WARNING lines) while a run is read."""
    logger = logging.getLogger("absl")
    logger.addFilter(_no_read_notices)
    try:
        yield
    finally:
        logger.removeFilter(_no_read_notices)


@_quiet_read()
def resolve_step_dir(path: str | Path) -> Path:
    """Step directory from a step dir, a checkpoints dir or a workdir (best, else latest)."""
    path = Path(path)
    if not path.exists():
        raise MissingInputError(f"checkpoint {path} does not exist", todo=NO_RUN_TODO)
    if (path / STATE).is_dir():
        return path
    if checkpoints_dir(path).is_dir():
        path = checkpoints_dir(path)
    manager = ocp.CheckpointManager(path.absolute(), options=ocp.CheckpointManagerOptions(read_only=True))
    step = best_step(manager)
    if step is None:
        raise MissingInputError(f"no checkpoint found in {path}", todo=NO_RUN_TODO)
    return path.absolute() / str(step)


@_quiet_read()
def read_json_item(step_dir: str | Path, item: str) -> dict:
    """A JSON item (``config``, ``card``, ``progress``) of a checkpoint step."""
    step_dir = Path(step_dir)
    if not (step_dir / item).exists():
        raise MissingInputError(f"{step_dir} has no {item!r} item; is it a vertex_jax checkpoint?", todo=NO_RUN_TODO)
    return ocp.JsonCheckpointHandler().restore(step_dir / item)


def write_json_item(step_dir: str | Path, item: str, value: dict) -> None:
    """Replace a JSON item of a finished step atomically (the arrays are not touched): the
    file Orbax's ``JsonCheckpointHandler`` wrote, ``<step>/<item>/metadata``."""
    from vertex_jax.files import write_text

    path = Path(step_dir) / item / JSON_ITEM_FILE
    if not path.is_file():
        raise MissingInputError(f"{path} not found; is {step_dir} a finished vertex_jax checkpoint?", todo=NO_RUN_TODO)
    write_text(path, json.dumps(value))


@_quiet_read()
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


def model_arrays(step_dir: str | Path) -> dict[str, np.ndarray]:
    """Every array of a step's model (parameters, BatchNorm statistics; not the RNG state),
    by name: what two runs are compared on."""
    model = restore_arrays(Path(step_dir) / STATE)["0"]  # the (model, optimizer) pair
    return {f"/{k}": np.asarray(v) for k, v in _flat(model).items() if "rngs" not in k}


def _name(path: tuple) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def _flat(tree: Any) -> dict[str, Any]:
    return {_name(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def load_params(checkpoint: str | Path, model: nnx.Module, kinds: Any = nnx.Param
                ) -> dict[str, list[str]]:
    """Copy variables of ``kinds`` (default: parameters) from a run's checkpoint into
    ``model``, by name.

    ``checkpoint`` is a step directory, a run's ``checkpoints`` directory or its workdir
    (best step, else latest). Returns what was ``loaded``, ``missing`` from the checkpoint,
    ``unexpected`` in it and ``mismatched`` in shape, for the caller to report.
    """
    step_dir = resolve_step_dir(checkpoint)
    saved = with_defaults(read_json_item(step_dir, "config"))
    source_model = nnx.eval_shape(lambda: build_model(saved, seed=0))
    source_names = set(_flat(nnx.state(source_model, kinds)))
    raw = _flat(restore_arrays(step_dir / STATE))
    # The state item is the (model, optimizer) pair: the model's arrays are under "0/".
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
