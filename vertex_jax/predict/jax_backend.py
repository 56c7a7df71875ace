"""The JAX backend of ``predict``: a training checkpoint, scored on every device."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vertex_jax.inference import load_trained


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
        self._score = self.trained.scorer()

    def score(self, image: np.ndarray, clinical: np.ndarray, clinical_mask: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
        return self._score(image, clinical, clinical_mask)
