"""What a GPU check decides: each lever against the baseline (:func:`lever_verdicts`, and
the combination of those that won, :func:`combine_levers`), and the targets read off its
document (:func:`verdicts`): each figure, its goal, met or not.

    python -m vertex_jax.bench.gpu_verdicts benchmarks/results/gpu_check_h200_run1.json

The targets (one GPU, one run of the check, the peer in the same run, the check's batch):
JAX training at least 1.1x ``torch.compile`` (stretch 1.3x) with its runs within 3%; the
first compile of the training step at most 60 s (cold, and in a fresh cache given only
autotuning results, as they ship), a second process at most 10 s; the real loop at least
95% of the isolated step and its input alone at least 1,000 images/s; evaluation at least
1,500 images/s; training memory no more than the peer's. A figure the document lacks (its
point did not run) is reported as not measured, never as missed.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from vertex_jax.bench.gpu_points import BASELINE, LOOP, Point

__all__ = ["lever_verdicts", "combine_levers", "verdicts", "format_verdicts", "main"]

GiB = 2**30


def _memory(result: dict[str, Any], prefix: str = "") -> dict[str, int | None]:
    record = result["record"]
    return {f"{prefix}peak_bytes": record.get("peak_bytes"), f"{prefix}plan_bytes": record.get("xla_memory_bytes")}


def lever_verdicts(points: Sequence[Point], results: dict[str, dict[str, Any]], baseline: str
                   ) -> dict[str, dict[str, Any]]:
    """Each measured lever's images/s against the baseline's and whether it won: faster by
    more than the larger of the two points' run-to-run spreads (and at least 1%). The
    baseline is its warm rerun when measured (the cold run shares the host with the peer's
    compile), else ``baseline`` itself. A memory lever is read by its program's XLA memory
    plan and its process's peak bytes (None where the backend reports none, as on CPUs)
    beside the baseline's; the peak is the point's own only if it ran alone (``isolate``),
    since points of one group share a process."""
    candidates = [results.get(f"{baseline}-warm", {}), results.get(baseline, {})]
    base = next((c for c in candidates if c.get("status") == "ok"), None)
    if base is None:
        return {}
    b = base["record"]
    verdicts = {}
    for p in points:
        r = results.get(p.name, {})
        if not p.lever or r.get("status") != "ok":
            continue
        rec = r["record"]
        ratio = rec["images_per_s"] / b["images_per_s"]
        margin = max(0.01, rec["run_spread"], b["run_spread"])
        verdicts[p.name] = {"ratio": ratio, "margin": margin, "wins": ratio > 1 + margin,
                            "overrides": p.overrides, "xla": p.xla,
                            **_memory(r), **_memory(base, "baseline_")}
    return verdicts


def combine_levers(point: Point, verdicts: dict[str, dict[str, Any]]) -> Point:
    """``point`` with the overrides and XLA presets of every winning lever (a ``combo``
    point becomes a training-step point; several winning presets are joined with ``+``)."""
    overrides, xla = dict(point.overrides), point.xla
    for v in verdicts.values():
        if v["wins"]:
            overrides.update(v["overrides"])
            if v["xla"] != point.xla:
                xla = v["xla"] if xla == point.xla else f"{xla}+{v['xla']}"
    return dataclasses.replace(point, kind="jax" if point.kind == "combo" else point.kind,
                               overrides=overrides, xla=xla)


def _row(target: str, value: float | None, goal: float | None, unit: str, source: str,
         at_most: bool = False, note: str = "") -> dict[str, Any]:
    met = None if value is None or goal is None else (value <= goal if at_most else value >= goal)
    bound = "the peer's" if goal is None else f"{goal:.4g}{unit}"
    return {"target": target, "value": value, "goal": f"{'<=' if at_most else '>='} {bound}",
            "met": met, "source": source, "note": note}


def _loop_figures(loop_doc: dict[str, Any]) -> tuple[float | None, float | None, dict[str, Any] | None]:
    """(loop / its isolated step, the input alone's images/s, the first run's stall every
    logging period, bench.loop.periodic_stall) of one loop point's result."""
    loop = next((r for r in loop_doc.get("records", []) if r["what"] == "loop"), None)
    step = next((r for r in loop_doc.get("records", []) if r["what"] == "train"), None)
    first_point = (loop_doc.get("loop_runs") or [{}])[0]
    return (loop["images_per_s"] / step["images_per_s"] if loop and step else None,
            (first_point.get("input") or {}).get("images_per_s"),
            ((first_point.get("runs") or [{}])[0]).get("stall"))


def _loop_rows(loops: dict[str, dict[str, Any]], default: str) -> list[dict[str, Any]]:
    """The loop's targets from the loop points' results (``default``: the loop as
    configured): the better loop / step ratio, naming the others, and the input alone."""
    figures = {name: _loop_figures(result) for name, result in loops.items()}
    best = max((n for n in figures if figures[n][0] is not None), key=lambda n: figures[n][0], default=None)
    first = next(iter(figures), default)
    notes = [f"{n} {r:.3f}" for n, (r, _, _) in figures.items() if r is not None and n != best]
    if best and best != default:
        notes.insert(0, "a setting off by default")
    stall = figures[best][2] if best else None
    if stall:  # the host's work showing every logging period
        notes.insert(0, f"every {stall['period']} steps the slowest {1e3 * stall['slowest_position_s']:.1f} ms "
                        f"against a median {1e3 * stall['median_s']:.1f}")
    return [_row("loop / isolated step", figures[best][0] if best else None, 0.95, "", best or first,
                 note=", ".join(notes)),
            _row("input alone, images/s", figures[first][1] if first in figures else None, 1000, "", first)]


def verdicts(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per target of the module docstring: ``target``, ``value``, ``goal``, ``met``
    (None: not measured, or a dry run's figure), ``source`` (the point or points read) and
    ``note``."""
    records = doc.get("records", [])
    points = {p["name"]: p for p in doc.get("points", [])}
    trains = [p["batch"] for p in points.values() if p["kind"] in ("jax", "peer") and p.get("what") == "train"]
    # the check's batch; documents before it was written: their smallest training batch
    batch = doc.get("config", {}).get("batch") or (min(trains) if trains else None)
    base = BASELINE.format(batch=batch)
    by_point = {r["options"].get("point"): r for r in records}
    jax_train = [r for r in records if r["framework"] == "jax" and r["what"] == "train" and r["batch"] == batch]
    peer = next((r for r in records if r["framework"] == "torch" and r["batch"] == batch), None)
    baseline = by_point.get(base)

    def ratio(r: dict[str, Any] | None) -> float | None:
        return r["images_per_s"] / peer["images_per_s"] if r and peer else None

    best = max(jax_train, key=lambda r: r["images_per_s"], default=None)
    rows = [_row("training / torch.compile (baseline)", ratio(baseline), 1.1, "x", f"{base} / peer",
                 note="stretch 1.3x"),
            _row("training / torch.compile (fastest point)", ratio(best), 1.1, "x",
                 f"{best['options'].get('point') if best else '-'} / peer", note="stretch 1.3x"),
            _row("training runs' spread (baseline)", baseline and baseline["run_spread"], 0.03, "",
                 base, at_most=True)]

    def compile_row(target: str, name: str, goal: float) -> dict[str, Any]:
        r, point = by_point.get(name), points.get(name, {})
        value = r["compile_s"] if r else point.get("compile_s")  # a point killed while timing keeps it
        notes = [f"XLA preset {point['xla']}"] if "xla" in point else []
        if point.get("seeded_autotune_results") is not None:
            notes.append(f"{point['seeded_autotune_results']} autotuning results given")
        return _row(target, value, goal, " s", name, at_most=True, note="; ".join(notes))
    rows += [compile_row("first compile, cold cache", base, 60),
             compile_row("first compile, shipped autotuning results", f"{base}-autotune-seeded-cold", 60),
             compile_row("compile in a second process", f"{base}-warm", 10)]

    # documents before the second loop point held one loop, as "loop"
    loops = doc.get("loops") or ({LOOP.format(batch=batch): doc["loop"]} if doc.get("loop") else {})
    rows += _loop_rows(loops, LOOP.format(batch=batch))

    evals = [r for r in records if r["framework"] == "jax" and r["what"] == "eval"]
    fastest_eval = max(evals, key=lambda r: r["images_per_s"], default=None)
    rows.append(_row("evaluation, images/s", fastest_eval and fastest_eval["images_per_s"], 1500, "",
                     fastest_eval["options"].get("point") if fastest_eval else "-"))

    def peak(r: dict[str, Any] | None) -> float | None:
        return r["peak_bytes_per_device"] / GiB if r and r.get("peak_bytes_per_device") else None
    limit = peak(peer)
    leanest = min((r for r in jax_train if peak(r)), key=peak, default=None)
    for label, r in (("baseline", baseline), ("leanest point", leanest)):
        rows.append(_row(f"training memory, GiB ({label})", peak(r), limit, "",
                         f"{r['options'].get('point') if r else '-'} / peer", at_most=True))
    if doc.get("mode") == "dry":  # the tiny config on a CPU: figures, but no verdict on a GPU's goals
        rows = [{**row, "met": None} for row in rows]
    return rows


def _value(row: dict[str, Any]) -> str:
    v = row["value"]
    return "-" if v is None else (f"{v:.1%}" if "spread" in row["target"] else f"{v:.4g}")


def format_verdicts(rows: Sequence[dict[str, Any]]) -> str:
    """A fixed-width table of :func:`verdicts`."""
    lines = [f"{'target':<44} {'value':>9} {'goal':>13}  {'':<12} source"]
    for row in rows:
        status = ("not measured" if row["value"] is None else
                  {True: "met", False: "MISSED", None: "dry run"}[row["met"]])
        note = f" ({row['note']})" if row["note"] else ""
        lines.append(f"{row['target']:<44} {_value(row):>9} {row['goal']:>13}  {status:<12} "
                     f"{row['source']}{note}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    paths = list(sys.argv[1:] if argv is None else argv)
    if not paths:
        raise SystemExit("usage: python -m vertex_jax.bench.gpu_verdicts GPU_CHECK.json [...]")
    for path in paths:
        print(f"{path}:\n{format_verdicts(verdicts(json.loads(Path(path).read_text())))}\n")


if __name__ == "__main__":
    main()
