"""The clinical model card (vertex_jax.model_card): what the Markdown says for a synthetic run
with and without an evaluation, that evaluate rewrites it when it writes the run's
evaluation/ and calls an older report stale, and that the training data are described from
the manifest (synthetic when the generator wrote it). No JAX, no training: the run's files
are written here."""

import json
import os
from types import SimpleNamespace

import numpy as np
import pandas as pd
from ml_collections import ConfigDict

from test_evaluate import cohort
from vertex_jax.data.prepare import cohort_counts, describe_training_data
from vertex_jax.evaluate.__main__ import main as evaluate_main
from vertex_jax.model_card import render_card, write_run_card

TASKS = ("pvf", "osteo")
FRAME = pd.DataFrame({"patient_id": ["P0", "P0", "P1", "P2", "P3", "P4"],
                      "split": ["train", "train", "train", "val", "test", "test"],
                      "pvf": [1.0, 0.0, np.nan, 1.0, 0.0, 1.0], "osteo": [0.0, 0.0, 1.0, np.nan, 1.0, 1.0]})
SYNTHETIC = {"num_patients": 40, "scale": 0.1, "seed": 0, "options": {}}


def data_config(manifest: str = "") -> ConfigDict:
    return ConfigDict({"manifest": manifest, "domain": "xray", "train_split": "train", "val_split": "val",
                       "synthetic": SYNTHETIC})


def card(training_data: dict, calibration: dict | None = None) -> dict:
    return {"tasks": list(TASKS), "domain": "xray", "variant": "tiny", "use_clinical": True, "head": "gap",
            "vertebrae": False, "clinical_stats": {"mean": [68.0, 0.6, 24.0], "std": [9.0, 0.49, 3.5]},
            "preprocess": {"canvas": [64, 32], "border_crop": 0.05, "equalize": True, "out_dtype": "uint8"},
            "training_data": training_data, "calibration": calibration, "vertex_jax": "0.1.0"}


SUMMARY = {"status": "completed", "step": 6, "best_step": 3, "best_val_auroc": 0.7,
           "history": [{"epoch": 1, "step": 3, "pvf": 0.75, "osteo": 0.65}, {"epoch": 2, "step": 6, "pvf": 0.6,
                                                                               "osteo": 0.5}]}
CALIBRATION = {"fitted_on": {"method": "platt", "split": "val", "domain": "xray", "step": 3},
               "tasks": {"pvf": {"method": "platt", "slope": 0.8, "intercept": -0.1, "n": 12, "positives": 5}}}


def test_the_training_data_are_counted_per_split_and_synthetic_is_recognised(tmp_path):
    counts = cohort_counts(FRAME, TASKS)
    assert counts["train"] == {"images": 3, "patients": 2, "pvf": {"labelled": 2, "positives": 1},
                               "osteo": {"labelled": 3, "positives": 1}}
    assert counts["test"]["pvf"] == {"labelled": 2, "positives": 1} and counts["val"]["patients"] == 1
    assert sum(c["images"] for c in counts.values()) == len(FRAME)
    prepared = SimpleNamespace(frame=FRAME, tasks=TASKS, manifest=tmp_path / "cohort" / "manifest.csv")
    built_in = describe_training_data(data_config(), prepared)
    assert built_in["synthetic"] and built_in["generator"]["built_in"] and built_in["generator"]["num_patients"] == 40
    own = describe_training_data(data_config(str(prepared.manifest)), prepared)
    assert not own["synthetic"] and own["generator"] is None and own["splits"] == counts
    (tmp_path / "cohort").mkdir()  # a manifest python -m vertex_jax.synthetic wrote: truth.json beside it
    (tmp_path / "cohort" / "truth.json").write_text(json.dumps(
        {"pvf_model": {}, "t_score_model": {}, "num_patients": 300, "scale": 0.25, "seed": 4}))
    generated = describe_training_data(data_config(str(prepared.manifest)), prepared)
    assert generated["synthetic"] and generated["generator"]["num_patients"] == 300


def test_a_synthetic_run_before_evaluation(tmp_path):
    training = describe_training_data(data_config(), SimpleNamespace(frame=FRAME, tasks=TASKS,
                                                                      manifest=tmp_path / "m.csv"))
    text = render_card(card(training), summary=SUMMARY, step=3)
    assert text.startswith("# Model card: VERTE-X pvf, osteo (tiny, xray)")
    assert "**Research software, not for clinical use.**" in text
    assert "**Synthetic data only**: the built-in synthetic cohort (`data.manifest` empty)" in text
    assert "**Trained on synthetic images only.**" in text
    rows = [line for line in text.splitlines() if line.startswith(("| train", "| val", "| test"))]
    assert rows == ["| train (training) | 2 | 3 | 1/2 (50%) | 1/3 (33%) |",  # patients, images, prevalence
                    "| val (validation) | 1 | 1 | 1/1 (100%) | no labels |", "| test | 2 | 2 | 1/2 (50%) | 2/2 (100%) |"]
    assert "from one adult lateral spine radiograph, the probability of: prevalent vertebral fracture" in text
    assert "age 68.0 ± 9.0 years, 60% female" in text and "Input canvas 64×32" in text
    assert "No evaluation report yet. Validation AUROC at step 3 (the best)" in text
    assert "pvf 0.750, osteo 0.650" in text and "without intervals" in text
    assert "None: the probabilities are the network's sigmoid outputs" in text
    mixed = render_card(card({**training, "synthetic": False, "generator": None}))
    assert "Synthetic data only" not in mixed and "Manifest: `" in mixed and "No figures yet" in mixed
    assert "Not recorded in this card" in render_card({**card(training), "training_data": None})


def test_evaluate_rewrites_the_runs_card_with_intervals_and_a_later_calibration_marks_it_stale(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    training = describe_training_data(data_config(), SimpleNamespace(frame=FRAME, tasks=TASKS,
                                                                      manifest=run / "m.csv"))
    (run / "model_card.json").write_text(json.dumps(card(training, CALIBRATION)))
    (run / "summary.json").write_text(json.dumps(SUMMARY))
    assert "No evaluation report yet" in write_run_card(run).read_text()
    scores = tmp_path / "scores.csv"
    cohort(300, seed=3).assign(model_step="3").to_csv(scores, index=False)
    assert evaluate_main(["--scores", str(scores), "--out", str(run / "evaluation"), "--bootstrap", "50"]) == 0
    assert f"wrote {run / 'model_card.md'}" in capsys.readouterr().out
    text = (run / "model_card.md").read_text()
    report = json.loads((run / "evaluation" / "report.json").read_text())
    pvf = report["models"]["model"]["tasks"]["pvf"]["overall"]
    lo, hi = pvf["auroc"]["delong"]["ci"]
    assert f"| pvf | {pvf['n']} ({pvf['positives']}) | {pvf['auroc']['value']:.3f} ({lo:.3f} to {hi:.3f}) |" in text
    assert "From `evaluation/report.json` (model `model`, split `test`" in text and "95% intervals" in text
    assert "No evaluation report yet" not in text and "older than this model card" not in text
    assert "Method `platt`, fitted on split `val` (xray) with the outputs of step 3" in text
    assert "| pvf | platt | 12 | 5 |" in text
    # A calibration refitted after the evaluation: the card says the report may no longer hold.
    later = (run / "evaluation" / "report.json").stat().st_mtime + 10
    os.utime(run / "model_card.json", (later, later))
    assert "the evaluation report is older than this model card" in write_run_card(run).read_text()
    # A report written elsewhere leaves the run's card alone.
    before = (run / "model_card.md").read_text()
    assert evaluate_main(["--scores", str(scores), "--out", str(tmp_path / "elsewhere"), "--bootstrap", "0"]) == 0
    assert (run / "model_card.md").read_text() == before and "model_card.md" not in capsys.readouterr().out


def test_a_card_for_an_export_names_the_step_and_an_evaluation_of_another_step(tmp_path):
    training = describe_training_data(data_config("site.csv"), SimpleNamespace(frame=FRAME, tasks=TASKS,
                                                                               manifest=tmp_path / "site.csv"))
    evaluation = {"settings": {"eval_split": "test", "thresholds": "val", "bootstrap": 10, "confidence_level": 0.95},
                  "notes": ["few cases"], "models": {"run": {"model_step": ["3"], "tasks": {
                      "pvf": {"overall": {"n": 20, "positives": 8, "auroc": {"value": 0.8, "delong": {"ci": [0.6, 0.95]}},
                                          "operating_points": {}, "calibration": {}}}}}}}
    text = render_card(card(training), summary=SUMMARY, evaluation=evaluation, step=6,
                       export={"step": 6, "thresholds_source": "/run/evaluation/thresholds.json"})
    assert "the evaluation scored step(s) 3, not step 6" in text
    assert "## Export" in text and "Exported from checkpoint step 6" in text and "thresholds.json" in text
    assert "Few positive cases in the evaluation (pvf: under 50)" in text and "- few cases" in text
    assert "One cohort: performance and calibration may not carry over" in text
    assert "| pvf | 20 (8) | 0.800 (0.600 to 0.950) | n/a | n/a (n/a) |" in text
