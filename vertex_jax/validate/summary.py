"""validation.md: the internal-vs-external table and the site recalibration, for people."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _num(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _with_ci(value: float | None, ci, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    return _num(value, digits) + ("" if not ci else f" ({_num(ci[0], digits)} to {_num(ci[1], digits)})")


def _table(rows: list[dict], left: str, right: str, difference: bool) -> list[str]:
    head = f"| metric | {left} (95% CI) | {right} (95% CI) |" + (" difference (95% CI) |" if difference else "")
    lines = [head, "|---" * (4 if difference else 3) + "|"]
    for r in rows:
        line = f"| {r['metric']} | {_with_ci(r['internal'], r['internal_ci'])} | {_with_ci(r['external'], r['external_ci'])} |"
        if difference:
            d = r["difference"]
            line += f" {_with_ci(d['value'], d['ci'])} |"
        lines.append(line)
    return lines


def render(validation: Mapping[str, Any]) -> str:
    """The markdown page of a validation.json."""
    c = validation["cohort"]
    lines = [f"# External validation of {validation['run']} (step {validation['step']})", "",
             f"Cohort: {c['description']}; {c['cases']} case(s)."
             + (f" Generated in {c['generate_s']:.0f} s," if c.get("generate_s") is not None else "")
             + f" scored in {validation['score_s']:.0f} s.", ""]
    for task, t in validation["tasks"].items():
        lines += [f"## {task}", "", f"Internal test: n={t['internal_n']} ({t['internal_positives']} positive); "
                  f"external: n={t['external_n']} ({t['external_positives']} positive). Thresholds chosen on "
                  "the internal validation split.", ""]
        lines += _table(t["rows"], "internal", "external", difference=True) + [""]
    site = validation.get("site")
    if site:
        lines += ["## Site recalibration", "", f"{site['method']} fitted on {site['local_cases']} local case(s), "
                  f"thresholds re-chosen there; judged on the other {site['rest_cases']} case(s). The weights are "
                  "unchanged.", ""]
        for task, rows in site["tasks"].items():
            lines += [f"### {task}", ""] + _table(rows, "before", "after", difference=False) + [""]
    return "\n".join(lines)
