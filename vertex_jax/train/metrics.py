"""Validation metrics and where training metrics go (metrics.jsonl + TensorBoard)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np
from sklearn.metrics import roc_auc_score


def auroc_per_task(labels: np.ndarray, probs: np.ndarray, mask: np.ndarray,
                   tasks: Sequence[str]) -> dict[str, float]:
    """AUROC per task over examples with a known label (NaN when one class is absent)."""
    out = {}
    for t, name in enumerate(tasks):
        known = mask[:, t] > 0
        y = labels[known, t]
        out[name] = float(roc_auc_score(y, probs[known, t])) if 0 < y.sum() < len(y) else math.nan
    return out


class MetricWriter:
    """Appends ``{"step": s, ...}`` lines to ``metrics.jsonl`` and TensorBoard scalars."""

    def __init__(self, workdir: str | Path, enabled: bool = True):
        self.enabled = enabled
        if enabled:
            from tensorboardX import SummaryWriter

            self._jsonl = open(Path(workdir) / "metrics.jsonl", "a")
            self._tb = SummaryWriter(str(Path(workdir) / "tensorboard"))

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        self._jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
        self._jsonl.flush()
        for name, value in scalars.items():
            self._tb.add_scalar(name, value, step)

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()
