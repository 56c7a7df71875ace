"""The clinical model card as Markdown: ``RUN/model_card.md`` beside ``model_card.json``.

:func:`render_card` turns the card's JSON (tasks, preprocessing, training data, calibration),
the run's ``summary.json`` and its ``evaluation/report.json`` into one page: intended use,
training data (with "synthetic data only" where true), model, performance with intervals,
calibration and limitations. It is a pure function of those dicts; :func:`write_run_card`
reads them from a run and writes the page. Every command that changes what the page says
rewrites it: training (when it starts and when it ends), ``evaluate`` (when it writes the
run's ``evaluation/``) and ``calibrate`` (with the card's calibration), so it is never
older than its sources; ``export`` renders it for the exported step into each model folder.

Imports nothing heavier than the run's file names, so any part may call it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vertex_jax.files import write_text
from vertex_jax.run_layout import CARD_FILE, CARD_MARKDOWN_FILE, EVALUATION, REPORT_FILE, SUMMARY_FILE

TASK_NAMES = {"pvf": "prevalent vertebral fracture (pVF)",
              "osteo": "osteoporosis (T-score ≤ -2.5)"}
DOMAIN_NAMES = {"xray": "lateral spine radiograph", "vfa": "DXA vertebral fracture assessment (VFA) image"}
SMALL = 50  # positives under which an interval is called wide


def _f(value: Any, digits: int = 3) -> str:
    """A number, or "n/a" where there is none (None, NaN)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def _ci(ci: Sequence[float] | None, digits: int = 3) -> str:
    return f"{ci[0]:.{digits}f} to {ci[1]:.{digits}f}" if ci else "n/a"


def _with_ci(entry: Mapping[str, Any] | None, digits: int = 3) -> str:
    """``value (lo–hi)`` of a ``{"value", "ci"}`` entry."""
    entry = entry or {}
    return f"{_f(entry.get('value'), digits)} ({_ci(entry.get('ci'), digits)})"


def _share(k: int, n: int) -> str:
    return f"{k}/{n} ({k / n:.0%})" if n else "no labels"


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
            *("| " + " | ".join(row) + " |" for row in rows)]


def _title(card: Mapping[str, Any]) -> str:
    tasks = ", ".join(card.get("tasks", [])) or "?"
    return f"# Model card: VERTE-X {tasks} ({card.get('variant', '?')}, {card.get('domain', '?')})"


def _intended_use(card: Mapping[str, Any]) -> list[str]:
    domain = DOMAIN_NAMES.get(card.get("domain"), f"{card.get('domain')} image")
    tasks = "; ".join(TASK_NAMES.get(t, t) for t in card.get("tasks", []))
    clinical = ("the patient's age, sex and BMI where known (missing values are allowed)"
                if card.get("use_clinical") else "no clinical values (the image alone)")
    return [
        "## Intended use", "",
        "**Research software, not for clinical use.** It is not a medical device and has no "
        "regulatory clearance; its scores must not guide the diagnosis or care of a patient.", "",
        f"- Estimates, from one adult {domain}, the probability of: {tasks}.",
        f"- Inputs: one single-frame greyscale image (DICOM, PNG, JPEG, TIFF) and {clinical}.",
        "- Users: researchers evaluating opportunistic screening on their own, labelled data; "
        "re-check discrimination and calibration on a site's own cases before reading any "
        "probability as a risk (`python -m vertex_jax.calibrate --workdir RUN --manifest LOCAL.csv`).",
        "- Out of scope: other views (AP, oblique), other body parts, children, images the input "
        "check flags (its `input_check` column), and any decision about an individual patient.", ""]


def _training_data(card: Mapping[str, Any]) -> tuple[list[str], bool | None]:
    """The section and whether the data were synthetic (None: not recorded)."""
    data = card.get("training_data")
    lines = ["## Training data", ""]
    if not data:
        return lines + ["Not recorded in this card (the run was trained before vertex_jax recorded "
                        "its training data).", ""], None
    generator = data.get("generator") or {}
    if data.get("synthetic"):
        how = ("the built-in synthetic cohort (`data.manifest` empty)" if generator.get("built_in")
               else f"a synthetic cohort written by `python -m vertex_jax.synthetic` (`{data['manifest']}`)")
        settings = ", ".join(f"{k} {generator[k]}" for k in ("num_patients", "scale", "seed") if k in generator)
        lines += [f"**Synthetic data only**: {how}" + (f"; {settings}" if settings else "") + ". "
                  "No patient image was used; the figures below say nothing about real radiographs.", ""]
    else:
        lines += [f"Manifest: `{data.get('manifest')}`.", ""]
    splits = data.get("splits") or {}
    tasks = list(card.get("tasks", []))
    order = {data.get("train_split"): 0, data.get("val_split"): 1}  # then the others by name
    rows = []
    for name, s in sorted(splits.items(), key=lambda item: (order.get(item[0], 2), item[0])):
        role = {data.get("train_split"): " (training)", data.get("val_split"): " (validation)"}.get(name, "")
        rows.append([f"{name}{role}", str(s["patients"]), str(s["images"]),
                     *(_share(s[t]["positives"], s[t]["labelled"]) for t in tasks if t in s)])
    if rows:
        lines += _table(["split", "patients", "images", *(f"{t} positive (prevalence)" for t in tasks)], rows)
        lines.append("")
    stats = card.get("clinical_stats") or {}
    mean, std = stats.get("mean"), stats.get("std")
    if mean and std and len(mean) == 3:
        lines += [f"Training split: age {mean[0]:.1f} ± {std[0]:.1f} years, {mean[1]:.0%} female, "
                  f"BMI {mean[2]:.1f} ± {std[2]:.1f} kg/m² (mean ± SD; the inputs are normalised with these).", ""]
    return lines, bool(data.get("synthetic"))


def _model(card: Mapping[str, Any], step: int | None) -> list[str]:
    pre = card.get("preprocess") or {}
    canvas = pre.get("canvas") or ["?", "?"]
    fusion = ("image features fused with age, sex and BMI (`model.use_clinical`)" if card.get("use_clinical")
              else "the image alone (`model.use_clinical` off)")
    lines = ["## Model", "",
             f"- Network: `{card.get('variant', '?')}`, head `{card.get('head', 'gap')}`"
             + (", with the vertebra head" if card.get("vertebrae") else "") + f"; {fusion}.",
             f"- Input canvas {canvas[0]}×{canvas[1]} (height × width), border crop "
             f"{pre.get('border_crop', '?')}, histogram equalisation {'on' if pre.get('equalize', True) else 'off'}, "
             f"stored as {pre.get('out_dtype', '?')}.",
             f"- Tasks: {', '.join(card.get('tasks', []))}; trained with vertex_jax {card.get('vertex_jax', '?')}."]
    if step is not None:
        lines.append(f"- This card describes checkpoint step {step}.")
    return lines + [""]


def _evaluated_steps(model: Mapping[str, Any]) -> list[str]:
    return [str(s) for s in model.get("model_step", [])]


def _performance(summary: Mapping[str, Any] | None, evaluation: Mapping[str, Any] | None,
                 evaluation_stale: bool, step: int | None) -> list[str]:
    lines = ["## Performance", ""]
    if evaluation and evaluation.get("models"):
        label, model = next(iter(evaluation["models"].items()))
        settings = evaluation.get("settings", {})
        level = settings.get("confidence_level", 0.95)
        lines += [f"From `{EVALUATION}/{REPORT_FILE}` (model `{label}`, split `{settings.get('eval_split')}`, "
                  f"thresholds chosen on `{settings.get('thresholds')}`, {settings.get('bootstrap')} bootstrap "
                  f"resamples; {level:.0%} intervals: DeLong for AUROC, Wilson for proportions).", ""]
        scored = _evaluated_steps(model)
        if step is not None and scored and scored != [str(step)]:
            lines += [f"**Note:** the evaluation scored step(s) {', '.join(scored)}, not step {step}.", ""]
        if evaluation_stale:
            lines += ["**Note:** the evaluation report is older than this model card (calibration refitted or "
                      "training resumed since): its calibration figures and thresholds may no longer hold; run "
                      "`python -m vertex_jax.evaluate --workdir RUN` again.", ""]
        rows = []
        for task, r in model.get("tasks", {}).items():
            o = r.get("overall", {})
            auroc, youden, cal = o.get("auroc", {}), o.get("operating_points", {}).get("youden", {}), \
                o.get("calibration", {})
            rows.append([task, f"{o.get('n')} ({o.get('positives')})",
                         f"{_f(auroc.get('value'))} ({_ci((auroc.get('delong') or {}).get('ci'))})",
                         _f(youden.get("threshold")), _with_ci(youden.get("sensitivity")),
                         _with_ci(youden.get("specificity")), _f(cal.get("brier")),
                         f"{_f(cal.get('slope'), 2)} ({_ci(cal.get('slope_ci'), 2)})",
                         _with_ci(cal.get("ece"))])
        lines += _table(["task", "n (positive)", "AUROC (CI)", "Youden threshold", "sensitivity (CI)",
                         "specificity (CI)", "Brier", "calibration slope (CI)", "ECE (CI)"], rows)
        lines.append("")
        lines += [f"- {note}" for note in evaluation.get("notes", [])]
        lines += ["Subgroups (sex, age bands, BMI) and the figures: `evaluation/report.html`.", ""]
        return lines
    if summary and summary.get("best_step", -1) >= 0:
        best = summary["best_step"]
        history = {h.get("step"): h for h in summary.get("history", [])}
        shown = step if step in history else best
        per_task = {k: v for k, v in history.get(shown, {}).items() if k not in ("epoch", "step")}
        figures = ", ".join(f"{t} {_f(v)}" for t, v in per_task.items()) or \
            f"mean {_f(summary.get('best_val_auroc'))}"
        lines += ["No evaluation report yet. Validation AUROC at step "
                  f"{shown}{' (the best)' if shown == best else ''}, from `{SUMMARY_FILE}`: {figures}. These are "
                  "point estimates on the split that chose the checkpoint (optimistic), without intervals; "
                  "`python -m vertex_jax.evaluate --workdir RUN` reports the test split with 95% intervals.", ""]
        return lines
    return lines + ["No figures yet: training has not finished (no `summary.json`) and no evaluation was run.", ""]


def _calibration(card: Mapping[str, Any]) -> list[str]:
    lines = ["## Calibration", ""]
    cal = card.get("calibration")
    if not cal:
        return lines + ["None: the probabilities are the network's sigmoid outputs, not fitted to any "
                        "population's risk (`python -m vertex_jax.calibrate --workdir RUN` fits one).", ""]
    fitted = cal.get("fitted_on", {})
    where = (f"the site manifest `{fitted.get('manifest')}`" if fitted.get("split") == "site"
             else f"split `{fitted.get('split')}`")
    lines += [f"Method `{fitted.get('method')}`, fitted on {where}"
              + (f" ({fitted.get('domain')})" if fitted.get("domain") else "")
              + (f" with the outputs of step {fitted['step']}" if "step" in fitted else "") + ":", ""]
    rows = [[task, m.get("method", "?"), str(m.get("n")), str(m.get("positives"))]
            for task, m in cal.get("tasks", {}).items()]
    lines += _table(["task", "map", "cases", "positives"], rows)
    history = card.get("calibration_history") or []
    if history:
        lines += ["", f"It replaced {len(history)} earlier calibration(s), kept in `{CARD_FILE}`."]
    return lines + [""]


def _limitations(card: Mapping[str, Any], synthetic: bool | None,
                 evaluation: Mapping[str, Any] | None) -> list[str]:
    lines = ["## Limitations", ""]
    if synthetic:
        lines.append("- **Trained on synthetic images only.** Rendered phantoms are not radiographs: nothing here "
                     "shows how the model does on patients; it demonstrates the software, not a screening tool.")
    elif synthetic is None:
        lines.append("- The training data are not recorded in this card: check the run's `config.json`.")
    else:
        lines.append("- One cohort: performance and calibration may not carry over to other sites, scanners, "
                     "populations or prevalences; validate (`python -m vertex_jax.validate`) and recalibrate "
                     "per site.")
    small = [t for m in (evaluation or {}).get("models", {}).values() for t, r in m.get("tasks", {}).items()
             if r.get("overall", {}).get("positives", SMALL) < SMALL]
    if small:
        lines.append(f"- Few positive cases in the evaluation ({', '.join(sorted(set(small)))}: under {SMALL}): "
                     "the intervals are wide.")
    lines += ["- Operating-point thresholds were chosen on the validation split; they fix a sensitivity or "
              "specificity only for a population like it.",
              "- One lateral image per call: no comparison with earlier studies, no vertebral levels unless the "
              "vertebra head is on; the evidence maps are explanations, not segmentations.",
              "- Labels (fracture reads, DXA T-scores) carry their own errors; the scores inherit them.", ""]
    return lines


def render_card(card: Mapping[str, Any], *, summary: Mapping[str, Any] | None = None,
                evaluation: Mapping[str, Any] | None = None, evaluation_stale: bool = False,
                step: int | None = None, export: Mapping[str, Any] | None = None) -> str:
    """The Markdown model card of ``card`` (``model_card.json`` or a step's card item), with the
    run's ``summary`` (summary.json) and ``evaluation`` (evaluation/report.json) where there are
    any; ``evaluation_stale``: the report is older than the card; ``step``: the checkpoint the
    page describes; ``export``: lines about the export (``{"step", "thresholds_source"}``)."""
    data_lines, synthetic = _training_data(card)
    lines = [_title(card), ""]
    if synthetic:
        lines += ["> Synthetic data only: trained on rendered phantoms, not on patient images.", ""]
    lines += _intended_use(card) + data_lines + _model(card, step)
    lines += _performance(summary, evaluation, evaluation_stale, step) + _calibration(card)
    if export:
        lines += ["## Export", "",
                  f"Exported from checkpoint step {export.get('step')} by `python -m vertex_jax.export`; the "
                  f"operating-point thresholds in `model.json` come from {export.get('thresholds_source')}.", ""]
    lines += _limitations(card, synthetic, evaluation)
    return "\n".join(lines).rstrip() + "\n"


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def run_sources(workdir: str | Path) -> dict[str, Any]:
    """The run's summary and evaluation report (None where absent) and whether the report is
    older than the run's ``model_card.json``: :func:`render_card`'s keyword arguments."""
    workdir = Path(workdir)
    report = workdir / EVALUATION / REPORT_FILE
    evaluation = _read(report)
    card = workdir / CARD_FILE
    stale = bool(evaluation) and card.is_file() and report.stat().st_mtime < card.stat().st_mtime
    return {"summary": _read(workdir / SUMMARY_FILE), "evaluation": evaluation, "evaluation_stale": stale}


def write_run_card(workdir: str | Path) -> Path | None:
    """Render ``RUN/model_card.md`` from the run's files; returns it (None: no model_card.json)."""
    workdir = Path(workdir)
    card = _read(workdir / CARD_FILE)
    if card is None:
        return None
    sources = run_sources(workdir)
    summary = sources["summary"] or {}
    best = summary.get("best_step")
    out = workdir / CARD_MARKDOWN_FILE
    write_text(out, render_card(card, step=best if isinstance(best, int) and best >= 0 else None, **sources))
    return out


def run_of_evaluation(out_dir: str | Path) -> Path | None:
    """The run whose ``evaluation/`` folder ``out_dir`` is (it has a model_card.json), else None."""
    out_dir = Path(out_dir).absolute()
    return out_dir.parent if out_dir.name == EVALUATION and (out_dir.parent / CARD_FILE).is_file() else None
