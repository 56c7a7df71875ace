"""The per-vertebra section of an evaluation: ``<out>_vertebrae.csv`` rows read back as
detections and scored against the annotations on one split.

:func:`detections_from_frame` turns the table ``predict`` writes (one row per found vertebra,
:mod:`vertex_jax.predict.vertebra_table`) back into :class:`~vertex_jax.vertebrae.decode.Detection`
records; :func:`vertebra_section` evaluates them (:func:`vertex_jax.vertebrae.metrics.evaluate`,
patient bootstrap) on the annotated images of a split of scores.csv, with the image head's
pVF AUROC on the same images beside "any vertebra fractured".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from vertex_jax.errors import InputDataError
from vertex_jax.evaluate.intervals import LEVEL
from vertex_jax.evaluate.roc import auroc
from vertex_jax.vertebrae import metrics
from vertex_jax.vertebrae.annotations import BOX_COLUMNS, POINT_COLUMNS, Vertebra
from vertex_jax.vertebrae.decode import Detection
from vertex_jax.vertebrae.levels import LEVELS

GRADE_COLUMNS = tuple(f"grade_prob_{g}" for g in range(4))
REQUIRED = ("image_id", "level", *BOX_COLUMNS, "score", "grade", *GRADE_COLUMNS)


def detections_from_frame(frame: pd.DataFrame) -> dict[str, list[Detection]]:
    """Detections per image id from a ``<out>_vertebrae.csv`` table, in its row order. The
    named level's probability (``level_prob``) is the only one the table keeps: the other
    levels' are 0."""
    if missing := [c for c in REQUIRED if c not in frame.columns]:
        raise InputDataError(f"the vertebra table lacks column(s) {missing}; expected the file "
                             "predict writes beside its scores (<out>_vertebrae.csv)")
    has_points = all(c in frame.columns for c in POINT_COLUMNS)
    out: dict[str, list[Detection]] = {}
    for row in frame.to_dict("records"):
        level = row["level"] if isinstance(row["level"], str) and row["level"] in LEVELS else None
        level_probs = np.zeros(len(LEVELS))
        if level is not None:
            level_probs[LEVELS.index(level)] = float(row.get("level_prob", np.nan))
        points = None
        if has_points and not any(pd.isna(row[c]) for c in POINT_COLUMNS):
            xy = [float(row[c]) for c in POINT_COLUMNS]
            points = tuple(zip(xy[0::2], xy[1::2]))
        out.setdefault(str(row["image_id"]), []).append(Detection(
            box=tuple(float(row[c]) for c in BOX_COLUMNS), score=float(row["score"]), level=level,
            level_probabilities=tuple(level_probs), grade=int(row["grade"]),
            grade_probabilities=tuple(float(row[c]) for c in GRADE_COLUMNS), points=points))
    return out


def vertebra_section(found: pd.DataFrame, annotations: Mapping[str, Sequence[Vertebra]],
                     scores: pd.DataFrame, *, split: str = "test", bootstrap: int = 2000, seed: int = 0,
                     iou_threshold: float = 0.5, level: float = LEVEL) -> dict:
    """Per-vertebra metrics of ``found`` (the vertebra table) on the images of ``scores``
    (scores.csv) in ``split`` ('all': every row) that have an entry in ``annotations``; images
    without one are counted and left out. Adds ``image_head_pvf_auroc``: the image head's
    ``pvf_prob`` against "any vertebra fractured" on the same images, beside the vertebra
    head's ``image_auroc``."""
    rows = scores if split == "all" else scores[scores["split"] == split]
    if rows.empty:
        raise InputDataError(f"no images of split '{split}' in the scores for the vertebra section")
    ids = [str(i) for i in rows["image_id"]]
    annotated = [i for i in ids if i in annotations]
    if not annotated:
        raise InputDataError(f"none of the {len(ids)} images of split '{split}' has vertebra "
                             "annotations: pass the annotations file the model was trained with")
    detections = detections_from_frame(found)
    truth = {i: list(annotations[i]) for i in annotated}
    patients = dict(zip(rows["image_id"].astype(str), rows["patient_id"].astype(str)))
    section = metrics.evaluate(truth, {i: detections.get(i, []) for i in annotated}, patients=patients,
                               iou_threshold=iou_threshold, n_boot=bootstrap, seed=seed, level=level)
    section.update(split=split, iou_threshold=iou_threshold, unannotated_images=len(ids) - len(annotated))
    if "pvf_prob" in rows.columns:
        by_id = rows.set_index(rows["image_id"].astype(str))["pvf_prob"]
        y = np.array([any(bool(v.fractured) for v in truth[i]) for i in annotated])
        section["image_head_pvf_auroc"] = auroc(y, by_id.loc[annotated].to_numpy(np.float64))
    return section
