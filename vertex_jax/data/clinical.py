"""Clinical inputs of the network: age, sex and BMI (their columns and plausible ranges),
normalised with training statistics.

Free of JAX and grain so the serving path (``predict --backend onnx``) can use it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pandas as pd

from vertex_jax.errors import InputDataError

CLINICAL = ("age", "sex", "bmi")  # manifest columns, in the order of the network's inputs
RANGES = {"age": (0.0, 120.0), "bmi": (8.0, 80.0)}  # plausible values; outside = a problem


@dataclasses.dataclass(frozen=True)
class ClinicalStats:
    """Mean and standard deviation of age, sex, BMI on the training split."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def fit(cls, df: pd.DataFrame) -> "ClinicalStats":
        values = df[list(CLINICAL)].to_numpy(np.float64)
        if np.isnan(values).all(axis=0).any():
            empty = [c for c, e in zip(CLINICAL, np.isnan(values).all(axis=0)) if e]
            raise InputDataError(f"no training values at all for clinical column(s) {empty}")
        mean = np.nanmean(values, axis=0)
        std = np.nanstd(values, axis=0)
        std = np.where(std > 0, std, 1.0)
        return cls(tuple(map(float, mean)), tuple(map(float, std)))

    def apply(self, df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(normalised values with missing = 0, presence mask), both float32 [n, 3]."""
        values = df[list(CLINICAL)].to_numpy(np.float64)
        present = ~np.isnan(values)
        normed = np.where(present, (values - np.array(self.mean)) / np.array(self.std), 0.0)
        return normed.astype(np.float32), present.astype(np.float32)

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ClinicalStats":
        return cls(tuple(d["mean"]), tuple(d["std"]))
