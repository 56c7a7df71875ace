"""Outputs: ``prognosis.json`` (every number), PNG figures, a self-contained ``prognosis.html``
(figures embedded as base64) and a short plain-text summary."""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path

from vertex_jax.html_page import page, png_image, table
from vertex_jax.jsonable import jsonable
from vertex_jax.prognosis import plots

DEFINITIONS = (
    "Baseline: each patient's row with the lowest exam number (blank exam last; the first "
    "row on ties). Complete-case analysis.",
    "Hazard ratios: Cox proportional hazards (lifelines, Efron ties). 'per SD': per standard "
    "deviation of the score in this cohort. 'binary': DL-positive (score >= cut-off) vs "
    "negative. Crude: the score alone; adjusted: with the clinical covariates. PH p: "
    "scaled-Schoenfeld-residual test (rank time); small values suggest non-proportional hazards.",
    "Models: clinical = the covariates; clinical + DL = covariates and every score per SD.",
    "C-index: Harrell's, on each model's linear predictor (or the raw score). AUC at the "
    "horizon: cumulative/dynamic (cases = fracture by the horizon, controls = followed "
    "beyond it) with inverse-probability-of-censoring weights (Uno 2007).",
    "NRI, IDI and net benefit use the predicted risk by the horizon and the same IPCW "
    "event-by-horizon definition (patients censored earlier are represented through the "
    "weights). Categorical NRI at the risk cut-offs; continuous NRI counts any change.",
    "Intervals: 95% percentile bootstrap over patients, paired for differences; the models "
    "are fitted once on the whole cohort (apparent performance, slightly optimistic).",
)


DELTA = "difference (clinical + DL minus clinical)"


def _missing(x) -> bool:
    return x is None or (isinstance(x, float) and not math.isfinite(x))


def _num(x, digits: int = 3, sign: bool = False) -> str:
    if _missing(x):
        return "n/a"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def _ci(entry: dict, digits: int = 3, sign: bool = False) -> str:
    """``estimate [low, high]`` (the estimate alone without an interval)."""
    est = _num(entry["estimate"], digits, sign)
    if _missing(entry.get("ci_low")):
        return est
    return f"{est} [{_num(entry['ci_low'], digits)}, {_num(entry['ci_high'], digits)}]"


def _hr(row: dict) -> str:
    if _missing(row["hr"]):
        return "n/a"
    return f"{row['hr']:.2f} [{row['ci_low']:.2f}, {row['ci_high']:.2f}]"


def _p(p) -> str:
    if _missing(p):
        return "n/a"
    return f"{p:.2g}" if p > 0 else "<1e-300"


def _label(row: dict) -> str:
    if row["coding"] == "per SD":
        return f"{row['score']} per SD ({row['sd']:.3g})"
    return f"{row['score']} >= {row['threshold']:.3g}"


def _paired_rows(result: dict) -> list[tuple[str, dict, dict]]:
    """(label, crude row, adjusted row) per score x coding."""
    rows = result["hazard_ratios"]
    crude = [r for r in rows if r["adjustment"] == "crude"]
    adjusted = [r for r in rows if r["adjustment"] == "adjusted"]
    return [(_label(c), c, a) for c, a in zip(crude, adjusted)]


def summary_text(result: dict) -> str:
    """A short table for the terminal."""
    c, s = result["cohort"], result["settings"]
    h = s["horizon"]
    d = result["discrimination"]
    r = result["reclassification"]
    cut = ", ".join(f"{x:g}" for x in r["risk_cutoffs"])
    lines = [
        f"Prognosis: {c['analysed_patients']} patients, {c['events']} incident fractures "
        f"({c['cases_by_horizon']} by {h:g} y; KM incidence {100 * c['cumulative_incidence_km']:.1f}%), "
        f"median follow-up {_num(c['median_followup_reverse_km'], 1)} y",
        f"{'model':<22}{'C-index [95% CI]':<28}{f'AUC({h:g}y) [95% CI]':<28}",
    ]
    for name in ("clinical", "clinical + DL", *s["scores"]):
        lines.append(f"{name:<22}{_ci(d['c_index'][name]):<28}{_ci(d['auc_at_horizon'][name]):<28}")
    lines.append(f"{'difference':<22}{_ci(d['c_index']['delta'], sign=True):<28}"
                 f"{_ci(d['auc_at_horizon']['delta'], sign=True):<28}")
    lines.append(f"NRI ({cut}): {_ci(r['categorical_nri']['nri'], sign=True)}   continuous NRI: "
                 f"{_ci(r['continuous_nri']['nri'], sign=True)}   IDI: {_ci(r['idi']['idi'], sign=True)}")
    lines.append(f"{'hazard ratio [95% CI]':<34}{'crude':<20}{'adjusted':<20}{'PH p (adj.)':<10}")
    for label, crude, adjusted in _paired_rows(result):
        lines.append(f"{label:<34}{_hr(crude):<20}{_hr(adjusted):<20}{_p(adjusted['ph_p']):<10}")
    lines.append("log-rank p: " + ", ".join(f"{k} {_p(v['logrank']['p'])}"
                                            for k, v in result["kaplan_meier"].items()))
    lines += [n for n in result["notes"] if n.startswith("warning")]
    return "\n".join(lines)


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A table of plain values (escaped)."""
    return table([html.escape(str(h)) for h in header], [[html.escape(str(v)) for v in row] for row in rows])


def html_report(result: dict, images: dict[str, bytes]) -> str:
    """The self-contained HTML page."""
    s, c = result["settings"], result["cohort"]
    h = s["horizon"]
    d, r = result["discrimination"], result["reclassification"]
    parts = ["<h1>Incident fracture: do DL scores add to clinical risk factors?</h1>",
             "<h2>Cohort</h2>",
             _table(["quantity", "value"],
                    [(k, _num(v) if isinstance(v, float) else v) for k, v in c.items()]),
             "<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in result["notes"]) + "</ul>",
             "<h2>Settings</h2>",
             _table(["setting", "value"], [(k, v if not isinstance(v, (list, dict)) else json.dumps(v))
                                           for k, v in {**result.get("inputs", {}), **s}.items()
                                           if k != "dca_thresholds"]),
             "<h2>Hazard ratios</h2>",
             _table(["score", "crude HR [95% CI]", "p", "adjusted HR [95% CI]", "p", "PH p (adjusted)",
                     "DL-positive", "cut-off source"],
                    [(label, _hr(cr), _p(cr["p"]), _hr(ad), _p(ad["p"]), _p(ad["ph_p"]),
                      cr.get("n_positive", ""), cr.get("threshold_source", ""))
                     for label, cr, ad in _paired_rows(result)]),
             png_image(images["hazard_ratios.png"], "hazard ratios")]
    for name, model in result["models"].items():
        parts += [f"<h3>Model: {html.escape(name)}</h3>",
                  _table(["term", "HR [95% CI]", "p", "PH test chi2", "PH p"],
                         [(t["term"], _hr(t), _p(t["p"]), _num(model["ph_test"][t["term"]]["statistic"], 2),
                           _p(model["ph_test"][t["term"]]["p"])) for t in model["coefficients"]])]
    parts += ["<h2>Discrimination</h2>",
              _table(["model / score", "Harrell's C [95% CI]", f"AUC at {h:g} y [95% CI]"],
                     [(DELTA if k == "delta" else k, _ci(d["c_index"][k], sign=k == "delta"),
                       _ci(d["auc_at_horizon"][k], sign=k == "delta")) for k in d["c_index"]]),
              f"<h2>Reclassification at {h:g} years</h2>",
              _table(["measure", "estimate [95% CI]"],
                     [(f"{name} {part}", _ci(r[name][part], sign=True))
                      for name in ("categorical_nri", "continuous_nri")
                      for part in ("events", "nonevents", "nri")]
                     + [("IDI", _ci(r["idi"]["idi"], sign=True)),
                        ("discrimination slope, clinical", _ci(r["idi"]["slope_old"])),
                        ("discrimination slope, clinical + DL", _ci(r["idi"]["slope_new"]))])]
    edges = [0.0, *r["risk_cutoffs"], 1.0]
    names = [f"{100 * a:g}-{100 * b:g}%" for a, b in zip(edges, edges[1:])]
    for group, counts in r["counts"].items():
        parts += [f"<h3>Clinical (rows) vs clinical + DL (columns): {group}</h3>",
                  _table(["", *names], [(names[i], *row) for i, row in enumerate(counts)])]
    parts += ["<h2>Decision curve</h2>", png_image(images["decision_curve.png"], "decision curve"),
              "<h2>Kaplan-Meier by DL group</h2>"]
    for score, km in result["kaplan_meier"].items():
        rows = []
        for group, entry in km["groups"].items():
            at = entry.get("at_horizon", {})
            rows.append((group, entry["n"], entry["events"], _num(at.get("incidence")),
                         f"[{_num(at.get('incidence_low'))}, {_num(at.get('incidence_high'))}]"))
        title = (f"{score} >= {km['threshold']:.3g} ({km['threshold_source']}); "
                 f"log-rank p = {_p(km['logrank']['p'])}")
        parts += [f"<h3>{html.escape(title)}</h3>",
                  _table(["group", "n", "events", f"incidence by {h:g} y", "95% CI"], rows),
                  png_image(images[f"km_{_slug(score)}.png"], f"KM {score}")]
    definitions = "".join(f"<li>{html.escape(x)}</li>" for x in DEFINITIONS)
    parts.append(f"<h2>Definitions</h2><ul>{definitions}</ul>")
    style = ("body{font-family:sans-serif;max-width:1000px;margin:auto}table{border-collapse:collapse;"
             "margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}img{max-width:100%}")
    return page("Prognosis", "".join(parts), style)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def write_outputs(result: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write prognosis.json, the PNGs and prognosis.html under ``out_dir``; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = jsonable(result)
    h = result["settings"]["horizon"]
    figures = {"hazard_ratios.png": plots.forest_figure(result["hazard_ratios"]),
               "decision_curve.png": plots.decision_curve_figure(result["decision_curve"], h)}
    figures |= {f"km_{_slug(s)}.png": plots.km_figure(s, km, h) for s, km in result["kaplan_meier"].items()}
    images = {name: plots.png_bytes(fig) for name, fig in figures.items()}
    paths = {}
    for name, png in images.items():
        paths[name] = out / name
        paths[name].write_bytes(png)
    paths["prognosis.json"] = out / "prognosis.json"
    paths["prognosis.json"].write_text(json.dumps(result, indent=1, allow_nan=False))
    paths["prognosis.html"] = out / "prognosis.html"
    paths["prognosis.html"].write_text(html_report(result, images), encoding="utf-8")
    return paths
