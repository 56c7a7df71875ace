"""Report figures as PNG bytes (matplotlib's object API, no pyplot state, no display needed).

Each function takes ``results``: model label -> the dict of ``metrics.evaluate_task`` for one task.
:data:`FIGURES` lists them: the report draws each one per task (``<kind>_<task>.png``) and
report.html shows them in that order, so a new figure is a function here and its entry there.
"""

from __future__ import annotations

import io
from collections.abc import Mapping

import numpy as np
from matplotlib.figure import Figure

from vertex_jax.evaluate.thresholds import OPERATING_POINTS

_MARKERS = {"youden": "o", "sensitivity_90": "^", "specificity_90": "s"}


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def _auc_text(auroc: dict) -> str:
    if auroc.get("value") is None:
        return "AUROC n/a"
    ci = (auroc.get("delong") or {}).get("ci")
    return f"AUROC {auroc['value']:.3f}" + (f" ({ci[0]:.3f}-{ci[1]:.3f})" if ci else "")


def roc_plot(results: Mapping[str, dict], title: str) -> bytes:
    """ROC curves of all models with their operating points."""
    fig = Figure(figsize=(5.2, 5.2), layout="constrained")
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls=":", c="grey", lw=1)
    for i, (label, res) in enumerate(results.items()):
        all_ = res["overall"]
        if "roc" not in all_ or all_["auroc"].get("value") is None:
            continue
        c = f"C{i}"
        ax.plot(all_["roc"]["fpr"], all_["roc"]["tpr"], c=c, lw=1.6, label=f"{label}: {_auc_text(all_['auroc'])}")
        for name, op in all_["operating_points"].items():
            if op.get("threshold") is not None and op["sensitivity"]["value"] is not None \
                    and op["specificity"]["value"] is not None:
                ax.plot(1 - op["specificity"]["value"], op["sensitivity"]["value"], _MARKERS[name], c=c,
                        mfc="white", ms=7, label=f"{name} (t={op['threshold']:.3f})" if i == 0 else None)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), title=title)
    ax.set_aspect("equal")
    ax.legend(loc="lower right", fontsize=7)
    return _png(fig)


def reliability_plot(results: Mapping[str, dict], title: str) -> bytes:
    """Observed rate (Wilson CI) against mean predicted probability per bin, and bin counts;
    a calibrated model's raw (uncalibrated) scores are drawn dashed on the same axes."""
    fig = Figure(figsize=(5.2, 6), layout="constrained")
    ax, hist = fig.subplots(2, 1, height_ratios=[3, 1], sharex=True)
    ax.plot([0, 1], [0, 1], ls=":", c="grey", lw=1)
    series = []  # (label, calibration, line style): each model, and its raw scores when calibrated
    for i, (label, res) in enumerate(results.items()):
        series.append((label, res["overall"].get("calibration"), "o-", f"C{i}"))
        if res.get("raw"):
            series.append((f"{label} raw", res["raw"]["calibration"], "s--", f"C{i + len(results)}"))
    width = 0.8 / max(1, len(series))
    for i, (label, cal, style, colour) in enumerate(series):
        if not cal or not cal["bins"]:
            continue
        bins = cal["bins"]
        x = np.array([b["mean_predicted"] for b in bins])
        obs = np.array([b["observed"] for b in bins])
        ci = np.array([b["observed_ci"] for b in bins])
        slope = f", slope {cal['slope']:.2f}" if cal.get("slope") is not None else ""
        ece = f", ECE {cal['ece']['value']:.3f}" if cal.get("ece") else ""
        yerr = np.clip([obs - ci[:, 0], ci[:, 1] - obs], 0, None)
        ax.errorbar(x, obs, yerr=yerr, fmt=style, c=colour, ms=4, capsize=2,
                    label=f"{label}: Brier {cal['brier']:.3f}{slope}{ece}")
        lo = np.array([b["lo"] for b in bins])
        bin_w = bins[0]["hi"] - bins[0]["lo"]
        hist.bar(lo + bin_w * (0.1 + width * i), [b["n"] for b in bins], width=bin_w * width, align="edge",
                 color=colour)
    ax.set(ylabel="observed fraction positive", xlim=(0, 1), ylim=(-0.02, 1.02), title=title)
    ax.legend(loc="upper left", fontsize=7)
    hist.set(xlabel="predicted probability", ylabel="cases")
    return _png(fig)


def confusion_plot(results: Mapping[str, dict], title: str) -> bytes:
    """Confusion matrices at each operating point, one row per model."""
    fig = Figure(figsize=(3.3 * len(OPERATING_POINTS), 3.1 * len(results) + 0.4), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(results), len(OPERATING_POINTS), squeeze=False))
    for row, (label, res) in zip(axes, results.items()):
        points = res["overall"].get("operating_points", {})
        for ax, name in zip(row, OPERATING_POINTS):
            op = points.get(name, {})
            ax.set_xticks([0, 1], ["pred 0", "pred 1"])
            ax.set_yticks([0, 1], ["true 0", "true 1"])
            if op.get("threshold") is None:
                ax.text(0.5, 0.5, "not available", ha="center", va="center", transform=ax.transAxes)
                ax.set_title(f"{label}\n{name}", fontsize=9)
                continue
            cm = np.array([[op["tn"], op["fp"]], [op["fn"], op["tp"]]])
            ax.imshow(cm, cmap="Blues", vmin=0)
            for (r, c), v in np.ndenumerate(cm):
                ax.text(c, r, str(v), ha="center", va="center", color="white" if v > cm.max() / 2 else "black")
            ax.set_title(f"{label}\n{name} (p >= {op['threshold']:.3f})", fontsize=9)
    fig.suptitle(title)
    return _png(fig)


def forest_plot(results: Mapping[str, dict], title: str) -> bytes:
    """AUROC with DeLong 95% CI for all cases and each subgroup; 'n/a' where undefined."""
    first = next(iter(results.values()))
    rows = [("all cases", first["overall"])] + [(f"{g['variable']}: {g['group']}", g) for g in first["subgroups"]]
    fig = Figure(figsize=(7.5, 0.42 * len(rows) + 1.2), layout="constrained")
    ax = fig.add_subplot()
    k, low = len(results), 0.5
    for i, (label, res) in enumerate(results.items()):
        for j, g in enumerate([res["overall"], *res["subgroups"]]):
            y = j + (i - (k - 1) / 2) * 0.25
            a = g.get("auroc") or {}
            if a.get("value") is None:
                continue
            ci = (a.get("delong") or {}).get("ci") or [a["value"], a["value"]]
            low = min(low, ci[0])
            ax.errorbar(a["value"], y, xerr=[[a["value"] - ci[0]], [ci[1] - a["value"]]], fmt="s", c=f"C{i}",
                        ms=4, capsize=2, label=label if j == 0 else None)
    names = []
    for name, g in rows:
        undefined = (g.get("auroc") or {}).get("value") is None
        names.append(f"{name} (n={g['n']}, pos={g['positives']})" + (": AUROC n/a" if undefined else ""))
    ax.set_yticks(range(len(rows)), names, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0.5, c="grey", ls=":", lw=1)
    ax.set(xlim=(max(0.0, low - 0.02), 1.0), xlabel="AUROC (DeLong 95% CI)", title=title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=7)
    return _png(fig)


# kind -> (drawing function, caption), in the order report.html shows them.
FIGURES = {"roc": (roc_plot, "ROC curve"),
           "reliability": (reliability_plot, "reliability diagram"),
           "confusion": (confusion_plot, "confusion matrices"),
           "forest": (forest_plot, "AUROC by subgroup")}
