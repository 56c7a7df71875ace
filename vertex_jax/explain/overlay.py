"""Overlay pictures: the original image with a heat-map blended in and boxes drawn on it."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

REGION_COLOUR = (255, 255, 255)  # BGR: the map's region around its peak
TRUTH_COLOUR = (0, 220, 0)  # fractured vertebrae, where known


def overlay(original: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4,
            region: Sequence[float] | None = None,
            truth: Sequence[Sequence[float]] = ()) -> np.ndarray:
    """BGR uint8 picture: the original (min-max to 8 bits) with a JET heat-map blended in,
    the ``region`` box (x0, y0, x1, y1) in white and ``truth`` boxes in green."""
    grey = cv2.normalize(original.astype(np.float32), None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    colour = cv2.applyColorMap(np.clip(heatmap * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
    weight = (alpha * heatmap)[..., None]
    out = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR) * (1 - weight) + colour * weight
    out = np.clip(out, 0, 255).astype(np.uint8)
    thickness = max(1, round(max(out.shape[:2]) / 300))
    for box, col in [(b, TRUTH_COLOUR) for b in truth] + ([(region, REGION_COLOUR)] if region else []):
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        cv2.rectangle(out, (x0, y0), (x1 - 1, y1 - 1), col, thickness)
    return out


def save_png(path: str | Path, picture: np.ndarray) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), picture):
        raise OSError(f"cannot write {path}")
    return path
