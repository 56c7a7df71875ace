"""Overlay pictures: the original image with a heat-map blended in and boxes drawn on it;
with the vertebra head, each found vertebra's level beside it and the graded ones outlined."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import cv2
import numpy as np

if TYPE_CHECKING:
    from vertex_jax.vertebrae.decode import Detection

REGION_COLOUR = (255, 255, 255)  # BGR: the map's region around its peak
TRUTH_COLOUR = (0, 220, 0)  # fractured vertebrae, where known
LABEL_COLOUR = (210, 210, 210)  # the level of a vertebra graded 0
GRADE_COLOURS = {1: (0, 230, 255), 2: (0, 140, 255), 3: (0, 0, 255)}  # Genant 1 yellow, 2 orange, 3 red


def overlay(original: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4,
            region: Sequence[float] | None = None,
            truth: Sequence[Sequence[float]] = (), vertebrae: Sequence[Detection] = ()) -> np.ndarray:
    """BGR uint8 picture: the original (min-max to 8 bits) with a JET heat-map blended in,
    the ``region`` box (x0, y0, x1, y1) in white, ``truth`` boxes in green and the found
    ``vertebrae`` labelled (:func:`draw_vertebrae`)."""
    grey = cv2.normalize(original.astype(np.float32), None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    colour = cv2.applyColorMap(np.clip(heatmap * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
    weight = (alpha * heatmap)[..., None]
    out = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR) * (1 - weight) + colour * weight
    out = np.clip(out, 0, 255).astype(np.uint8)
    thickness = max(1, round(max(out.shape[:2]) / 300))
    for box, col in [(b, TRUTH_COLOUR) for b in truth] + ([(region, REGION_COLOUR)] if region else []):
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        cv2.rectangle(out, (x0, y0), (x1 - 1, y1 - 1), col, thickness)
    draw_vertebrae(out, vertebrae, thickness)
    return out


def draw_vertebrae(picture: np.ndarray, vertebrae: Sequence[Detection], thickness: int = 1) -> np.ndarray:
    """Label each vertebra with its level (``?`` unnamed) left of its box (right of it at the
    image's edge), and outline each one graded 1-3 by the model in its grade's colour
    (:data:`GRADE_COLOURS`, the label then ``L1 G2``); draws into ``picture`` and returns it."""
    scale = max(0.3, max(picture.shape[:2]) / 1600)
    for det in vertebrae:
        x0, y0, x1, y1 = (int(round(v)) for v in det.box)
        colour = GRADE_COLOURS.get(det.grade, LABEL_COLOUR)
        if det.grade in GRADE_COLOURS:
            cv2.rectangle(picture, (x0, y0), (x1 - 1, y1 - 1), colour, thickness)
        text = (det.level or "?") + (f" G{det.grade}" if det.grade in GRADE_COLOURS else "")
        (w, h), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        x = x0 - w - 3 * thickness if x0 - w - 3 * thickness >= 0 else x1 + 3 * thickness
        cv2.putText(picture, text, (x, (y0 + y1 + h) // 2), cv2.FONT_HERSHEY_SIMPLEX, scale, colour,
                    thickness, cv2.LINE_AA)
    return picture


def save_png(path: str | Path, picture: np.ndarray) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), picture):
        raise OSError(f"cannot write {path}")
    return path
