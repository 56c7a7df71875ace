"""report.html: one self-contained page (figures embedded as base64 PNG) from the report.json content."""

from __future__ import annotations

from collections.abc import Mapping
from html import escape

from vertex_jax.evaluate.plots import FIGURES
from vertex_jax.evaluate.thresholds import OPERATING_POINTS
from vertex_jax.html_page import page, png_image, table

_CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:.6em 0 1.4em;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}th{background:#f2f2f2}
td.l,th.l{text-align:left}.note{background:#fff4d6;border-left:4px solid #e0a800;padding:.4em .8em;margin:.4em 0}
img{max-width:100%;margin:.4em 1em .4em 0;vertical-align:top}.small{color:#666;font-size:12px}"""

_METHODS = """<p class="small">AUROC: Mann-Whitney area (ties count one half); 95% CI by DeLong (normal
approximation, clipped to [0, 1]) and by stratified percentile bootstrap (positives and negatives resampled
separately). Operating points: a case is positive when p &ge; threshold; thresholds are chosen on the
threshold split (Youden: max sensitivity + specificity - 1; sensitivity_90: highest threshold with
sensitivity &ge; 0.90; specificity_90: lowest threshold with specificity &ge; 0.90) and applied unchanged
to the evaluated split. Sensitivity, specificity, PPV, NPV: Wilson score 95% CI; F1: bootstrap 95% CI.
Calibration: Brier score; slope b from logit P(y=1) = a + b&middot;logit(p); calibration intercept
(calibration-in-the-large) c from logit P(y=1) = c + logit(p) (slope fixed at 1; ideal 0, &gt; 0 means
risks are underestimated), both with Wald 95% CIs; expected calibration error (ECE): sum over the reliability bins of
(n_b/N)&middot;|mean p_b - observed_b|, bootstrap 95% CI. For a calibrated model (vertex_jax.calibrate, fitted
on the validation split) the probabilities and thresholds are the calibrated ones, and the raw scores are
shown beside them. Comparison: difference of AUROCs (A - B) on the same cases, paired DeLong test
and paired bootstrap (same resamples for both models; p from the bootstrap standard error).</p>"""


def _f(x, digits: int = 3) -> str:
    return "&ndash;" if x is None else f"{x:.{digits}f}"


def _ci(ci, digits: int = 3) -> str:
    return "&ndash;" if not ci else f"{ci[0]:.{digits}f}&ndash;{ci[1]:.{digits}f}"


def _with_ci(cal: Mapping, key: str) -> str:
    if cal.get(key) is None:
        return "&ndash;"
    ci = cal.get(f"{key}_ci")
    return f"{cal[key]:.2f}" + (f" ({ci[0]:.2f} to {ci[1]:.2f})" if ci else "")


def _value_ci(d: Mapping | None) -> str:
    if not d or d.get("value") is None:
        return "&ndash;"
    return f"{d['value']:.3f} ({_ci(d.get('ci'))})"


def _table(head: list[str], rows: list[list[str]], left: int = 1) -> str:
    """Right-aligned cells but for the first ``left`` columns (class ``l``)."""
    return table(head, rows, ("l",) * left)


def _why(g: Mapping) -> str:
    reasons = list(g.get("notes", []))
    for part in ("auroc", "calibration"):
        if (g.get(part) or {}).get("reason"):
            reasons.append(g[part]["reason"])
    return escape("; ".join(dict.fromkeys(reasons)))


def _summary_row(label: str, g: Mapping) -> list[str]:
    a, cal = g.get("auroc") or {}, g.get("calibration") or {}
    return [escape(label), str(g["n"]), str(g["positives"]), _f(a.get("value")),
            _ci((a.get("delong") or {}).get("ci")), _ci((a.get("bootstrap") or {}).get("ci")),
            _f(cal.get("brier")), _with_ci(cal, "slope"), _with_ci(cal, "intercept"),
            _value_ci(cal.get("ece")), _f(cal.get("mean_predicted")), _f(cal.get("observed")), _why(g)]


def _task_section(task: str, report: Mapping, images: Mapping[str, bytes]) -> str:
    models = {label: m["tasks"][task] for label, m in report["models"].items() if task in m["tasks"]}
    parts = [f"<h2>{escape(task)}</h2>"]
    head = ["model", "n", "positive", "AUROC", "DeLong 95% CI", "bootstrap 95% CI", "Brier", "slope",
            "intercept", "ECE (95% CI)", "mean p", "observed", "notes"]
    rows = []
    for label, r in models.items():
        rows.append(_summary_row(label, r["overall"]))
        if r.get("raw"):  # the same model before calibration
            rows.append(_summary_row(f"{label}, raw (uncalibrated)", {**r["overall"], "notes": [],
                                                                     **{k: r["raw"][k] for k in ("auroc", "calibration")}}))
    parts.append(_table(head, rows))
    thr_rows = []
    for label, r in models.items():
        for name in OPERATING_POINTS:
            t = r["thresholds"].get(name, {})
            thr_rows.append([escape(label), name, _f(t.get("threshold"), 4), _f(t.get("sensitivity")),
                             _f(t.get("specificity")), escape(t.get("reason", ""))])
    where = report["settings"]["thresholds"]
    parts.append(f"<h3>Thresholds (chosen on: {escape(str(where))})</h3>")
    parts.append(_table(["model", "operating point", "threshold", "sensitivity there", "specificity there",
                         "note"], thr_rows, left=2))
    op_rows = []
    for label, r in models.items():
        for name, op in r["overall"].get("operating_points", {}).items():
            if op.get("threshold") is None:
                op_rows.append([escape(label), name, "&ndash;"] + [""] * 8 + [escape(op.get("reason", ""))])
                continue
            counts = [str(op[k]) for k in ("tp", "fp", "tn", "fn")]
            rates = [_value_ci(op[k]) for k in ("sensitivity", "specificity", "ppv", "npv", "f1")]
            op_rows.append([escape(label), name, _f(op["threshold"], 4), *counts, *rates, ""])
    parts.append(f"<h3>Operating points on split '{escape(report['settings']['eval_split'])}'</h3>")
    parts.append(_table(["model", "operating point", "threshold", "TP", "FP", "TN", "FN", "sensitivity",
                         "specificity", "PPV", "NPV", "F1", "note"], op_rows, left=2))
    for kind in FIGURES:
        png = images.get(f"{kind}_{task}.png")
        if png:
            parts.append(png_image(png, f"{kind} {task}"))
    parts.append("<h3>Subgroups</h3>")
    sub_rows = []
    for label, r in models.items():
        for g in r["subgroups"]:
            y = (g.get("operating_points") or {}).get("youden") or {}
            sub_rows.append([escape(label), escape(g["variable"]), escape(g["group"]), *_summary_row("", g)[1:4],
                             _ci((g.get("auroc") or {}).get("delong", {}).get("ci")),
                             _value_ci(y.get("sensitivity")), _value_ci(y.get("specificity")),
                             _f((g.get("calibration") or {}).get("brier")),
                             _f((g.get("calibration") or {}).get("slope"), 2), _why(g)])
    parts.append(_table(["model", "variable", "group", "n", "positive", "AUROC", "DeLong 95% CI",
                         "sensitivity (youden)", "specificity (youden)", "Brier", "slope", "notes"],
                        sub_rows, left=3))
    comp = report.get("comparison", {}).get(task)
    if comp:
        rows = []
        for g in [comp["overall"], *comp["subgroups"]]:
            d, b = g.get("delong") or {}, g.get("bootstrap") or {}
            why = g.get("reason") or d.get("reason") or b.get("reason") or ""
            rows.append([escape(g["variable"]), escape(g["group"]), str(g["n"]), str(g["positives"]),
                         _f(d.get("diff")), _ci(d.get("ci")), _f(d.get("p"), 4),
                         _ci(b.get("ci")), _f(b.get("p"), 4), escape(why)])
        parts.append(f"<h3>Comparison: AUROC {escape(comp['difference'])}</h3>")
        parts.append(_table(["variable", "group", "n", "positive", "difference", "DeLong 95% CI", "DeLong p",
                             "bootstrap 95% CI", "bootstrap p", "note"], rows, left=2))
    return "\n".join(parts)


def _vertebra_section(v: Mapping | None) -> str:
    """Per-vertebra detection, level and grade statistics, when the report has them."""
    if not v:
        return ""
    names = {"recall": "detection recall", "precision": "detection precision",
             "level_accuracy": "level accuracy (matched vertebrae)", "fracture_auroc": "fracture AUROC (per vertebra)",
             "sensitivity_at_90_specificity": "sensitivity at 90% specificity (per vertebra)",
             "grade_kappa": "Genant grade, quadratic-weighted &kappa;",
             "image_auroc": "pVF AUROC of &ldquo;any vertebra fractured&rdquo; (per image)"}
    rows = [[names.get(k, escape(k)), _f(s.get("value")), _ci(s.get("ci95"))]
            for k, s in v.items() if isinstance(s, Mapping) and "value" in s]
    if v.get("image_head_pvf_auroc") is not None:
        rows.append(["pVF AUROC of the image head, same images", _f(v["image_head_pvf_auroc"]), "&ndash;"])
    return (f"<h2>Per vertebra</h2><p>Split <b>{escape(str(v['split']))}</b>: {v['vertebrae']} annotated "
            f"vertebrae in {v['images']} images ({v.get('unannotated_images', 0)} without annotations left out), "
            f"{v['detections']} found, {v['matched']} matched at IoU &ge; {v['iou_threshold']}; a missed vertebra "
            f"counts as probability 0 and grade 0. Intervals: percentile bootstrap over patients "
            f"({v['n_boot']} resamples).</p>" + _table(["statistic", "value", "95% CI"], rows))


def render_html(report: Mapping, images: Mapping[str, bytes]) -> str:
    """The whole page."""
    s = report["settings"]
    meta = []
    for label, m in report["models"].items():
        extra = "; ".join(f"{k}: {', '.join(m[k])}" for k in ("model", "model_step", "preprocess_version")
                          if m.get(k))
        meta.append(f"<li><b>{escape(label)}</b>: {escape(m['source'])}"
                    f"{f' ({escape(extra)})' if extra else ''}</li>")
    notes = "".join(f'<div class="note">{escape(n)}</div>' for n in report["notes"])
    tasks = dict.fromkeys(t for m in report["models"].values() for t in m["tasks"])
    settings = (f"evaluated split: <b>{escape(s['eval_split'])}</b>; thresholds from: "
                f"<b>{escape(str(s['thresholds']))}</b>; "
                f"bootstrap resamples: {s['bootstrap']} (seed {s['seed']}); "
                f"age bands cut at {', '.join(f'{a:g}' for a in s['age_bands'])}")
    body = "\n".join(_task_section(t, report, images) for t in tasks)
    return page(report["title"], f"<h1>{escape(report['title'])}</h1><ul>{''.join(meta)}</ul>"
                f"<p>{settings}</p>{notes}{_METHODS}{body}{_vertebra_section(report.get('vertebrae'))}"
                f"<p class=\"small\">vertex_jax {escape(report['vertex_jax_version'])}</p>", _CSS)
