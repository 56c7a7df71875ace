"""``<out>_vertebrae.csv``: one row per vertebra the head finds, in original-image pixels.

:class:`VertebraTable` is :func:`~vertex_jax.predict.run.score_table`'s ``vertebrae``
callback: it decodes each batch's raw head map
(:func:`vertex_jax.vertebrae.decode.decode_outputs`) through each image's preprocessing
geometry (border crop, resize, padding undone), keeps the detections per image id
(:attr:`VertebraTable.found`, which the overlays read) and, once the scores are final, gives
the rows of the images that were scored (:meth:`VertebraTable.frame`).

Columns (:data:`COLUMNS` after the image's identifier columns of scores.csv: ``image_id``,
``patient_id``, the DICOM identifiers, ``path``): ``order`` (1 = topmost), ``level`` (T4..L4,
named from the spine's order; blank when left unnamed) and ``level_prob``, the box ``x0, y0,
x1, y1``, ``score`` (the heat-map peak), ``grade`` (the learned Genant grade, the most probable)
with ``grade_prob_0`` .. ``grade_prob_3``, ``fracture_prob`` (1 − p(grade 0)), the six endplate
points ``<point>_x, <point>_y``, the heights ``ha, hm, hp`` between them, ``height_loss``
(1 − min/max) and ``measured_grade`` (Genant by measurement). Pixel values are rounded to
0.01. The level, box, grade and point columns are an annotation CSV's, so the file reads
back with :func:`vertex_jax.vertebrae.annotations.read_annotations`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd

from vertex_jax.data.dicom_ids import COLUMNS as IDENTIFIERS
from vertex_jax.vertebrae import genant
from vertex_jax.vertebrae.annotations import BOX_COLUMNS, POINT_COLUMNS
from vertex_jax.vertebrae.decode import Detection, decode_outputs
from vertex_jax.vertebrae.levels import LEVELS
from vertex_jax.vertebrae.targets import HeadSpec

if TYPE_CHECKING:
    from vertex_jax.predict.run import Prepared

GRADES = 4
COLUMNS = ("order", "level", "level_prob", *BOX_COLUMNS, "score", "grade",
           *(f"grade_prob_{g}" for g in range(GRADES)), "fracture_prob", *POINT_COLUMNS,
           "ha", "hm", "hp", "height_loss", "measured_grade")
PIXELS = 2  # decimals of pixel coordinates and heights


def vertebrae_path(out: str | Path) -> Path:
    """``<out>_vertebrae.csv`` beside the scores CSV ``out``."""
    out = Path(out)
    return out.with_name(f"{out.stem}_vertebrae.csv")


def measurement(points: Sequence[Sequence[float]]) -> tuple[np.ndarray, float, int | None]:
    """(heights Ha, Hm, Hp; height loss; measured grade) of six endplate points, the loss NaN
    and the grade None when the points give no height."""
    heights = genant.heights(np.asarray(points, np.float64))
    if heights.max() <= 0:
        return heights, float("nan"), None
    loss = float(genant.height_loss(heights))
    return heights, loss, int(genant.grade_from_loss(loss))


def detection_row(order: int, det: Detection) -> dict[str, Any]:
    """The :data:`COLUMNS` of one detection (``order``: its place from the top, from 1)."""
    row: dict[str, Any] = {"order": order, "level": det.level or "",
                           "level_prob": det.level_probabilities[LEVELS.index(det.level)] if det.level else np.nan,
                           **{c: round(v, PIXELS) for c, v in zip(BOX_COLUMNS, det.box)},
                           "score": det.score, "grade": det.grade,
                           **{f"grade_prob_{g}": p for g, p in enumerate(det.grade_probabilities)},
                           "fracture_prob": det.fracture_probability}
    if det.points is None:
        return {**row, **dict.fromkeys((*POINT_COLUMNS, "ha", "hm", "hp", "height_loss"), np.nan),
                "measured_grade": None}
    heights, loss, grade = measurement(det.points)
    row.update({c: round(v, PIXELS) for c, v in zip(POINT_COLUMNS, np.ravel(det.points))})
    row.update({c: round(float(h), PIXELS) for c, h in zip(("ha", "hm", "hp"), heights)})
    return {**row, "height_loss": loss, "measured_grade": grade}


class VertebraTable:
    """The vertebrae of one prediction run: ``spec`` the head's grid and layout,
    ``image_ids[row]`` the id of the input table's row, ``options`` for
    :func:`~vertex_jax.vertebrae.decode.decode` (``threshold``, level costs, ...)."""

    def __init__(self, spec: HeadSpec, image_ids: Sequence[str], **options: Any):
        self.spec, self.image_ids, self.options = spec, list(image_ids), options
        self.found: dict[str, list[Detection]] = {}  # image id -> detections, top to bottom

    @classmethod
    def for_backend(cls, backend: Any, image_ids: Sequence[str]) -> VertebraTable | None:
        """The collector for a backend with the vertebra head (its ``vertebrae`` spec), else None."""
        spec = getattr(backend, "vertebrae", None)
        return None if spec is None else cls(spec, image_ids)

    def __call__(self, items: Sequence[Prepared], raw: np.ndarray) -> None:
        found = decode_outputs(raw, self.spec, [it.geometry for it in items], **self.options)
        self.found.update((self.image_ids[it.row], dets) for it, dets in zip(items, found))

    def frame(self, scores: pd.DataFrame) -> pd.DataFrame:
        """One row per vertebra of the images in ``scores`` (scores.csv), in its order."""
        ids = [c for c in ("image_id", "patient_id", *IDENTIFIERS, "path") if c in scores.columns]
        rows = [{**image, **detection_row(k, det)} for image in scores[ids].to_dict("records")
                for k, det in enumerate(self.found.get(image["image_id"], []), start=1)]
        frame = pd.DataFrame(rows, columns=[*ids, *COLUMNS])
        return frame.astype({"order": int, "grade": int, "measured_grade": "Int64"})


def write_vertebrae(out: str | Path, frame: pd.DataFrame | None) -> str | None:
    """Write ``<out>_vertebrae.csv`` (a model without the head: remove a previous run's) and
    return the console line, or None."""
    path = vertebrae_path(out)
    path.unlink(missing_ok=True)  # a previous run's file would mislead
    if frame is None:
        return None
    frame.to_csv(path, index=False)
    graded = int((frame["grade"] >= 1).sum())
    return (f"{len(frame)} vertebra(e) found in {frame['image_id'].nunique()} image(s), {graded} "
            f"graded 1-3 by the model -> {path}")
