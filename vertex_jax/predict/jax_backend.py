"""The JAX backend of ``predict``: a training checkpoint, scored on every device."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vertex_jax.errors import InputDataError
from vertex_jax.inference import load_trained

if TYPE_CHECKING:  # the vertebra code is imported where a model has the head
    from vertex_jax.vertebrae.targets import HeadSpec


class JaxBackend:
    """Scores with a checkpoint (workdir, checkpoints dir or step dir) through JAX."""

    def __init__(self, checkpoint: str | Path):
        self.trained = load_trained(checkpoint)
        self.tasks = self.trained.tasks
        self.preprocess = self.trained.preprocess
        self.stats = self.trained.stats
        self.name = self.trained.name
        self.step = self.trained.step
        self.calibration = self.trained.calibration
        self.vertebrae: HeadSpec | None = self.trained.vertebra_spec  # None: no vertebra head
        self._score = self.trained.scorer()
        self._score_vertebrae = None  # built on first use: scores alone never run the head

    def score(self, image: np.ndarray, clinical: np.ndarray, clinical_mask: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
        return self._score(image, clinical, clinical_mask)

    def score_vertebrae(self, image: np.ndarray, clinical: np.ndarray, clinical_mask: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(probabilities, logits, the vertebra head's raw map [n, h, w, channels])."""
        if self.vertebrae is None:
            raise InputDataError(f"{self.name}: the model has no vertebra head (model.vertebrae is off)")
        if self._score_vertebrae is None:
            self._score_vertebrae = self.trained.scorer(vertebrae=True)
        return self._score_vertebrae(image, clinical, clinical_mask)
