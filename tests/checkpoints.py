"""A checkpoint written by the training code's own writer without training: the tiny
config's model with randomised BatchNorm statistics (so a statistic lost on the way shows),
for the export, calibration and explanation tests; with the vertebra head, its output layer
set so that the untrained model finds vertebrae (:func:`finding_vertebrae`)."""

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import grain
import jax
import numpy as np
import pandas as pd
from flax import nnx

from configs.xray import get_config
from vertex_jax.data.clinical import ClinicalStats
from vertex_jax.data.preprocess import PreprocessConfig
from vertex_jax.models.build import build_model
from vertex_jax.train.checkpoint import Checkpoints
from vertex_jax.train.loop import Progress, model_card
from vertex_jax.train.state import TrainState, build_optimizer
from vertex_jax.vertebrae.targets import HeadSpec

CANVAS = (64, 32)
TASKS = ("pvf", "osteo")
STATS = ClinicalStats((70.0, 0.6, 24.0), (8.0, 0.5, 3.5))


def randomise_batch_stats(model, seed: int = 0) -> None:
    """BatchNorm statistics away from their (0, 1) initial values, as after training."""
    rng = np.random.default_rng(seed)

    def draw(path, x):
        is_var = "var" in [getattr(k, "key", None) for k in path]
        values = rng.uniform(0.5, 2.0, x.shape) if is_var else rng.normal(0.0, 0.2, x.shape)
        return values.astype(np.float32)

    nnx.update(model, jax.tree_util.tree_map_with_path(draw, nnx.state(model, nnx.BatchStat)))


def finding_vertebrae(model, seed: int = 0) -> None:
    """Set the vertebra head's output layer so that an untrained model finds vertebrae: random
    weights of a size that makes every channel vary from cell to cell (distinct heat-map peaks,
    levels, grades), biases for a heat-map above the decoding threshold, boxes 3 x 2.5 cells and
    endplate points at the box's corners and middles (heights that differ, so grades by
    measurement do too)."""
    points = [(x, y) for y in (-1.1, 1.1) for x in (-1.3, 0.0, 1.3)]  # superior/inferior x A/M/P, cells
    settings = {"heat": (6.0, 1.0), "size": (0.5, (3.0, 2.5)), "offset": (0.5, 0.5),  # (spread, bias)
                "points": (0.2, np.ravel(points)), "level": (8.0, 0.0), "grade": (6.0, (1.0, 0.0, 0.0, 0.0))}
    out = model.vertebra_head.output
    spread, bias = np.zeros(out.bias.shape), np.zeros(out.bias.shape)
    for name, part in HeadSpec().slices().items():
        spread[part], bias[part] = settings[name]
    rng = np.random.default_rng(seed)
    out.kernel[...] = (rng.normal(0.0, 1.0, out.kernel.shape) * spread).astype(np.float32)
    out.bias[...] = bias.astype(np.float32)


def write_checkpoint(workdir: Path, step: int = 3, canvas: tuple[int, int] = CANVAS,
                     prepare: Callable[[Any], None] | None = None, **model: Any) -> Path:
    """``workdir/checkpoints/<step>`` for the tiny config with ``model`` overrides, ``prepare``
    applied to the model before it is saved; returns workdir."""
    config = get_config("tiny")
    config.tasks = ",".join(TASKS)
    config.model.update(model)
    net = build_model(config, seed=1)
    randomise_batch_stats(net)
    if prepare is not None:
        prepare(net)
    state = TrainState.create(net, build_optimizer(config, steps_per_epoch=1)).state
    frame = pd.DataFrame({"patient_id": ["P0", "P0", "P1", "P2"], "split": ["train", "train", "train", "val"],
                          "pvf": [1.0, 0.0, np.nan, 1.0], "osteo": [0.0, 0.0, 1.0, np.nan]})
    data = SimpleNamespace(tasks=TASKS, stats=STATS, frame=frame, manifest=Path("synthetic/manifest.csv"),
                           cache=SimpleNamespace(config=PreprocessConfig(canvas=canvas)))
    ckpt = Checkpoints(workdir / "checkpoints")
    ckpt.save(step, state, iter(grain.MapDataset.range(4).to_iter_dataset()),
              dataclasses.asdict(Progress(step=step)), json.loads(config.to_json_best_effort()),
              model_card(config, data), {"val_auroc": 0.5})
    ckpt.wait()
    ckpt.close()
    return workdir
