"""review.html: a prediction run's cases sorted by score, each with its overlay, for a reader.

One self-contained page (thumbnails embedded as base64 JPEG): per task a table from the
highest score down, with the overlay thumbnail, the probability (calibrated where the scores'
``calibration`` column names a method, else the raw sigmoid, and the page says which), the call at the operating point when a
threshold is known, the label when known, the map's peak and the level it names; with the
vertebra head, the levels found top to bottom, each graded one (Genant 1-3) with its grade.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from html import escape

import cv2
import numpy as np
import pandas as pd

from vertex_jax.html_page import page, table

MAX_CASES = 400  # per task: the top and bottom halves of the list beyond this
_CSS = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;font-size:13px}th,td{border:1px solid #ccc;padding:3px 8px;vertical-align:middle}
th{background:#f2f2f2;position:sticky;top:0}td.n{text-align:right}img{height:160px;display:block}
.pos{color:#b00;font-weight:600}.neg{color:#333}.small{color:#666;font-size:12px}"""
_CLASSES = ("n", "", "", "n")  # rank and probability right-aligned


def thumbnail(picture: np.ndarray, height: int = 160) -> str | None:
    """A data URI (JPEG) of a BGR ``picture`` scaled to ``height`` pixels; None if it cannot
    be encoded."""
    scale = height / picture.shape[0]
    small = cv2.resize(picture, (max(1, round(picture.shape[1] * scale)), height),
                       interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 85])
    return "data:image/jpeg;base64," + base64.b64encode(data.tobytes()).decode() if ok else None


def _cases(scores: pd.DataFrame, task: str) -> tuple[pd.DataFrame, int]:
    ordered = scores.sort_values(f"{task}_prob", ascending=False, kind="stable")
    if len(ordered) <= MAX_CASES:
        return ordered, 0
    half = MAX_CASES // 2
    return pd.concat([ordered.head(half), ordered.tail(half)]), len(ordered) - MAX_CASES


def vertebra_cells(vertebrae: pd.DataFrame) -> dict[str, str]:
    """image id -> its vertebrae in words (HTML): the levels top to bottom (``?`` unnamed),
    the ones graded 1-3 by the model marked with their grade (``L1 G2``). An image without
    any has no entry."""
    cells: dict[str, str] = {}
    for image_id, rows in vertebrae.groupby("image_id", sort=False):
        words = []
        for level, grade in zip(rows["level"].fillna(""), rows["grade"].astype(int)):
            name = escape(str(level) or "?")
            words.append(f'<span class="pos">{name}&nbsp;G{grade}</span>' if grade >= 1 else name)
        cells[str(image_id)] = " ".join(words)
    return cells


def _task_section(scores: pd.DataFrame, task: str, pictures: Mapping[tuple[str, str], str],
                  threshold: float | None, vertebrae: Mapping[str, str] | None = None) -> str:
    methods = set(scores.get("calibration", pd.Series(["none"])).astype(str)) - {"none", "nan", ""}
    cases, left_out = _cases(scores, task)
    head = ["#", "overlay", "image", "probability" + (f" (calibrated, {', '.join(sorted(methods))})"
                                                     if methods else " (uncalibrated)"),
            "call", "label", "peak (x, y)", "level",
            *(["vertebrae (G: Genant grade)"] if vertebrae is not None else [])]
    rows = []
    for rank, (_, r) in enumerate(cases.iterrows(), start=1):
        p = float(r[f"{task}_prob"])
        call = "&ndash;" if threshold is None else (
            '<span class="pos">positive</span>' if p >= threshold else '<span class="neg">negative</span>')
        label = r.get(task, "")
        label = "" if label is None or (isinstance(label, float) and np.isnan(label)) else str(label)
        uri = pictures.get((str(r["image_id"]), task))
        img = f'<img loading="lazy" src="{uri}" alt="overlay">' if uri else "&ndash;"
        peak = (f"{r[f'{task}_peak_x']:.0f}, {r[f'{task}_peak_y']:.0f}"
                if f"{task}_peak_x" in r and pd.notna(r[f"{task}_peak_x"]) else "&ndash;")
        level = escape(str(r.get(f"{task}_level", "") or "")) or "&ndash;"
        image = f"{escape(str(r['image_id']))}<div class=small>{escape(str(r['path']))}</div>"
        found = [] if vertebrae is None else [vertebrae.get(str(r["image_id"]), "none found")]
        rows.append([str(rank), img, image, f"{p:.3f}", call, escape(label), peak, level, *found])
    note = (f"<p class=small>{left_out} cases in the middle of the list are left out; all are in "
            f"scores.csv.</p>" if left_out else "")
    rule = ("operating point: positive when p &ge; " + f"{threshold:.3f}" if threshold is not None
            else "no operating point given (--thresholds thresholds.json)")
    outlines = ("" if vertebrae is None else " Vertebrae the model grades 1-3 are outlined "
                "(yellow 1, orange 2, red 3) and every found one is labelled with its level.")
    return (f"<h2>{escape(task)}</h2><p class=small>{len(scores)} cases, highest score first; "
            f"{rule}. White box: the map's region around its peak; green: fractured vertebrae "
            f"where boxes are known.{outlines}</p>{note}" + table([escape(h) for h in head], rows, _CLASSES))


def render_review(scores: pd.DataFrame, tasks: tuple[str, ...],
                  pictures: Mapping[tuple[str, str], str],
                  thresholds: Mapping[str, float] | None = None, title: str = "",
                  vertebrae: pd.DataFrame | None = None) -> str:
    """The page; ``pictures[(image_id, task)]`` is a data URI, ``thresholds[task]`` a cut-off
    on the probability, ``vertebrae`` the rows of ``<out>_vertebrae.csv`` (a model with the
    vertebra head)."""
    thresholds = thresholds or {}
    cells = None if vertebrae is None else vertebra_cells(vertebrae)
    body = "".join(_task_section(scores, t, pictures, thresholds.get(t), cells) for t in tasks)
    return page(f"Review {title}", f"<h1>Review: {escape(title)}</h1>{body}", _CSS)
