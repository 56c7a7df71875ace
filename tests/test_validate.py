"""External validation: declared shifts, the external report, site recalibration.

The commands run in-process on a checkpoint written without training (tests/checkpoints.py),
so the model compiles once for the module."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from configs.xray import get_config
from vertex_jax.calibrate.cases import case_keys, draw_local
from vertex_jax.errors import ConfigError
from vertex_jax.evaluate.intervals import wilson
from vertex_jax.synthetic.cohort import MANIFEST_COLUMNS, generate_cohort
from vertex_jax.synthetic.shifts import SHIFTS, apply_shift
from vertex_jax.validate.cohort import cohort_settings, external_cohort
from vertex_jax.validate.differences import mover

SMALL = {"scale": 0.05, "workers": 1}


@pytest.mark.parametrize("name", sorted(SHIFTS))
def test_a_shift_changes_what_it_declares_and_nothing_else(name, tmp_path):
    preset = SHIFTS[name]
    base_options = {"repeat_fraction": 0.0}
    base = generate_cohort(tmp_path / "base", num_patients=8, seed=3, **SMALL, **base_options)
    options, formats = apply_shift(base_options, "mix", name)
    shifted = generate_cohort(tmp_path / name, num_patients=8, seed=3, formats=formats, **SMALL, **options)
    a, b = (pd.read_csv(m, dtype=str, keep_default_na=False) for m in (base, shifted))
    differ = {c for c in MANIFEST_COLUMNS if not a[c].equals(b[c])} - {"path"}
    assert differ <= set(preset.changes), f"{name} changed undeclared columns {differ - set(preset.changes)}"
    boxes = [json.loads((m.parent / "annotations.json").read_text()) for m in (base, shifted)]
    assert (boxes[0] != boxes[1]) == preset.changes_annotations
    # ... and it does change what it declares
    if name == "scanner":
        assert {"vendor", "photometric"} <= differ and "Agfa" not in set(b["vendor"])
        assert set(b["format"]) == {"dicom"}
    elif name == "population":
        assert b["age"].astype(float).mean() > a["age"].astype(float).mean()
        assert b["t_score"].astype(float).mean() < a["t_score"].astype(float).mean()
    else:
        assert not any(a[c].equals(b[c]) for c in ("pixel_spacing_mm",))


def test_mover_reproduces_newcombes_worked_example_and_the_wald_case():
    # Newcombe (1998), Stat Med 17:873, example (a): 56/70 - 48/80, method 10: 0.0524 to 0.3339.
    d = mover(56 / 70, wilson(56, 70), 48 / 80, wilson(48, 80))
    assert d["value"] == pytest.approx(0.2) and d["ci"] == pytest.approx([0.0524, 0.3339], abs=5e-5)
    # Symmetric intervals: d +- sqrt(h1^2 + h2^2).
    d = mover(0.8, [0.7, 0.9], 0.9, [0.85, 0.95])
    assert d["ci"] == pytest.approx([-0.1 - np.hypot(0.1, 0.05), -0.1 + np.hypot(0.1, 0.05)])
    assert mover(0.8, None, 0.9, [0.8, 1.0]) == {"value": pytest.approx(-0.1), "ci": None}


def test_the_external_cohort_has_its_own_seed_ids_and_is_reused(tmp_path):
    config = get_config("tiny")
    with pytest.raises(ConfigError, match="training cohort's seed"):
        cohort_settings(config, n=20, seed=config.data.synthetic.seed, shift=None)
    settings = cohort_settings(config, n=12, seed=4, shift="acquisition")
    settings["scale"] = 0.05
    lines = []
    manifest = external_cohort(tmp_path, settings, workers=1, log=lines.append)
    rows = pd.read_csv(manifest, dtype=str)
    assert len(rows) == 12 and rows["image_id"].str.startswith("acquisition4-P").all()
    assert json.loads((tmp_path / "truth.json").read_text())["config"]["dose"] == SHIFTS["acquisition"].options["dose"]
    stamp = manifest.stat().st_mtime_ns
    external_cohort(tmp_path, settings, workers=1, log=lines.append)
    assert "reusing" in lines[-1] and manifest.stat().st_mtime_ns == stamp
    external_cohort(tmp_path, {**settings, "num_patients": 13}, workers=1, log=lines.append)
    assert "generating" in lines[-1] and len(pd.read_csv(manifest)) == 13


def test_a_run_without_its_internal_evaluation_is_told_how_to_make_it(tmp_path, capsys):
    from vertex_jax.validate.__main__ import main as validate

    (tmp_path / "config.json").write_text(get_config("tiny").to_json_best_effort())
    assert validate(["--workdir", str(tmp_path), "--out", str(tmp_path / "v")]) == 2
    err = capsys.readouterr().err
    assert "no internal evaluation" in err and f"python -m vertex_jax.evaluate --workdir {tmp_path}" in err


def test_a_local_sample_is_whole_patients():
    patients = ["a", "a", "b", "c", "c", "c", "d", "e"]
    mask = draw_local(patients, 3, seed=1)
    chosen = {p for p, m in zip(patients, mask) if m}
    assert mask.sum() >= 3 and all(m == (p in chosen) for p, m in zip(patients, mask))
    assert (draw_local(patients, 3, seed=1) == mask).all() and draw_local(patients, 99).all()


# --- the commands, on one checkpoint ---------------------------------------------------------


def _arrays_digest(step_dir: Path) -> str:
    """Every file of the step except its JSON card and metadata."""
    h = hashlib.sha256()
    for path in sorted(p for p in step_dir.rglob("*") if p.is_file() and "card" not in p.parts
                       and not p.name.startswith("_")):
        h.update(path.relative_to(step_dir).as_posix().encode() + path.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def validated(tmp_path_factory):
    """A run with an internal evaluation, validated on a scanner-shifted cohort with a site
    recalibration on 8 of its 24 cases."""
    from checkpoints import write_checkpoint
    from vertex_jax.evaluate.report import build_report
    from vertex_jax.predict.run_scores import score_manifest
    from vertex_jax.validate.__main__ import main as validate

    root = tmp_path_factory.mktemp("validate")
    run = write_checkpoint(root / "run")
    config = get_config("tiny")
    config.tasks = "pvf,osteo"
    config.data.synthetic.scale = 0.05
    (run / "config.json").write_text(config.to_json_best_effort())
    internal = generate_cohort(root / "internal", num_patients=20, seed=9, **SMALL)
    scores = score_manifest(run, internal, progress=False)
    scores["split"] = "test"
    build_report(scores, run / "evaluation", eval_split="all", thresholds_on_eval=True, bootstrap=50)
    out = root / "out"
    assert validate(["--workdir", str(run), "--out", str(out), "--shift", "scanner", "--n", "24", "--seed", "3",
                     "--recalibrate", "8", "--bootstrap", "50", "--no-progress"]) == 0
    return run, out


def test_the_external_report_is_evaluates_on_the_same_scores(validated, tmp_path):
    from vertex_jax.evaluate.__main__ import main as evaluate

    run, out = validated
    assert evaluate(["--scores", str(out / "report" / "scores.csv"), "--split", "all", "--thresholds",
                     str(run / "evaluation" / "thresholds.json"), "--bootstrap", "50", "--out", str(tmp_path)]) == 0
    mine, theirs = (json.loads((d / "report.json").read_text()) for d in (out / "report", tmp_path))
    assert mine["models"]["model"]["tasks"] == theirs["models"]["model"]["tasks"]
    validation = json.loads((out / "validation.json").read_text())
    assert validation["shift"] == "scanner" and "vendors never seen" in validation["cohort"]["description"]
    internal = json.loads((run / "evaluation" / "report.json").read_text())
    for task, t in validation["tasks"].items():
        auroc = next(r for r in t["rows"] if r["metric"] == "auroc")
        ext = next(iter(mine["models"].values()))["tasks"][task]["overall"]["auroc"]["value"]
        inside = next(iter(internal["models"].values()))["tasks"][task]["overall"]["auroc"]["value"]
        assert auroc["external"] == ext and auroc["difference"]["value"] == pytest.approx(ext - inside)
    assert "| auroc |" in (out / "validation.md").read_text()


def test_site_recalibration_keeps_the_weights_and_the_old_card_and_refuses_its_own_cases(validated, capsys):
    from vertex_jax import runs
    from vertex_jax.calibrate.__main__ import main as calibrate
    from vertex_jax.validate.__main__ import main as validate

    run, out = validated
    site = out / "site"
    local, rest = (pd.read_csv(site / f, dtype=str) for f in ("local.csv", "rest.csv"))
    assert len(local) == 8 and len(rest) == 16 and not set(local["image_id"]) & set(rest["image_id"])
    summary = json.loads((out / "validation.json").read_text())["site"]
    assert summary["local_cases"] == 8 and summary["rest_cases"] == 16 and summary["method"] == "platt"
    assert json.loads((site / "calibration.json").read_text())["fitted_on"]["case_keys"] == case_keys(local["image_id"])

    step_dir = runs.resolve_step_dir(run)
    before = _arrays_digest(step_dir)
    fit = ["--workdir", str(run), "--manifest", str(site / "local.csv"), "--no-progress", "--method"]
    assert calibrate([*fit, "temperature"]) == 0
    first = runs.read_json_item(step_dir, "card")["calibration"]
    assert calibrate([*fit, "platt"]) == 0
    card = runs.read_json_item(step_dir, "card")
    assert _arrays_digest(step_dir) == before
    replaced = dict(card["calibration_history"][-1])
    assert replaced.pop("replaced_at") and replaced == first  # the previous calibration is kept
    assert card["calibration"]["fitted_on"]["split"] == "site"
    assert card["calibration"]["fitted_on"]["case_keys"] == case_keys(local["image_id"])
    # the same fit as validate's (scored in other batches: logits equal to float32 rounding)
    for task, fitted in json.loads((site / "calibration.json").read_text())["tasks"].items():
        assert card["calibration"]["tasks"][task] == {k: v if isinstance(v, str) else pytest.approx(v, rel=1e-3, abs=1e-3)
                                                    for k, v in fitted.items()}
    assert "chosen on the previous probabilities" in capsys.readouterr().out  # thresholds.json is stale
    whole = out / "cohort" / "manifest.csv"
    assert validate(["--workdir", str(run), "--out", str(out / "again"), "--manifest", str(whole),
                     "--bootstrap", "0", "--no-progress"]) == 2
    assert "8 of the cases to evaluate are cases the model's calibration was fitted on" in capsys.readouterr().err
    assert validate(["--workdir", str(run), "--out", str(out / "rest"), "--manifest", str(site / "rest.csv"),
                     "--bootstrap", "0", "--no-progress"]) == 0
