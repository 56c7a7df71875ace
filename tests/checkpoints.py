"""A checkpoint written by the training code's own writer without training: the tiny
config's model with randomised BatchNorm statistics (so a statistic lost on the way shows),
for the export, calibration and explanation tests."""

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

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


def write_checkpoint(workdir: Path, step: int = 3, canvas: tuple[int, int] = CANVAS, **model: str) -> Path:
    """``workdir/checkpoints/<step>`` for the tiny config with ``model`` overrides; returns workdir."""
    config = get_config("tiny")
    config.tasks = ",".join(TASKS)
    config.model.update(model)
    net = build_model(config, seed=1)
    randomise_batch_stats(net)
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
