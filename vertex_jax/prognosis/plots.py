"""Figures drawn from the analysis dictionary (matplotlib object API, no pyplot state)."""

from __future__ import annotations

import io
import math

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FormatStrFormatter, NullFormatter

_COLOURS = {"positive": "#c0392b", "negative": "#2c7fb8", "clinical": "#7f7f7f",
            "clinical + DL": "#d95f02", "treat all": "#1b9e77", "treat none": "#000000"}


def png_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def km_figure(score: str, km: dict, horizon: float) -> Figure:
    """Cumulative incidence (1 - KM) with 95% bands for DL-positive and negative, numbers at risk."""
    fig = Figure(figsize=(6.4, 4.8))
    ax = fig.add_axes((0.12, 0.30, 0.84, 0.62))
    ticks = km["at_risk_times"]
    for group, entry in km["groups"].items():
        if "curve" not in entry:
            continue
        c = entry["curve"]
        label = f"DL-{group} (n={entry['n']}, events={entry['events']})"
        ax.step(c["time"], 1 - np.asarray(c["survival"]), where="post", color=_COLOURS[group], label=label)
        ax.fill_between(c["time"], 1 - np.asarray(c["low"]), 1 - np.asarray(c["high"]), step="post",
                        color=_COLOURS[group], alpha=0.15, linewidth=0)
    ax.axvline(horizon, color="grey", linestyle=":", linewidth=1)
    p = km["logrank"]["p"]
    ptext = "n/a" if p is None or not math.isfinite(p) else f"{p:.2g}"
    ax.set_title(f"{score} >= {km['threshold']:.3g}: log-rank p = {ptext}")
    ax.set_ylabel("cumulative incidence of fracture")
    ax.set_xlabel("years since baseline")
    ax.set_xlim(0, ticks[-1] if len(ticks) > 1 else None)
    ax.set_xticks(ticks)
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    table = fig.add_axes((0.12, 0.02, 0.84, 0.12))
    table.set_axis_off()
    table.set_xlim(ax.get_xlim())
    table.set_ylim(0, 2)
    table.text(ax.get_xlim()[0], 2.1, "at risk", fontsize=8, va="bottom")
    for row, (group, entry) in enumerate(km["groups"].items()):
        for t, count in zip(ticks, entry.get("at_risk", [0] * len(ticks))):
            table.text(t, 1.4 - row, str(count), ha="center", fontsize=8, color=_COLOURS[group])
    return fig


def decision_curve_figure(dca: dict, horizon: float) -> Figure:
    """Net benefit against threshold probability for both models, treat-all and treat-none."""
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.add_subplot()
    pt = dca["thresholds"]
    for name in ("clinical", "clinical + DL", "treat all", "treat none"):
        style = "--" if name.startswith("treat") else "-"
        ax.plot(pt, dca[name], style, color=_COLOURS[name], label=name)
    top = max(dca["treat all"][0], max(dca["clinical + DL"]), 1e-3)
    ax.set_ylim(-0.5 * top, 1.15 * top)
    ax.set_xlabel(f"threshold probability (fracture within {horizon:g} years)")
    ax.set_ylabel("net benefit")
    ax.set_title("Decision curve")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def forest_figure(rows: list[dict]) -> Figure:
    """Hazard ratios with 95% CI on a log axis, one line per score x coding x adjustment."""
    rows = [r for r in rows if r["hr"] is not None and math.isfinite(r["hr"])]
    fig = Figure(figsize=(6.4, 0.9 + 0.35 * max(len(rows), 1)))
    ax = fig.add_subplot()
    y = np.arange(len(rows))[::-1]
    for yi, r in zip(y, rows):
        colour = "#d95f02" if r["adjustment"] == "adjusted" else "#2c7fb8"
        ax.plot([r["ci_low"], r["ci_high"]], [yi, yi], color=colour)
        ax.plot([r["hr"]], [yi], "s", color=colour)
    ax.axvline(1.0, color="grey", linewidth=1)
    ax.set_xscale("log")
    lo = min([1.0, *(r["ci_low"] for r in rows)])
    hi = max([1.0, *(r["ci_high"] for r in rows)])
    nice = [0.1, 0.2, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 4, 5, 7.5, 10, 20, 50, 100]
    ax.xaxis.set_major_locator(FixedLocator([t for t in nice if lo / 1.5 <= t <= hi * 1.5]))
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_yticks(y, [f"{r['score']} {r['coding']} ({r['adjustment']})" for r in rows], fontsize=8)
    ax.set_xlabel("hazard ratio (95% CI)")
    ax.grid(alpha=0.3, axis="x")
    return fig
