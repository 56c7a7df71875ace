"""A trained model ready to score images: weights, tasks, clinical statistics, preprocessing.

``load_trained(path)`` accepts a run's workdir, its ``checkpoints`` directory or one step
directory (a workdir or checkpoints directory gives the best step, else the latest). The
step's ``card`` item carries everything inference needs besides the arrays, so a copied
step directory is enough; it also holds the calibration fitted on the validation split
(:mod:`vertex_jax.calibrate`), which the scorer applies.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from ml_collections import ConfigDict

from vertex_jax import mesh as meshlib
from vertex_jax import runs
from vertex_jax.calibrate import Calibration
from vertex_jax.data.clinical import ClinicalStats
from vertex_jax.data.preprocess import PreprocessConfig
from vertex_jax.models.build import build_model, vertebra_spec
from vertex_jax.models.vertex import VertexNet
from vertex_jax.errors import InputDataError

if TYPE_CHECKING:  # the vertebra code is imported where a model has the head
    from vertex_jax.vertebrae.targets import HeadSpec


@dataclasses.dataclass
class TrainedModel:
    """A model in evaluation mode and what its inputs must look like."""

    model: VertexNet
    tasks: tuple[str, ...]
    stats: ClinicalStats
    preprocess: PreprocessConfig
    checkpoint: Path  # the step directory
    step: int
    config: ConfigDict
    card: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.checkpoint)

    @property
    def vertebra_spec(self) -> HeadSpec | None:
        """The vertebra head's grid and channel layout (what decoding its map needs); None
        for a model without the head."""
        return vertebra_spec(self.config) if self.model.vertebra_head is not None else None

    @property
    def calibration(self) -> Calibration | None:
        """The calibration stored in the card, or None (probabilities are then the sigmoid)."""
        return Calibration.from_card(self.card)

    def scorer(self, mesh: jax.sharding.Mesh | None = None, *, vertebrae: bool = False
               ) -> Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, ...]]:
        """Batched scoring on every device of ``mesh`` (default: all): host arrays in,
        (probabilities, logits) [n, tasks] out, the probabilities calibrated when the model
        has a calibration; pads to whole device batches itself. ``vertebrae`` (a model with
        the vertebra head): the head's raw map [n, h, w, channels] as a third output."""
        if vertebrae and self.model.vertebra_head is None:
            raise ValueError(f"{self.name} has no vertebra head (model.vertebrae is off)")
        mesh = mesh or meshlib.make_mesh()
        graphdef, state = nnx.split(self.model)
        state = jax.device_put(state, meshlib.replicated(mesh))

        def forward(s: nnx.State, *x: jax.Array):
            net = nnx.merge(graphdef, s)
            if not vertebrae:
                return net(*x).astype(jnp.float32)
            out = net.outputs(*x)
            return out["logits"].astype(jnp.float32), out["vertebrae"]

        step = jax.jit(forward, in_shardings=(meshlib.replicated(mesh),) + (meshlib.batch_sharded(mesh),) * 3,
                       out_shardings=meshlib.replicated(mesh))
        devices = mesh.size
        calibration = self.calibration

        def score(image: np.ndarray, clinical: np.ndarray, mask: np.ndarray):
            n = len(image)
            pad = -n % devices
            arrays = [np.concatenate([a, np.zeros((pad, *a.shape[1:]), a.dtype)]) if pad else a
                      for a in (image, clinical, mask)]
            result = step(state, *arrays)
            logits = np.asarray(result[0] if vertebrae else result)[:n]
            if calibration is not None:
                probabilities = calibration.probabilities(logits, self.tasks).astype(np.float32)
            else:
                probabilities = 1.0 / (1.0 + np.exp(-logits))
            if vertebrae:
                return probabilities, logits, np.asarray(result[1])[:n]
            return probabilities, logits

        return score


def load_trained(path: str | Path) -> TrainedModel:
    """Load the parameters and BatchNorm statistics of a checkpoint into a fresh model."""
    step_dir = runs.resolve_step_dir(path)
    config = runs.with_defaults(runs.read_json_item(step_dir, "config"))
    card = runs.read_json_item(step_dir, "card")
    model = build_model(config, seed=0)
    report = runs.load_params(step_dir, model, kinds=(nnx.Param, nnx.BatchStat))
    problems = report["missing"] + report["mismatched"]
    if problems:
        raise InputDataError(f"checkpoint {step_dir} does not fit its own model: "
                         + "; ".join(problems[:10]))
    model.eval()
    return TrainedModel(model=model, tasks=tuple(card["tasks"]),
                        stats=ClinicalStats.from_dict(card["clinical_stats"]),
                        preprocess=PreprocessConfig.from_dict(card["preprocess"]),
                        checkpoint=step_dir, step=int(step_dir.name), config=config, card=card)
