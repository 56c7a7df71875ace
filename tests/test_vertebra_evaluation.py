"""The per-vertebra section of the evaluation report: the vertebra table read back, one split,
a hand-worked example, and ``python -m vertex_jax.evaluate --vertebrae --annotations``."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from vertex_jax.cli import user_errors
from vertex_jax.evaluate.__main__ import main
from vertex_jax.predict.vertebra_table import COLUMNS, detection_row
from vertex_jax.vertebrae import metrics
from vertex_jax.vertebrae.annotations import Vertebra, write_csv
from vertex_jax.vertebrae.decode import Detection
from vertex_jax.vertebrae.evaluation import detections_from_frame, vertebra_section
from vertex_jax.vertebrae.levels import LEVELS

TOP, NEXT = (10.0, 10.0, 30.0, 20.0), (10.0, 25.0, 30.0, 35.0)
POINTS = ((10.0, 11.0), (20.0, 12.0), (30.0, 10.0), (10.0, 19.0), (20.0, 19.5), (30.0, 20.0))


def _det(box, level, grade_probs, score=0.9, points=None) -> Detection:
    level_probs = np.zeros(len(LEVELS))
    if level:
        level_probs[LEVELS.index(level)] = 0.8
    return Detection(box=box, score=score, level=level, level_probabilities=tuple(level_probs),
                     grade=int(np.argmax(grade_probs)), grade_probabilities=grade_probs, points=points)


ANNOTATIONS = {
    "a": [Vertebra("T8", TOP, 2), Vertebra("T9", NEXT, 0)],
    "b": [Vertebra("T8", TOP, 0), Vertebra("T9", NEXT, 0)],
    "c": [Vertebra("T8", TOP, 1)],  # a validation image: not in the test section
}
FOUND = {
    "a": [_det(TOP, "T8", (0.1, 0.1, 0.7, 0.1), points=POINTS),
          _det((10.0, 26.0, 30.0, 36.0), "T10", (0.8, 0.1, 0.05, 0.05))],  # IoU 9/11, level wrong
    "b": [_det(TOP, "T8", (0.05, 0.9, 0.03, 0.02)),  # T9 missed
          _det((50.0, 50.0, 60.0, 60.0), None, (0.9, 0.05, 0.03, 0.02), score=0.4)],  # nothing there
    "c": [_det(TOP, "T8", (0.5, 0.5, 0.0, 0.0))],
    "d": [_det(TOP, "T8", (0.5, 0.5, 0.0, 0.0))],  # a test image without annotations
}


def _frame() -> pd.DataFrame:
    """The vertebra table predict writes, for FOUND."""
    rows = [{"image_id": i, "patient_id": f"P{i}", **detection_row(k, d)}
            for i, dets in FOUND.items() for k, d in enumerate(dets, start=1)]
    return pd.DataFrame(rows, columns=["image_id", "patient_id", *COLUMNS])


def _scores() -> pd.DataFrame:
    ids = ["a", "b", "c", "d"]
    return pd.DataFrame({"image_id": ids, "patient_id": [f"P{i}" for i in ids],
                         "split": ["test", "test", "val", "test"], "pvf_prob": [0.8, 0.3, 0.5, 0.5]})


def test_the_vertebra_table_reads_back_as_the_detections():
    back = detections_from_frame(_frame())
    assert list(back) == list(FOUND)
    for image_id, dets in FOUND.items():
        for got, want in zip(back[image_id], dets, strict=True):
            assert got.level == want.level and got.grade == want.grade
            np.testing.assert_allclose(got.box, want.box)
            np.testing.assert_allclose(got.grade_probabilities, want.grade_probabilities)
            assert got.fracture_probability == pytest.approx(want.fracture_probability)
            assert (got.points is None) == (want.points is None)
            if want.points is not None:
                np.testing.assert_allclose(got.points, want.points)
    with pytest.raises(ValueError, match="lacks column.*grade_prob_0"):
        detections_from_frame(_frame().drop(columns="grade_prob_0"))


def test_section_on_the_test_split_by_hand():
    section = vertebra_section(_frame(), ANNOTATIONS, _scores(), split="test", bootstrap=200)
    # test images a and b are annotated (d is not, c is validation): 4 vertebrae, 4 detections
    assert (section["images"], section["vertebrae"], section["detections"], section["matched"]) == (2, 4, 4, 3)
    assert section["unannotated_images"] == 1 and section["split"] == "test"
    value = {k: section[k]["value"] for k in metrics.METRICS}
    assert value["recall"] == pytest.approx(3 / 4) and value["precision"] == pytest.approx(3 / 4)
    assert value["level_accuracy"] == pytest.approx(2 / 3)  # a's second body named T10
    # per vertebra: the fractured a-T8 (0.9) against a-T9 (0.2), b-T8 (0.95), missed b-T9 (0)
    assert value["fracture_auroc"] == pytest.approx(2 / 3)
    # per image: a (fractured, max 0.9) below b (intact, max 0.95); the image head orders them right
    assert value["image_auroc"] == 0.0 and section["image_head_pvf_auroc"] == 1.0
    lo, hi = section["recall"]["ci95"]
    assert 0.0 <= lo <= 0.75 <= hi <= 1.0
    # the same numbers as the metrics called on the detections themselves
    direct = metrics.evaluate({i: ANNOTATIONS[i] for i in "ab"}, {i: FOUND[i] for i in "ab"},
                              patients={"a": "Pa", "b": "Pb"}, n_boot=0)
    for k in metrics.METRICS:
        assert section[k]["value"] == pytest.approx(direct[k]["value"]), k
    with pytest.raises(ValueError, match="none of the 1 images of split 'val'"):
        vertebra_section(_frame(), {"a": ANNOTATIONS["a"]}, _scores(), split="val")


def test_evaluate_command_adds_the_per_vertebra_section(tmp_path, capsys):
    rng = np.random.default_rng(0)
    n = 80
    scores = pd.DataFrame({"image_id": [f"x{i}" for i in range(n)], "patient_id": [f"Q{i}" for i in range(n)],
                           "split": ["val", "test"] * (n // 2), "pvf": rng.integers(0, 2, n).astype(str)})
    scores["pvf_prob"] = np.clip(0.3 + 0.4 * scores["pvf"].astype(int) + rng.normal(0, 0.2, n), 0.01, 0.99)
    mine = _scores().assign(pvf=["1", "0", "1", "0"])
    scores = pd.concat([scores, mine], ignore_index=True)
    scores.to_csv(tmp_path / "scores.csv", index=False)
    _frame().to_csv(tmp_path / "scores_vertebrae.csv", index=False)
    write_csv(ANNOTATIONS, tmp_path / "annotations.csv")
    common = ["--scores", str(tmp_path / "scores.csv"), "--vertebrae", str(tmp_path / "scores_vertebrae.csv"),
              "--bootstrap", "50"]
    assert main([*common, "--annotations", str(tmp_path / "annotations.csv"), "--out", str(tmp_path / "r")]) == 0
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["vertebrae"]["recall"]["value"] == pytest.approx(0.75)
    assert report["vertebrae"]["image_head_pvf_auroc"] == 1.0
    html = (tmp_path / "r" / "report.html").read_text()
    assert "Per vertebra" in html and "level accuracy" in html
    assert "recall 0.750" in capsys.readouterr().out
    assert user_errors(main)([*common, "--out", str(tmp_path / "r2")]) == 2
    err = capsys.readouterr().err
    assert "needs the annotations" in err and "--annotations FILE" in err
