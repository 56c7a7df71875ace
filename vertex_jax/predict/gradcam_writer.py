"""Grad-CAM overlays during prediction, and the pointing game where boxes are known."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from vertex_jax import gradcam
from vertex_jax.predict.run import Prepared


class GradCamWriter:
    """``on_batch`` callback: one overlay PNG per image and task under ``out_dir``.

    With ``annotations`` (the synthetic cohort's ``annotations.json``: image_id -> vertebrae
    with ``box`` (x0, y0, x1, y1) and ``fractured``), the pVF heat-map peak of every image
    with a fractured vertebra is checked against those boxes (the pointing game).
    """

    def __init__(self, model, tasks: tuple[str, ...], image_ids: list[str], out_dir: str | Path,
                 annotations: str | Path | None = None, overlays: bool = True):
        self.out_dir = Path(out_dir)
        self.tasks = tuple(tasks)
        self.cam = gradcam.make_gradcam(model, self.tasks)
        self.image_ids = image_ids
        self.overlays = overlays
        self.boxes = {}
        if annotations:
            records = json.loads(Path(annotations).read_text())
            self.boxes = {k: [v["box"] for v in vs if v.get("fractured")] for k, vs in records.items()}
        self.hits: dict[str, bool] = {}

    def __call__(self, items: list[Prepared], image: np.ndarray, clinical: np.ndarray,
                 mask: np.ndarray) -> None:
        maps, _ = self.cam(image, clinical, mask)
        for item, per_task in zip(items, maps):
            image_id = self.image_ids[item.row]
            for task, m in zip(self.tasks, per_task):
                heat = gradcam.to_original(m, item.geometry)
                if self.overlays:
                    name = image_id.replace("/", "__")
                    gradcam.save_overlay(self.out_dir / f"{name}_{task}.png", item.original, heat)
                if task == "pvf" and self.boxes.get(image_id):
                    self.hits[image_id] = gradcam.pointing_hit(heat, self.boxes[image_id])

    def summary(self) -> dict:
        n = len(self.hits)
        return {"pointing_game_images": n,
                "pointing_game_accuracy": (sum(self.hits.values()) / n) if n else None,
                "hits": self.hits}
