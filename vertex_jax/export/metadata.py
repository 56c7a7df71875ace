"""model.json: everything a serving team needs to build the inputs and read the outputs.

Written next to each exported model (``onnx/model.json``, ``savedmodel/1/model.json``) and
read back by :class:`vertex_jax.predict.onnx_backend.OnnxBackend`. Top-level keys:
``schema``, ``format``, ``files``, ``tasks``, ``domain``, ``inputs``, ``outputs``,
``preprocess`` (every :class:`PreprocessConfig` field plus ``steps`` in words),
``clinical_stats`` (``mean``/``std`` plus ``order``, ``encoding``, ``missing``),
``thresholds`` (or null) with ``thresholds_source``, ``model`` (checkpoint, step,
variant, dtypes), ``export`` (format options), ``versions``, ``verification``; for a model
with the vertebra head ``vertebrae`` (:meth:`vertex_jax.vertebrae.targets.HeadSpec.to_dict`).
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any

import vertex_jax
from vertex_jax import runs
from vertex_jax.model_card import render_card, run_sources
from vertex_jax.data.clinical import ClinicalStats
from vertex_jax.data.clinical import CLINICAL
from vertex_jax.data.preprocess import PreprocessConfig
from vertex_jax.evaluate import thresholds as evaluation_thresholds
from vertex_jax.export.errors import ExportError
from vertex_jax.export.graph import EXPORT_DTYPE, INPUTS, Signature
from vertex_jax.inference import TrainedModel
from vertex_jax.problems import ProblemsError

SCHEMA = "vertex_jax.export/1"
METADATA_FILE = "model.json"
PACKAGES = {"jax": ("jax",), "jaxlib": ("jaxlib",), "flax": ("flax",), "jax2onnx": ("jax2onnx",),
            "onnx": ("onnx",), "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
            "tensorflow": ("tensorflow", "tensorflow-cpu"), "numpy": ("numpy",),
            "opencv": ("opencv-python-headless", "opencv-python"), "pydicom": ("pydicom",)}


def preprocess_steps(config: PreprocessConfig) -> list[str]:
    """The pipeline of :func:`vertex_jax.data.preprocess.preprocess` in words, with its parameters."""
    h, w = config.canvas
    top = 255 if config.out_dtype == "uint8" else 65535
    contrast = ("histogram equalisation on the full bit depth (OpenCV's mapping lut[v] = (cdf[v] - "
                "cdf[min]) / (N - cdf[min]) at every integer level), then min-max scaling to [0, 1]"
                if config.equalize else "min-max scaling to [0, 1] (no histogram equalisation)")
    return [
        "read a 2-D grey, bone-bright image at full bit depth (vertex_jax.data.io.read_image): DICOM "
        "through its Modality LUT / rescale then VOI LUT / window as pydicom applies them, "
        "MONOCHROME1 inverted; PNG/JPEG/TIFF 8 or 16 bit, colour converted to grey",
        f"crop {config.border_crop:g} of each dimension from each edge: rows int(h*{config.border_crop:g}) "
        f".. h-int(h*{config.border_crop:g}), same for columns",
        contrast + " (intermediate values kept as 16-bit fixed point)",
        f"resize, aspect preserved, by s = min({h}/h, {w}/w) to (round(h*s), round(w*s)), never beyond "
        f"{h}x{w}; OpenCV INTER_AREA when shrinking, INTER_LINEAR otherwise",
        f"paste centred on a zero {h}x{w} (height x width) canvas: top = ({h} - h')//2, left = ({w} - w')//2",
        f"store as {config.out_dtype} (0..{top}, rounded, saturated) and add a channel axis: the "
        f"'image' input [B, {h}, {w}, 1]; the graph divides by {top} and normalises itself",
        "reference implementation: vertex_jax.data.preprocess.preprocess",
    ]


def clinical_description(stats: ClinicalStats) -> dict[str, Any]:
    return {**stats.to_dict(), "order": list(CLINICAL),
            "encoding": "age in years; sex 1 = female, 0 = male; BMI in kg/m^2",
            "normalise": "clinical[:, i] = (value_i - mean[i]) / std[i] where present, 0 where missing",
            "missing": "clinical_mask[:, i] = 1 where value_i is present, 0 where missing"}


def io_description(signature: Signature) -> tuple[list[dict], list[dict]]:
    shapes, dtypes = signature.input_shapes(None), signature.input_dtypes()
    notes = {"image": "preprocessed canvas (see preprocess.steps)",
             "clinical": "normalised age, sex, BMI (see clinical_stats); 0 where missing",
             "clinical_mask": "1 where the clinical value is present, 0 where missing"}
    inputs = [{"name": n, "dtype": dtypes[n], "shape": list(shapes[n]), "description": notes[n]}
              for n in INPUTS]
    tasks = list(signature.tasks)
    cal = signature.calibration
    described = ("sigmoid(logits): the model has no calibration" if cal is None else
                 f"calibrated probabilities ({cal.describe()}; see 'calibration')")
    outputs = [{"name": "probabilities", "dtype": "float32", "shape": [None, len(tasks)], "columns": tasks,
                "description": described},
               {"name": "logits", "dtype": "float32", "shape": [None, len(tasks)], "columns": tasks}]
    outputs += [{"name": f"{t}_{kind}", "dtype": "float32", "shape": [None]} for kind in ("prob", "logit")
                for t in tasks]
    if signature.evidence_grid:
        outputs.append({"name": "evidence", "dtype": "float32",
                        "shape": [None, *signature.evidence_grid, len(tasks)], "columns": tasks,
                        "description": "each position's share of its task's logit (sums to 1 over "
                                       "positions); the grid covers the canvas, cell (i, j) its "
                                       "pixels [i*H/h, (i+1)*H/h) x [j*W/w, (j+1)*W/w)"})
    if (spec := signature.vertebrae) is not None:
        outputs.append({"name": "vertebrae", "dtype": "float32", "shape": [None, *spec.grid, spec.channels],
                        "description": "the vertebra head's raw map, cell (i, j) the canvas pixels "
                                       "[i*S, (i+1)*S) x [j*S, (j+1)*S); stride S and channel layout "
                                       "in 'vertebrae' (vertex_jax.vertebrae.decode.decode_outputs)"})
    return inputs, outputs


def default_thresholds_path(step_dir: Path) -> Path:
    """``<workdir>/evaluation/thresholds.json`` of the run a step directory belongs to."""
    return runs.thresholds_path(runs.workdir_of(step_dir))


def read_thresholds(path: Path, tasks: tuple[str, ...]) -> dict[str, dict[str, float | None]]:
    """A thresholds.json (``{task: {operating point: value}}``), read and checked by
    :func:`vertex_jax.evaluate.thresholds.read_thresholds`, then against the model's tasks."""
    try:
        checked = evaluation_thresholds.read_thresholds(path)
    except ProblemsError as e:
        raise ExportError(str(e)) from None
    unknown = sorted(set(checked) - set(tasks))
    if unknown:
        raise ExportError(f"{path}: thresholds for task(s) {unknown} the model does not have "
                          f"(tasks {list(tasks)}); is it another run's file?")
    return {t: {name: v["threshold"] for name, v in points.items()} for t, points in checked.items()}


def versions() -> dict[str, str | None]:
    """Versions of the packages that made (and verified) the export; None where absent."""
    out: dict[str, str | None] = {"vertex_jax": vertex_jax.__version__}
    for key, distributions in PACKAGES.items():
        out[key] = next((_version(d) for d in distributions if _version(d)), None)
    return out


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def describe(trained: TrainedModel, signature: Signature, thresholds: dict | None,
             thresholds_source: str) -> dict[str, Any]:
    """The format-independent part of model.json."""
    inputs, outputs = io_description(signature)
    preprocess = {**trained.preprocess.to_dict(), "steps": preprocess_steps(trained.preprocess)}
    return {"schema": SCHEMA, "tasks": list(trained.tasks), "domain": trained.card.get("domain"),
            "inputs": inputs, "outputs": outputs, "preprocess": preprocess,
            "clinical_stats": clinical_description(trained.stats),
            "thresholds": thresholds, "thresholds_source": thresholds_source,
            "calibration": None if signature.calibration is None else signature.calibration.to_dict(),
            "model": {"checkpoint": str(trained.checkpoint), "step": trained.step,
                      "variant": trained.config.model.variant,
                      "use_clinical": bool(trained.config.model.use_clinical),
                      "trained_dtype": trained.config.model.dtype, "compute_dtype": EXPORT_DTYPE,
                      "trained_with_vertex_jax": trained.card.get("vertex_jax")},
            "versions": versions(),
            **({"vertebrae": signature.vertebrae.to_dict()} if signature.vertebrae else {})}


def card_markdown(trained: TrainedModel, thresholds_source: str) -> str:
    """The clinical model card (``model_card.md``) of the exported step: its own card, with
    its run's summary and evaluation where the step is still inside its run."""
    return render_card(trained.card, step=trained.step, **run_sources(runs.workdir_of(trained.checkpoint)),
                       export={"step": trained.step, "thresholds_source": thresholds_source})
