"""The evaluation report: from a per-case score table to report.html / report.json and figures.

``build_report`` is the one entry point; ``python -m vertex_jax.evaluate`` wraps it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from vertex_jax import __version__
from vertex_jax.evaluate.compare import compare_group
from vertex_jax.evaluate.html import render_html
from vertex_jax.evaluate.inputs import Inputs, PathLike, gather_inputs, load_fixed_thresholds
from vertex_jax.evaluate.intervals import LEVEL, rng_for
from vertex_jax.evaluate.metrics import evaluate_group, evaluate_task
from vertex_jax.evaluate.plots import FIGURES
from vertex_jax.evaluate.subgroups import AGE_BANDS, define_subgroups
from vertex_jax.evaluate.table import ScoresError, Table
from vertex_jax.evaluate.thresholds import OPERATING_POINTS, choose_thresholds
from vertex_jax.jsonable import jsonable
from vertex_jax.tasks import TASKS
from vertex_jax.errors import ConfigError

def _meta(table: Table) -> dict:
    out: dict = {"source": table.source}
    for col in ("model", "model_step", "preprocess_version"):
        if col in table.raw.columns:
            values = sorted({str(v) for v in table.raw[col] if str(v).strip() not in ("", "nan")})
            out[col] = values
    return out


def build_report(scores: pd.DataFrame | PathLike, out_dir: PathLike, *, tasks: Sequence[str] | None = None,
                 threshold_split: str = "val", eval_split: str = "test",
                 compare: pd.DataFrame | PathLike | None = None,
                 compare_columns: Sequence[tuple[str, str]] | None = None,
                 labels: Sequence[str] | None = None,
                 thresholds: Mapping | PathLike | None = None, thresholds_on_eval: bool = False,
                 age_bands: Sequence[float] = AGE_BANDS, bootstrap: int = 2000, seed: int = 0,
                 n_bins: int = 10, title: str = "", vertebrae: Mapping | None = None) -> dict:
    """Evaluate per-case scores and write report.html, report.json, scores.csv, thresholds.json
    and the figures (PNG) to ``out_dir``; returns the report.json content.

    scores: a scores.csv table (DataFrame, or path).
    tasks: default every task with a label column and a ``<task>_prob`` column.
    eval_split: the split evaluated ('all' = every row).
    threshold_split: where thresholds are chosen. If it has no rows or overlaps eval_split this
        is an error, unless ``thresholds_on_eval`` (then they are chosen on the evaluated cases
        and the report says the operating points are optimistic).
    thresholds: fixed thresholds ({task: {operating point: value}} or a thresholds.json path)
        used instead of choosing them (single model only).
    compare: a second model's score table; cases are joined on image_id and must match.
    compare_columns: pairs of probability columns of the same table, one pair per task, e.g.
        [("pvf_prob", "pvf_prob_imageonly")]; only those tasks are evaluated.
    labels: the models' names. bootstrap: resamples (0: no bootstrap intervals).
    seed: fixes every resample. age_bands: age cut points. n_bins: reliability diagram bins.
    vertebrae: the per-vertebra section, already computed
        (:func:`vertex_jax.vertebrae.evaluation.vertebra_section`), shown as it is.
    """
    if bootstrap < 0 or n_bins < 1:
        raise ConfigError("bootstrap must be >= 0 and n_bins >= 1")
    fixed = None
    if thresholds is not None:
        if compare is not None or compare_columns:
            raise ConfigError("fixed thresholds belong to one model: not available when comparing two")
        fixed, fixed_from = load_fixed_thresholds(thresholds)
    inputs = gather_inputs(scores, compare=compare, compare_columns=compare_columns, tasks=tasks, labels=labels,
                           eval_split=eval_split, threshold_split=None if fixed is not None else threshold_split,
                           thresholds_on_eval=thresholds_on_eval)
    settings = {"eval_split": eval_split, "threshold_split": None if fixed is not None else threshold_split,
                "thresholds": fixed_from if fixed is not None else inputs.thresholds_from,
                "bootstrap": bootstrap, "seed": seed, "confidence_level": LEVEL,
                "age_bands": list(age_bands), "reliability_bins": n_bins}
    report: dict = {"title": title or "Evaluation report", "vertex_jax_version": __version__,
                    "settings": settings, "notes": list(inputs.notes), "models": {}}
    options = {"n_boot": bootstrap, "seed": seed, "n_bins": n_bins, "age_bands": age_bands}
    for label, table in inputs.models:
        if _uncalibrated(table):
            report["notes"].append(f"{label}: the scores come from an uncalibrated model (calibration 'none'): "
                                   "probabilities and thresholds are on the raw sigmoid scale; fit one with "
                                   "python -m vertex_jax.calibrate --workdir RUN")
    cases = inputs.models[0][1].cases  # subgroup variables, aligned for every model
    for i, (label, table) in enumerate(inputs.models):
        report["models"][label] = _evaluate_model(table, cases, inputs, fixed, report["notes"] if i == 0 else None,
                                                  explicit=bool(tasks), **options)
    if inputs.compared:
        report["comparison"] = _comparison(inputs, age_bands, bootstrap, seed)
    if vertebrae is not None:
        report["vertebrae"] = dict(vertebrae)
    _write(report, inputs, Path(out_dir), second_file=compare is not None)
    return jsonable(report)


def _evaluate_model(table: Table, cases: pd.DataFrame, inputs: Inputs, fixed: dict | None,
                    notes: list[str] | None, *, explicit: bool, age_bands: Sequence[float], **options) -> dict:
    """Every number for one model's tasks (notes: where to say a task was skipped)."""
    entry = {**_meta(table), "tasks": {}}
    ev, thr = inputs.evaluated, inputs.threshold_rows
    for task in table.tasks:
        y, p = table.cases[f"y_{task}"].to_numpy(), table.cases[f"p_{task}"].to_numpy()
        labelled = ~np.isnan(y)
        ev_t = ev & labelled
        if not ev_t.any():
            message = f"task '{task}': no labelled cases in the evaluated split"
            if explicit:
                raise ScoresError(table.source, [message])
            if notes is not None:
                notes.append(f"{message}; not evaluated")
            continue
        if fixed is not None:
            missing = {"threshold": None, "reason": f"not in the thresholds given for '{task}'"}
            chosen, thr_cases = {**{n: missing for n in OPERATING_POINTS}, **fixed.get(task, {})}, None
        else:
            thr_t = thr & labelled
            chosen = choose_thresholds(y[thr_t] == 1, p[thr_t])
            thr_cases = {"n": int(thr_t.sum()), "positives": int((y[thr_t] == 1).sum())}
        result = evaluate_task(y[ev_t] == 1, p[ev_t], chosen, define_subgroups(cases[ev_t], age_bands),
                               task=task, **options)
        entry["tasks"][task] = {"probability_column": table.prob_columns[task],
                                "unlabelled_excluded": int((ev & ~labelled).sum()),
                                "thresholds": chosen, "threshold_cases": thr_cases, **result}
        raw = _raw_calibration(table, task, y[ev_t] == 1, ev_t, options)
        if raw is not None:
            entry["tasks"][task]["raw"] = raw
    return entry


def _uncalibrated(table: Table) -> bool:
    """Scores of a model that says it has no calibration (predict's ``calibration`` column)."""
    return "calibration" in table.raw.columns and set(table.raw["calibration"].astype(str)) <= {"none"}


def _raw_calibration(table: Table, task: str, y: np.ndarray, rows: np.ndarray, options: Mapping) -> dict | None:
    """Calibration and AUROC of the uncalibrated ``<task>_prob_raw`` beside a calibrated
    ``<task>_prob`` (scores of a calibrated model); None when there is no such column."""
    column = f"{task}_prob_raw"
    if table.prob_columns[task] != f"{task}_prob" or column not in table.raw.columns or _uncalibrated(table):
        return None  # (an uncalibrated model's raw column repeats the probability)
    p = pd.to_numeric(table.raw[column], errors="coerce").to_numpy(float)[rows]
    if not np.all(np.isfinite(p)):
        return None
    raw = evaluate_group(y, p, {}, n_boot=options["n_boot"], seed=options["seed"], key=(task, "all"),
                         n_bins=options["n_bins"], ece_interval=True)
    return {"probability_column": column, "auroc": raw["auroc"], "calibration": raw["calibration"]}


def _comparison(inputs: Inputs, age_bands: Sequence[float], bootstrap: int, seed: int) -> dict:
    """Paired tests A - B per compared task, on all evaluated cases and per subgroup."""
    (label_a, a), (label_b, b) = inputs.models
    out = {}
    for task in inputs.compared:
        y = a.cases[f"y_{task}"].to_numpy()
        keep = inputs.evaluated & ~np.isnan(y)
        if not keep.any():
            continue
        y, pa, pb = y[keep] == 1, a.cases[f"p_{task}"].to_numpy()[keep], b.cases[f"p_{task}"].to_numpy()[keep]
        groups = [("all", "all cases", np.ones(y.size, bool))] + \
            [(g.variable, g.group, g.mask) for g in define_subgroups(a.cases[keep], age_bands)]
        rows = []
        for variable, group, m in groups:
            key = (task, "all") if variable == "all" else (task, variable, group)  # as in evaluate_task
            rows.append({"variable": variable, "group": group,
                         **compare_group(y[m], pa[m], pb[m], n_boot=bootstrap, rng=rng_for(seed, *key))})
        out[task] = {"a": label_a, "b": label_b, "difference": f"{label_a} - {label_b}",
                     "overall": rows[0], "subgroups": rows[1:]}
    return out


def _write(report: dict, inputs: Inputs, out: Path, second_file: bool) -> None:
    tables = inputs.models
    out.mkdir(parents=True, exist_ok=True)
    files = {"html": "report.html", "json": "report.json", "scores": "scores.csv", "thresholds": "thresholds.json"}
    tables[0][1].raw.to_csv(out / "scores.csv", index=False)
    if second_file:
        tables[1][1].raw.to_csv(out / "scores_compare.csv", index=False)
        files["scores_compare"] = "scores_compare.csv"
    primary = report["models"][tables[0][0]]["tasks"]
    (out / "thresholds.json").write_text(json.dumps(
        {t: {n: v["threshold"] for n, v in r["thresholds"].items()} for t, r in primary.items()}, indent=2) + "\n")
    images = {}
    for task in TASKS:
        results = {label: m["tasks"][task] for label, m in report["models"].items() if task in m["tasks"]}
        if not results:
            continue
        for kind, (draw, caption) in FIGURES.items():
            name = f"{kind}_{task}.png"
            images[name] = draw(results, f"{task}: {caption}")
            (out / name).write_bytes(images[name])
            files[f"{kind}_{task}"] = name
    report["files"] = files
    clean = jsonable(report)
    (out / "report.json").write_text(json.dumps(clean, indent=1) + "\n")
    (out / "report.html").write_text(render_html(clean, images), encoding="utf-8")


def _fmt(x, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _interval(ci, digits: int = 3) -> str:
    return "n/a" if not ci else f"{ci[0]:.{digits}f} to {ci[1]:.{digits}f}"


def vertebra_statistics(section: Mapping) -> dict[str, Mapping]:
    """The statistics of a per-vertebra section (entries with a ``value`` and ``ci95``), in its order."""
    return {k: v for k, v in section.items() if isinstance(v, Mapping) and "value" in v}


def format_summary(report: dict) -> str:
    """A few lines per model and task for the terminal."""
    lines = [f"{report['title']}: split '{report['settings']['eval_split']}', thresholds from "
             f"{report['settings']['thresholds']}"]
    lines += [f"NOTE: {n}" for n in report["notes"]]
    for label, model in report["models"].items():
        for task, r in model["tasks"].items():
            o = r["overall"]
            a = o.get("auroc", {})
            dl, bs = (a.get("delong") or {}).get("ci"), (a.get("bootstrap") or {}).get("ci")
            lines.append(f"{label} {task}: n={o['n']} (positive {o['positives']}) AUROC {_fmt(a.get('value'))} "
                         f"(DeLong {_interval(dl)}, bootstrap {_interval(bs)})")
            y = o.get("operating_points", {}).get("youden", {})
            if y.get("threshold") is not None:
                lines.append(f"  youden p>={y['threshold']:.3f}: sensitivity {_fmt(y['sensitivity']['value'])} "
                             f"specificity {_fmt(y['specificity']['value'])} PPV {_fmt(y['ppv']['value'])} "
                             f"NPV {_fmt(y['npv']['value'])}")
            raw = r.get("raw", {}).get("calibration")
            for name, cal in (("", o.get("calibration", {})), ("raw (uncalibrated): ", raw)):
                if cal:
                    lines.append(f"  {name}Brier {_fmt(cal.get('brier'))}, calibration slope "
                                 f"{_fmt(cal.get('slope'), 2)} ({_interval(cal.get('slope_ci'), 2)}), intercept "
                                 f"{_fmt(cal.get('intercept'), 2)} ({_interval(cal.get('intercept_ci'), 2)}), "
                                 f"ECE {_fmt((cal.get('ece') or {}).get('value'))} "
                                 f"({_interval((cal.get('ece') or {}).get('ci'))})")
    v = report.get("vertebrae")
    if v:
        lines.append(f"vertebrae ({v['split']}): {v['vertebrae']} annotated in {v['images']} images, "
                     f"{v['detections']} found, {v['matched']} matched at IoU >= {v['iou_threshold']}")
        lines += [f"  {k} {_fmt(s['value'])} ({_interval(s['ci95'])})" for k, s in vertebra_statistics(v).items()]
        if v.get("image_head_pvf_auroc") is not None:
            lines.append(f"  image head pvf AUROC on the same images {_fmt(v['image_head_pvf_auroc'])}")
    for task, c in report.get("comparison", {}).items():
        d, b = c["overall"].get("delong", {}), c["overall"].get("bootstrap", {})
        lines.append(f"{task} {c['difference']}: AUROC difference {_fmt(d.get('diff'))} "
                     f"(DeLong 95% CI {_interval(d.get('ci'))}, p={_fmt(d.get('p'), 4)}; "
                     f"bootstrap 95% CI {_interval(b.get('ci'))}, p={_fmt(b.get('p'), 4)})")
    return "\n".join(lines)
