"""Per-vertebra and per-image metrics of found vertebrae, with bootstrap 95% intervals.

Detections are matched to the annotated vertebrae of their image greedily by score: the
highest-scoring detection first takes the unmatched annotation it overlaps most, if that
intersection over union is at least ``iou`` (0.5); each is matched at most once.

- ``recall``: matched annotations / annotations; ``precision``: matched detections /
  detections (pooled over images);
- ``level_accuracy``: matched vertebrae whose named level is the annotated one, among matched
  vertebrae with an annotated level;
- ``fracture_auroc`` and ``sensitivity_at_90_specificity``: per annotated vertebra with a
  known fracture status, the matched detection's ``fracture_probability`` (a missed vertebra
  scores 0: it was not reported); the sensitivity is the highest reached at a threshold whose
  specificity is at least 0.90;
- ``grade_kappa``: quadratic-weighted Cohen's κ of the annotated against the detected Genant
  grade (a missed vertebra is graded 0), per annotated vertebra with a grade;
- ``image_auroc``: any annotated vertebra fractured against the largest fracture probability
  of the image's detections (0 without any).

Intervals: percentile bootstrap over images, or over patients when ``patients`` maps image
ids to patient ids (a patient's images are drawn together), ``n_boot`` resamples drawn as
counts (:func:`vertex_jax.evaluate.intervals.resample_counts`) that weight every statistic.
AUROC is scikit-learn's (:func:`vertex_jax.evaluate.roc.auroc`), κ is
``sklearn.metrics.cohen_kappa_score(weights="quadratic")``.
"""

from __future__ import annotations

import warnings
from typing import Mapping, Sequence

import numpy as np
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import cohen_kappa_score, roc_curve

from vertex_jax.evaluate.intervals import LEVEL, percentile_interval, resample_counts, rng_for
from vertex_jax.evaluate.roc import auroc
from vertex_jax.vertebrae.annotations import GRADES, Vertebra
from vertex_jax.vertebrae.decode import Detection

SPECIFICITY = 0.90
METRICS = ("recall", "precision", "level_accuracy", "fracture_auroc",
           "sensitivity_at_90_specificity", "grade_kappa", "image_auroc")


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def match(truth: Sequence[Vertebra], found: Sequence[Detection], threshold: float = 0.5
          ) -> list[tuple[int, int]]:
    """(annotation index, detection index) pairs, greedy by detection score (ties: input order)."""
    taken: set[int] = set()
    pairs = []
    for k in sorted(range(len(found)), key=lambda k: -found[k].score):
        best, best_iou = None, threshold
        for t, v in enumerate(truth):
            if t not in taken and (o := iou(v.box, found[k].box)) >= best_iou:
                best, best_iou = t, o
        if best is not None:
            taken.add(best)
            pairs.append((best, k))
    return sorted(pairs)


def _tables(truth: Mapping[str, Sequence[Vertebra]], found: Mapping[str, Sequence[Detection]],
            threshold: float) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per-vertebra and per-image arrays (each row keeps its image's index)."""
    if extra := sorted(set(found) - set(truth)):
        raise ValueError(f"detections for images without annotations: {extra[:5]}")
    rows: dict[str, list] = {k: [] for k in ("image", "matched", "level_known", "level_hit",
                                             "y", "p", "grade_true", "grade_pred")}
    images: dict[str, list] = {k: [] for k in ("n_truth", "n_found", "y", "p")}
    for n, image_id in enumerate(truth):
        vs, ds = list(truth[image_id]), list(found.get(image_id, ()))
        by_truth = dict(match(vs, ds, threshold))
        for t, v in enumerate(vs):
            d = ds[by_truth[t]] if t in by_truth else None
            rows["image"].append(n)
            rows["matched"].append(d is not None)
            rows["level_known"].append(d is not None and v.level is not None)
            rows["level_hit"].append(d is not None and v.level is not None and d.level == v.level)
            rows["y"].append(-1 if v.fractured is None else int(v.fractured))
            rows["p"].append(0.0 if d is None else d.fracture_probability)
            rows["grade_true"].append(-1 if v.grade is None else v.grade)
            rows["grade_pred"].append(0 if d is None else d.grade)
        images["n_truth"].append(len(vs))
        images["n_found"].append(len(ds))
        images["y"].append(any(bool(v.fractured) for v in vs))
        images["p"].append(max((d.fracture_probability for d in ds), default=0.0))
    return ({k: np.asarray(v) for k, v in rows.items()}, {k: np.asarray(v) for k, v in images.items()})


def _ratio(hits: np.ndarray, w: np.ndarray) -> float:
    total = float(w.sum())
    return float((hits * w).sum()) / total if total > 0 else float("nan")


def _auroc(y: np.ndarray, p: np.ndarray, w: np.ndarray) -> float:
    keep = w > 0
    return auroc(y[keep], p[keep], sample_weight=w[keep])


def _sensitivity_at(y: np.ndarray, p: np.ndarray, w: np.ndarray, specificity: float) -> float:
    keep = w > 0
    y, p, w = y[keep].astype(bool), p[keep], w[keep]
    if y.all() or not y.any():
        return float("nan")
    fpr, tpr, _ = roc_curve(y, p, sample_weight=w, drop_intermediate=False)
    return float(tpr[fpr <= 1.0 - specificity + 1e-12].max())


def _kappa(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> float:
    keep = w > 0
    if not keep.any():
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        value = cohen_kappa_score(a[keep], b[keep], labels=list(GRADES), weights="quadratic",
                                  sample_weight=w[keep])
    return float(value)


def _statistics(rows: dict[str, np.ndarray], images: dict[str, np.ndarray], wi: np.ndarray
                ) -> dict[str, float]:
    """Every metric with image weights ``wi`` (1: the sample itself; counts: a resample)."""
    wv = wi[rows["image"]].astype(np.float64)
    fracture = rows["y"] >= 0
    graded = rows["grade_true"] >= 0
    found = float((images["n_found"] * wi).sum())
    return {
        "recall": _ratio(rows["matched"], wv),
        "precision": float((rows["matched"] * wv).sum()) / found if found > 0 else float("nan"),
        "level_accuracy": _ratio(rows["level_hit"][rows["level_known"]], wv[rows["level_known"]]),
        "fracture_auroc": _auroc(rows["y"][fracture], rows["p"][fracture], wv[fracture]),
        "sensitivity_at_90_specificity": _sensitivity_at(rows["y"][fracture], rows["p"][fracture],
                                                         wv[fracture], SPECIFICITY),
        "grade_kappa": _kappa(rows["grade_true"][graded], rows["grade_pred"][graded], wv[graded]),
        "image_auroc": _auroc(images["y"], images["p"], wi.astype(np.float64)),
    }


def evaluate(truth: Mapping[str, Sequence[Vertebra]], found: Mapping[str, Sequence[Detection]],
             *, patients: Mapping[str, str] | None = None, iou_threshold: float = 0.5,
             n_boot: int = 2000, seed: int = 0, level: float = LEVEL) -> dict:
    """Every metric (see the module) over the annotated images, each as ``{"value", "ci95"}``,
    plus the counts. ``found``: detections per image id (an image left out has none; boxes in
    the annotations' pixels). ``patients``: image id -> patient id for a patient bootstrap."""
    rows, images = _tables(truth, found, iou_threshold)
    ids = list(truth)
    if patients is not None:
        if missing := [i for i in ids if i not in patients]:
            raise ValueError(f"no patient for image(s) {missing[:5]}")
        names = sorted({patients[i] for i in ids})
        cluster = np.array([names.index(patients[i]) for i in ids], np.int64)
    else:
        cluster = np.arange(len(ids))
    n_clusters = int(cluster.max()) + 1 if len(ids) else 0
    point = _statistics(rows, images, np.ones(len(ids)))
    draws: dict[str, list[float]] = {k: [] for k in METRICS}
    if n_clusters:
        rng = rng_for(seed, "vertebrae")
        for start in range(0, n_boot, 256):
            counts = resample_counts(n_clusters, min(256, n_boot - start), rng)
            for c in counts:
                for k, v in _statistics(rows, images, c[cluster]).items():
                    draws[k].append(v)
    out: dict = {"images": len(ids), "clusters": n_clusters, "vertebrae": int(len(rows["image"])),
                 "detections": int(images["n_found"].sum()), "matched": int(rows["matched"].sum()),
                 "n_boot": n_boot, "level": level}
    for k in METRICS:
        value = point[k]
        out[k] = {"value": value if np.isfinite(value) else None,
                  "ci95": percentile_interval(np.array(draws[k]), level) if n_boot else None}
    return out
