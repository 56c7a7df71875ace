"""Export to ONNX and TF SavedModel: files, metadata, parity across JAX / onnxruntime /
TensorFlow, bfloat16 checkpoints, the JAX-free ONNX serving path and the errors.

One checkpoint (written by the training code's own checkpoint writer: the tiny config's
model with randomised BatchNorm statistics, so that a statistic lost on the way shows)
is exported once to both formats and shared by every test.
"""

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import grain
import jax
import numpy as np
import pandas as pd
import pytest
from flax import nnx

from checkpoints import CANVAS, STATS, TASKS, randomise_batch_stats, write_checkpoint
from configs.xray import get_config
from vertex_jax.calibrate import Calibration, TaskMap
from vertex_jax.calibrate.run import store as store_calibration
from vertex_jax.data.clinical import ClinicalStats
from vertex_jax.data.preprocess import PreprocessConfig, preprocess
from vertex_jax.synthetic.cohort import render_exam, simulate_patients
from vertex_jax.cli import user_errors
from vertex_jax.export.__main__ import main as export_main
from vertex_jax.export.errors import ExportError
from vertex_jax.export.graph import (Signature, closed_function, export_model, rebuild, reference_model,
                                     signature_of)
from vertex_jax.export.metadata import read_thresholds
from vertex_jax.export.run import export
from vertex_jax.export.verify import jax_runner, max_differences
from vertex_jax.inference import load_trained
from vertex_jax.models.build import build_model

REPO = Path(__file__).resolve().parents[1]
THRESHOLDS = {"pvf": {"youden": 0.41, "sensitivity_90": 0.22, "specificity_90": None},
              "osteo": {"youden": 0.5}}


# pvf: Platt scaling (graph arithmetic); osteo: an isotonic table (a sum of clipped ramps).
CALIBRATION = Calibration({
    "pvf": TaskMap("platt", {"slope": 0.7, "intercept": -0.4}, 100, 30),
    "osteo": TaskMap("isotonic", {"knots": [-0.3, -0.05, 0.0, 0.1, 0.4], "values": [0.05, 0.2, 0.2, 0.6, 0.9]},
                     100, 40)}, {"method": "mixed", "split": "val", "domain": "xray", "step": 3})


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    workdir = write_checkpoint(tmp_path_factory.mktemp("run"))
    store_calibration(workdir / "checkpoints" / "3", CALIBRATION)
    (workdir / "evaluation").mkdir()
    (workdir / "evaluation" / "thresholds.json").write_text(json.dumps(THRESHOLDS))
    return workdir


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("export") / "out"
    paths = export(run_dir, out)
    return {"out": out, **paths}


@pytest.fixture(scope="module")
def runtimes(run_dir, exported):
    import onnxruntime as ort
    import tensorflow as tf
    trained = load_trained(run_dir)
    session = ort.InferenceSession(str(exported["onnx"] / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    serving = tf.saved_model.load(str(exported["savedmodel"])).signatures["serving_default"]

    def run_tf(inputs):
        return {k: v.numpy() for k, v in serving(**{k: tf.constant(v) for k, v in inputs.items()}).items()}

    def run_onnx(inputs):
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, inputs)))

    signature = signature_of(trained)
    reference = jax_runner(reference_model(trained.config, trained.model), signature)
    return {"signature": signature, "jax": reference, "onnxruntime": run_onnx, "tensorflow": run_tf}


def synthetic_inputs(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Preprocessed synthetic radiographs with their patients' clinical values (one age missing)."""
    patients = simulate_patients(n, seed=seed)
    canvases = [preprocess(render_exam(p, 0, scale=0.08).pixels, PreprocessConfig(canvas=CANVAS))[0]
                for p in patients]
    df = pd.DataFrame({"age": [p.age for p in patients], "sex": [float(p.female) for p in patients],
                       "bmi": [p.bmi for p in patients]})
    df.loc[0, "age"] = np.nan
    clinical, mask = STATS.apply(df)
    return {"image": np.stack(canvases)[..., None], "clinical": clinical, "clinical_mask": mask}


def test_export_writes_both_formats_with_metadata(run_dir, exported):
    out = exported["out"]
    assert exported["onnx"] == out / "onnx" and exported["savedmodel"] == out / "savedmodel" / "1"
    assert (out / "onnx" / "model.onnx").is_file()
    assert (out / "savedmodel" / "1" / "saved_model.pb").is_file()
    assert (out / "savedmodel" / "1" / "variables").is_dir()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "temporary files left"
    onnx_meta = json.loads((out / "onnx" / "model.json").read_text())
    tf_meta = json.loads((out / "savedmodel" / "1" / "model.json").read_text())
    assert onnx_meta["format"] == "onnx" and tf_meta["format"] == "savedmodel"
    for meta in (onnx_meta, tf_meta):
        assert meta["tasks"] == list(TASKS)
        assert PreprocessConfig.from_dict(meta["preprocess"]) == PreprocessConfig(canvas=CANVAS)
        steps = " ".join(meta["preprocess"]["steps"])
        assert "equalisation" in steps and "crop 0.05" in steps and "64x32" in steps
        assert ClinicalStats.from_dict(meta["clinical_stats"]) == STATS
        assert meta["clinical_stats"]["order"] == ["age", "sex", "bmi"]
        assert meta["thresholds"] == THRESHOLDS
        assert meta["calibration"] == CALIBRATION.to_dict()
        assert "calibrated probabilities (pvf: platt" in meta["outputs"][0]["description"]
        assert meta["thresholds_source"].endswith("evaluation/thresholds.json")
        assert meta["model"]["step"] == 3 and meta["model"]["checkpoint"].endswith("checkpoints/3")
        assert all(meta["versions"][k] for k in
                   ("vertex_jax", "jax", "flax", "onnx", "onnxruntime", "tensorflow"))
        assert [i["name"] for i in meta["inputs"]] == ["image", "clinical", "clinical_mask"]
        assert meta["inputs"][0]["shape"] == [None, *CANVAS, 1] and meta["inputs"][0]["dtype"] == "uint8"
        diffs = meta["verification"]["max_abs_diff"]
        assert set(diffs) == {"onnxruntime_vs_jax", "tensorflow_vs_jax", "tensorflow_vs_onnxruntime"}
        assert all(0 <= d["probabilities"] <= 1e-4 for d in diffs.values())
    assert tf_meta["export"]["signature"] == "serving_default"
    assert tf_meta["export"]["platforms"] == ["cpu", "cuda"]
    # The clinical model card of the exported step, beside each model.json.
    card = (out / "onnx" / "model_card.md").read_text()
    assert card == (out / "savedmodel" / "1" / "model_card.md").read_text()
    assert onnx_meta["files"]["card"] == tf_meta["files"]["card"] == "model_card.md"
    assert "not for clinical use" in card and "**Synthetic data only**" in card
    assert "Exported from checkpoint step 3" in card and "evaluation/thresholds.json" in card
    assert "Method `mixed`, fitted on split `val` (xray) with the outputs of step 3" in card


def test_onnx_graph_has_named_inputs_outputs_and_dynamic_batch(exported):
    import onnx
    model = onnx.load(str(exported["onnx"] / "model.onnx"))
    inputs = {i.name: i.type.tensor_type for i in model.graph.input}
    assert list(inputs) == ["image", "clinical", "clinical_mask"]
    assert inputs["image"].elem_type == onnx.TensorProto.UINT8
    assert [d.dim_param or d.dim_value for d in inputs["image"].shape.dim] == ["B", *CANVAS, 1]
    assert inputs["clinical"].shape.dim[0].dim_param == "B"
    assert [o.name for o in model.graph.output] == ["probabilities", "logits", "pvf_prob", "osteo_prob",
                                                    "pvf_logit", "osteo_logit"]
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["vertex_jax"])["tasks"] == list(TASKS)


def test_savedmodel_serving_signature(runtimes, exported):
    import tensorflow as tf
    serving = tf.saved_model.load(str(exported["savedmodel"])).signatures["serving_default"]
    _, specs = serving.structured_input_signature
    assert {k: (s.dtype, s.shape.as_list()) for k, s in specs.items()} == {
        "image": (tf.uint8, [None, *CANVAS, 1]), "clinical": (tf.float32, [None, 3]),
        "clinical_mask": (tf.float32, [None, 3])}
    assert set(serving.structured_outputs) == {"probabilities", "logits", "pvf_prob", "osteo_prob",
                                               "pvf_logit", "osteo_logit"}


@pytest.mark.parametrize("batch", [1, 3, 8])
@pytest.mark.parametrize("kind", ["random", "synthetic"])
def test_parity_jax_onnxruntime_tensorflow(runtimes, batch, kind):
    inputs = (runtimes["signature"].random_inputs(batch, seed=10 + batch) if kind == "random"
              else synthetic_inputs(batch, seed=batch))
    ref = runtimes["jax"](inputs)
    assert ref["probabilities"].shape == (batch, 2)
    if batch > 1:  # the comparison means something only if the outputs depend on the inputs
        assert ref["logits"].std(axis=0).min() > 1e-4
    for name in ("onnxruntime", "tensorflow"):
        got = runtimes[name](inputs)
        assert set(got) == set(ref)
        for key in ref:
            np.testing.assert_allclose(got[key], ref[key], rtol=0, atol=1e-4, err_msg=f"{name} {key}")
        for i, task in enumerate(TASKS):
            np.testing.assert_array_equal(got[f"{task}_prob"], got["probabilities"][:, i])
            np.testing.assert_array_equal(got[f"{task}_logit"], got["logits"][:, i])
        # the calibration as predict applies it (NumPy, float64), on this runtime's own logits
        np.testing.assert_allclose(got["probabilities"], CALIBRATION.probabilities(got["logits"], TASKS),
                                   rtol=0, atol=1e-5)
    assert not np.allclose(ref["probabilities"], 1 / (1 + np.exp(-ref["logits"])), atol=1e-3)


def test_bfloat16_model_is_exported_and_checked_in_float32():
    """Also: a training-only setting (model.recompute) is left out of the exported graph,
    which closes over the weights (a rematerialised block could not be traced so), and so
    is the evaluation pool's optimization barrier of the accelerator form (model.se_pool)."""
    config = get_config("tiny")
    config.model.dtype = "bfloat16"
    config.model.recompute = "elementwise"
    model = build_model(config, seed=2)
    randomise_batch_stats(model)
    model.eval()
    exported, reference = export_model(config, model), reference_model(config, model)
    assert exported is not model and reference is not model
    same = jax.tree.map(np.array_equal, nnx.state(model, nnx.Param), nnx.state(exported, nnx.Param))
    assert all(jax.tree.leaves(same))
    signature = Signature(CANVAS, "uint8", ("pvf",))
    inputs = signature.random_inputs(2)
    as_bf16, as_f32 = jax_runner(model, signature)(inputs), jax_runner(exported, signature)(inputs)
    np.testing.assert_allclose(jax_runner(reference, signature)(inputs)["logits"], as_f32["logits"],
                               atol=1e-5)
    assert np.abs(as_bf16["logits"] - as_f32["logits"]).max() > 1e-5  # bfloat16 really differs
    assert exported.backbone.recompute == "none"
    assert {b.fold_bn for b in (exported.backbone, *exported.backbone.blocks())} == {"folded"}
    from vertex_jax.auto_setting import assume_accelerator
    assume_accelerator(True)  # as on a GPU host, where se_pool=auto recomputes the pool
    try:
        args = tuple(inputs[k] for k in ("image", "clinical", "clinical_mask"))
        plain = rebuild(config, model, recompute="none")  # the model as it evaluates, traceable
        assert "optimization_barrier" in str(jax.make_jaxpr(closed_function(plain))(*args))
        assert "optimization_barrier" not in str(jax.make_jaxpr(closed_function(exported))(*args))
    finally:
        assume_accelerator(None)


def test_onnx_backend_scores_without_jax(runtimes, exported, tmp_path):
    inputs = synthetic_inputs(4, seed=7)
    np.savez(tmp_path / "inputs.npz", **inputs)
    script = textwrap.dedent(f"""
        import json, sys
        import numpy as np
        from vertex_jax.predict.onnx_backend import OnnxBackend
        backend = OnnxBackend({str(exported["onnx"] / "model.onnx")!r})
        x = np.load({str(tmp_path / "inputs.npz")!r})
        p, lo = backend.score(x["image"][..., 0], x["clinical"], x["clinical_mask"])
        np.savez({str(tmp_path / "scores.npz")!r}, p=p, lo=lo)
        empty = backend.score(x["image"][:0], x["clinical"][:0], x["clinical_mask"][:0])
        print(json.dumps({{"jax_loaded": "jax" in sys.modules, "tasks": backend.tasks,
                          "step": backend.step, "name": backend.name, "domain": backend.domain,
                          "canvas": backend.preprocess.canvas, "mean": backend.stats.mean,
                          "thresholds": backend.thresholds, "empty": [a.shape for a in empty]}}))
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["jax_loaded"] is False
    assert info["tasks"] == list(TASKS) and info["step"] == 3 and info["name"].endswith("checkpoints/3")
    assert info["domain"] == "xray" and info["canvas"] == list(CANVAS) and info["mean"] == list(STATS.mean)
    assert info["thresholds"] == THRESHOLDS and info["empty"] == [[0, 2], [0, 2]]
    scores = np.load(tmp_path / "scores.npz")
    ref = runtimes["jax"](inputs)
    np.testing.assert_allclose(scores["p"], ref["probabilities"], atol=1e-4)
    np.testing.assert_allclose(scores["lo"], ref["logits"], atol=1e-4)


def test_onnx_backend_rejects_wrong_inputs_and_missing_metadata(exported, tmp_path):
    from vertex_jax.predict.onnx_backend import OnnxBackend
    backend = OnnxBackend(exported["onnx"])  # the folder works too
    image = np.zeros((2, *CANVAS, 1), np.float32)
    with pytest.raises(ValueError, match=r"image dtype float32, expected uint8.*clinical shape \(2, 2\)"):
        backend.score(image, np.zeros((2, 2)), np.zeros((2, 3)))
    lone = tmp_path / "model.onnx"
    lone.write_bytes((exported["onnx"] / "model.onnx").read_bytes())
    with pytest.raises(FileNotFoundError, match="model.json"):
        OnnxBackend(lone)


@pytest.mark.parametrize("args, message", [
    (["--format", "tflite"], "unsupported --format 'tflite'"),
    (["--dtype", "bfloat16"], "--dtype bfloat16 is not supported"),
    (["--platforms", "cpu,metal"], "unknown --platforms"),
])
def test_unsupported_options_are_clear_errors(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert user_errors(export_main)(["--checkpoint", str(tmp_path), "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "nothing was written" in err
    assert not out.exists()


def test_existing_export_is_kept_without_overwrite(run_dir, exported):
    before = (exported["onnx"] / "model.onnx").stat().st_mtime_ns
    with pytest.raises(ExportError, match="--overwrite"):
        export(run_dir, exported["out"], ("onnx",))
    assert (exported["onnx"] / "model.onnx").stat().st_mtime_ns == before


def test_thresholds_of_another_model_are_rejected(run_dir, tmp_path):
    bad = tmp_path / "thresholds.json"
    bad.write_text(json.dumps({"fracture": {"youden": 0.3}}))
    with pytest.raises(ExportError, match="task\\(s\\) \\['fracture'\\] the model does not have"):
        export(run_dir, tmp_path / "out", ("onnx",), thresholds=bad)
    assert not (tmp_path / "out").exists()


def test_thresholds_file_is_read_and_checked_by_the_evaluation_reader(tmp_path):
    path = tmp_path / "thresholds.json"
    path.write_text(json.dumps(THRESHOLDS))
    assert read_thresholds(path, ("pvf", "osteo")) == THRESHOLDS
    for text, says in [("{", "cannot read JSON"), ('{"pvf": {"youden": 1.5}}', r"number in \[0, 1\]"),
                       ('{"pvf": {"best": 0.3}}', "unknown operating point"), ("[]", "expected an object")]:
        path.write_text(text)
        with pytest.raises(ExportError, match=says):
            read_thresholds(path, ("pvf",))
    with pytest.raises(ExportError, match="file not found"):
        read_thresholds(tmp_path / "missing.json", ("pvf",))


def test_differences_fail_on_missing_misshapen_or_nan_outputs():
    ref = {"probabilities": np.full((2, 1), 0.5), "logits": np.zeros((2, 1)), "pvf_prob": np.full(2, 0.5)}
    assert max_differences(ref, {**ref, "probabilities": ref["probabilities"] + 2e-5}) == \
        pytest.approx({"probabilities": 2e-5, "logits": 0.0, "evidence": 0.0})
    for broken in ({"probabilities": ref["probabilities"], "logits": ref["logits"]},
                   {**ref, "pvf_prob": np.full(3, 0.5)}, {**ref, "pvf_prob": np.full(2, np.nan)}):
        assert not max_differences(ref, broken)["probabilities"] <= 1.0


def test_failed_verification_writes_nothing(run_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code = user_errors(export_main)(["--checkpoint", str(run_dir), "--out", str(out), "--format", "onnx",
                        "--tolerance", "0"])  # bit-exact agreement cannot be met
    err = capsys.readouterr().err
    assert code == 2 and "verification failed" in err and "onnxruntime_vs_jax" in err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == []


def test_evidence_map_is_exported_beside_the_scores(tmp_path):
    """An evidence-head model exports its map as an output, verified against JAX in
    onnxruntime (the SavedModel path serves every output of the same function: the shared
    export checks it)."""
    import onnxruntime as ort
    run = write_checkpoint(tmp_path / "run", head="evidence")
    paths = export(run, tmp_path / "out", ("onnx",))
    meta = json.loads((paths["onnx"] / "model.json").read_text())
    grid = [CANVAS[0] // 16, CANVAS[1] // 16]  # head + stage4 taps: stride 16
    (described,) = [o for o in meta["outputs"] if o["name"] == "evidence"]
    assert described["shape"] == [None, *grid, len(TASKS)]
    assert all(d["evidence"] <= 1e-4 for d in meta["verification"]["max_abs_diff"].values())
    trained = load_trained(run)
    ref = jax_runner(reference_model(trained.config, trained.model), signature_of(trained))
    inputs = synthetic_inputs(3, seed=4)
    expected = ref(inputs)
    assert expected["evidence"].shape == (3, *grid, len(TASKS))
    np.testing.assert_allclose(expected["evidence"].sum(axis=(1, 2)), 1.0, atol=1e-5)
    session = ort.InferenceSession(str(paths["onnx"] / "model.onnx"), providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None, inputs)))
    np.testing.assert_allclose(got["evidence"], expected["evidence"], atol=1e-4)


def test_wheel_scores_with_onnx_in_a_fresh_venv_without_jax(exported, tmp_path):
    """The package as a user installs it: the wheel with the ``serve`` extra into a new
    virtualenv (no JAX, no training stack), the ``vertex`` command scoring a folder of PNGs
    with the exported model, from a directory outside the checkout; the scores equal those
    of the same command run here."""
    import cv2

    from conftest import write_png_cohort
    from vertex_jax.predict.__main__ import main as predict_main
    from vertex_jax.synthetic.dicom_write import write_dicom

    wheels, venv = tmp_path / "wheels", tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(REPO)],
                   check=True, capture_output=True, cwd=tmp_path)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, cwd=tmp_path)
    wheel = next(wheels.glob("vertex_jax-*.whl"))
    install = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", f"{wheel}[serve]"],
                             capture_output=True, text=True, cwd=tmp_path)
    assert install.returncode == 0, install.stderr[-3000:]
    python, vertex = str(venv / "bin" / "python"), str(venv / "bin" / "vertex")
    assert subprocess.run([python, "-c", "import jax"], capture_output=True, cwd=tmp_path).returncode != 0
    listing = subprocess.run([python, "-m", "vertex_jax"], capture_output=True, text=True, cwd=tmp_path)
    assert listing.returncode == 0 and "predict" in listing.stdout and "train" in listing.stdout
    train = subprocess.run([vertex, "train", "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert train.returncode == 2 and "pip install 'vertex_jax[train]'" in train.stderr
    assert "Traceback" not in train.stderr

    # no GPL decoder in the install: a JPEG Lossless DICOM is read by libjpeg-turbo (imagecodecs)
    assert subprocess.run([python, "-c", "import libjpeg"], capture_output=True, cwd=tmp_path).returncode != 0
    cohort = write_png_cohort(tmp_path / "cohort", 5)
    first = tmp_path / "cohort" / cohort["path"].iloc[0]
    write_dicom(first.with_suffix(".dcm"), cv2.imread(str(first), cv2.IMREAD_UNCHANGED), bits_stored=12,
                compression="jpeg-lossless")
    first.unlink()
    model = str(exported["onnx"] / "model.onnx")
    args = ["predict", "--backend", "onnx", "--model", model, "--input", str(tmp_path / "cohort" / "images"),
            "--no-progress", "--out"]
    run = subprocess.run([vertex, *args, str(tmp_path / "venv.csv")], capture_output=True, text=True,
                         cwd=tmp_path, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert run.returncode == 0, run.stderr[-3000:]
    assert predict_main([*args[1:], str(tmp_path / "here.csv")]) == 0
    there, here = pd.read_csv(tmp_path / "venv.csv"), pd.read_csv(tmp_path / "here.csv")
    assert len(there) == 5 and list(there["image_id"]) == list(here["image_id"])
    for task in TASKS:
        np.testing.assert_allclose(there[f"{task}_prob"], here[f"{task}_prob"], atol=1e-6)
