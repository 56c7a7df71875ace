"""Explanations during prediction: overlays, per-image findings, localisation metrics.

``ExplainWriter`` is ``score_table``'s ``on_batch`` callback. For every image and task it maps
the saliency map onto the original pixels and records the peak, the region around it and,
when vertebra boxes are known, the level the peak names (columns for ``scores.csv``); it
writes one overlay PNG per image and task (with the vertebra head, the found vertebrae's
levels and grades drawn on it); for images with a fractured vertebra it scores the
pVF map (:mod:`vertex_jax.explain.localization`). With a re-initialised model it also runs
the model-randomisation check on the first images.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from vertex_jax.explain import localization as loc
from vertex_jax.explain.overlay import overlay, save_png
from vertex_jax.explain.review import thumbnail
from vertex_jax.explain.saliency import default_layers, make_saliency
from vertex_jax.predict.run import Prepared

if TYPE_CHECKING:
    from vertex_jax.vertebrae.decode import Detection

LOCALISED_TASKS = ("pvf",)  # tasks whose evidence has a place: the fractured vertebrae
RANDOMISATION_IMAGES = 32


def is_flat(saliency_map: np.ndarray, tolerance: float = 1e-6) -> bool:
    """Whether a map (normalised to [0, 1]) is empty or constant: it points nowhere."""
    return float(np.ptp(saliency_map)) <= tolerance


def overlay_name(image_id: str, task: str) -> str:
    return f"{image_id.replace('/', '__')}_{task}.png"


class ExplainWriter:
    """Maps, findings, overlay thumbnails and metrics of one prediction run (``out_dir``:
    overlays and ``localization.json``); ``vertebrae[image_id]``: the vertebrae found in an
    image, drawn on its overlays (filled before this writer is called for the image)."""

    def __init__(self, model, tasks: tuple[str, ...], image_ids: list[str], out_dir: str | Path,
                 *, method: str, layers: tuple[str, ...] | None = None,
                 boxes: dict[str, list[loc.Vertebra]] | None = None, overlays: bool = True,
                 random_model=None, vertebrae: Mapping[str, Sequence[Detection]] | None = None):
        self.out_dir = Path(out_dir)
        self.tasks = tuple(tasks)
        self.method, self.layers = method, tuple(layers or default_layers(method, model))
        self.saliency = make_saliency(model, self.tasks, method, self.layers)
        self.random = make_saliency(random_model, self.tasks, method, self.layers) if random_model else None
        self.image_ids = image_ids
        self.boxes = boxes or {}
        self.overlays = overlays
        self.vertebrae = vertebrae if vertebrae is not None else {}
        self.findings: dict[str, dict[str, Any]] = {}
        self.pictures: dict[tuple[str, str], str] = {}  # review.html thumbnails (data URIs)
        self.scored: dict[str, list[dict[str, Any]]] = {t: [] for t in self.tasks if t in LOCALISED_TASKS}
        self.correlations: dict[str, list[float]] = {t: [] for t in self.tasks}
        self.flat: dict[str, list[str]] = {t: [] for t in self.tasks}  # images with an empty map

    def __call__(self, items: list[Prepared], image: np.ndarray, clinical: np.ndarray,
                 mask: np.ndarray) -> None:
        maps, _ = self.saliency(image, clinical, mask)
        if self.random is not None and len(self.correlations[self.tasks[0]]) < RANDOMISATION_IMAGES:
            random_maps, _ = self.random(image, clinical, mask)
            for t, task in enumerate(self.tasks):
                self.correlations[task] += [loc.rank_correlation(a, b)
                                            for a, b in zip(maps[:, t], random_maps[:, t])]
        for item, per_task in zip(items, maps):
            self._one(item, per_task)

    def _one(self, item: Prepared, per_task: np.ndarray) -> None:
        image_id = self.image_ids[item.row]
        vertebrae = self.boxes.get(image_id, [])
        fractured = [v.box for v in vertebrae if v.fractured]
        tolerance = loc.TOLERANCE_CANVAS_PX / float(np.mean(item.geometry.scale))
        row: dict[str, Any] = {}
        for task, canvas_map in zip(self.tasks, per_task):
            if is_flat(canvas_map):  # nothing to point at: no peak, no region, no level
                row[f"{task}_map"] = "empty"
                self.flat[task].append(image_id)
                continue
            heat = item.geometry.heatmap_to_original(canvas_map)
            peak = loc.peak(heat)
            box = loc.region(heat, peak)
            row.update({f"{task}_peak_x": round(peak[0], 1), f"{task}_peak_y": round(peak[1], 1),
                        **{f"{task}_region_{k}": v for k, v in zip(("x0", "y0", "x1", "y1"), box)}})
            if vertebrae:
                row[f"{task}_level"] = loc.nearest_level(peak, vertebrae).level
            if task in self.scored and fractured:
                self.scored[task].append({"image_id": image_id,
                                          **loc.score_image(heat, vertebrae, tolerance)})
            if self.overlays:
                picture = overlay(item.original, heat, region=box, truth=fractured,
                                  vertebrae=self.vertebrae.get(image_id, ()))
                save_png(self.out_dir / overlay_name(image_id, task), picture)
                if uri := thumbnail(picture):
                    self.pictures[(image_id, task)] = uri
        self.findings[image_id] = row

    def findings_frame(self) -> pd.DataFrame:
        """One row per explained image (``image_id`` + the findings columns)."""
        rows = [{"image_id": k, **v} for k, v in self.findings.items()]
        return pd.DataFrame(rows) if rows else pd.DataFrame({"image_id": pd.Series(dtype=str)})

    def summary(self) -> dict[str, Any]:
        """What ``localization.json`` holds."""
        out: dict[str, Any] = {
            "method": self.method, "layers": list(self.layers),
            "tolerance": f"{loc.TOLERANCE_CANVAS_PX:g} canvas pixels, mapped to original pixels per image",
            "tasks": {task: {**loc.summarise(rows), "per_image": rows}
                      for task, rows in self.scored.items()},
            "empty_maps": {task: ids for task, ids in self.flat.items() if ids}}
        if self.random is not None:
            out["randomization"] = {
                task: {"images": len(c), "spearman_mean": float(np.mean(c)) if c else None,
                       "spearman_median": float(np.median(c)) if c else None}
                for task, c in self.correlations.items()}
        return out
