"""Export a checkpoint, verify every artifact against JAX, then move it into place.

Layout of ``out``::

    onnx/model.onnx, onnx/model.json, onnx/model_card.md      (--format onnx)
    savedmodel/<version>/saved_model.pb, variables/,           (--format savedmodel; TF Serving's
    savedmodel/<version>/model.json, model_card.md              model_base_path is savedmodel/)

``model_card.md`` is the clinical model card of the exported step (:mod:`vertex_jax.model_card`).

Everything is written to a temporary sibling of ``out`` first; only when the JAX,
onnxruntime and TensorFlow outputs agree is it renamed into ``out``, so a failed export
leaves ``out`` as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Sequence

from vertex_jax.export import metadata
from vertex_jax.export.errors import ExportError
from vertex_jax.export.graph import EXPORT_DTYPE, export_model, reference_model, signature_of
from vertex_jax.run_layout import CARD_MARKDOWN_FILE
from vertex_jax.export.onnx_format import DEFAULT_OPSET, export_onnx, onnx_session
from vertex_jax.export.savedmodel import DEFAULT_PLATFORMS, export_savedmodel, load_serving
from vertex_jax.export.verify import BATCH_SIZES, TOLERANCE, jax_runner, onnx_runner, tf_runner, verify
from vertex_jax.inference import load_trained

FORMATS = ("onnx", "savedmodel")
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")


def parse_formats(text: str) -> tuple[str, ...]:
    """``onnx``, ``savedmodel``, ``all`` or a comma-separated list of the first two."""
    names = [t.strip().lower() for t in text.split(",") if t.strip()]
    if names == ["all"]:
        return FORMATS
    bad = [n for n in names if n not in FORMATS]
    if bad or not names:
        raise ExportError(f"unsupported --format {text!r}: choose onnx, savedmodel or all "
                          "(TFLite, TensorRT, CoreML and others are not exported; serve the ONNX "
                          "model through their ONNX importers instead)")
    return tuple(dict.fromkeys(names))


def check_options(dtype: str, platforms: Sequence[str], serving_version: int, tolerance: float) -> None:
    if dtype != EXPORT_DTYPE:
        raise ExportError(f"--dtype {dtype} is not supported: exports compute in float32 (verified to "
                          f"1e-4 against JAX); checkpoints trained in bfloat16 are exported in float32")
    bad = [p for p in platforms if p not in PLATFORMS]
    if bad or not platforms:
        raise ExportError(f"unknown --platforms {list(platforms)}; choose from {', '.join(PLATFORMS)}")
    if serving_version < 1:
        raise ExportError(f"--serving-version must be a positive integer, got {serving_version}")
    if not tolerance >= 0:
        raise ExportError(f"--tolerance must be >= 0, got {tolerance}")


def targets(out: Path, formats: Sequence[str], serving_version: int) -> dict[str, Path]:
    return {f: out / "onnx" if f == "onnx" else out / "savedmodel" / str(serving_version) for f in formats}


def _thresholds(path: str | Path | None, trained) -> tuple[dict | None, str]:
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ExportError(f"--thresholds {path}: no such file")
    else:
        path = metadata.default_thresholds_path(trained.checkpoint)
        if not path.is_file():
            return None, (f"none: {path} does not exist; run python -m vertex_jax.evaluate on the "
                          "validation split and export again with --thresholds FILE")
    return metadata.read_thresholds(path, trained.tasks), str(path.absolute())


def export(checkpoint: str | Path, out: str | Path, formats: Sequence[str] = FORMATS, *,
           thresholds: str | Path | None = None, overwrite: bool = False, dtype: str = EXPORT_DTYPE,
           opset: int = DEFAULT_OPSET, platforms: Sequence[str] = DEFAULT_PLATFORMS,
           serving_version: int = 1, batch_sizes: Sequence[int] = BATCH_SIZES,
           tolerance: float = TOLERANCE, log: Callable[[str], None] = print) -> dict[str, Path]:
    """Export ``checkpoint`` (workdir, checkpoints dir or step dir) to each of ``formats``
    (``onnx``, ``savedmodel``, ``all``) under ``out``; returns {format: model directory}.
    Raises :class:`ExportError`."""
    formats = parse_formats(",".join(formats))
    check_options(dtype, platforms, serving_version, tolerance)
    out = Path(out).absolute()
    final = targets(out, formats, serving_version)
    existing = [str(p) for p in final.values() if p.exists()]
    if existing and not overwrite:
        raise ExportError(f"{', '.join(existing)} already exist(s); pass --overwrite to replace")
    trained = load_trained(checkpoint)
    log(f"loaded {trained.checkpoint} (step {trained.step}, tasks {', '.join(trained.tasks)})")
    threshold_values, threshold_source = _thresholds(thresholds, trained)
    signature, model = signature_of(trained), export_model(trained.config, trained.model)
    description = metadata.describe(trained, signature, threshold_values, threshold_source)
    card = metadata.card_markdown(trained, threshold_source)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
    try:
        staged = {f: work / f for f in formats}
        runtimes, settings, files = {}, {}, {}
        if "onnx" in formats:
            log(f"ONNX (opset {opset}) ...")
            path = export_onnx(model, signature, staged["onnx"] / "model.onnx", opset=opset,
                               description=description)
            runtimes["onnxruntime"] = onnx_runner(onnx_session(path))
            settings["onnx"] = {"converter": "jax2onnx", "opset": opset, "batch_axis": "B"}
            files["onnx"] = {"model": "model.onnx", "card": CARD_MARKDOWN_FILE}
        if "savedmodel" in formats:
            log(f"TF SavedModel (platforms {', '.join(platforms)}) ...")
            info = export_savedmodel(model, signature, staged["savedmodel"], platforms=platforms)
            runtimes["tensorflow"] = tf_runner(load_serving(staged["savedmodel"]))
            settings["savedmodel"] = {"converter": "jax.experimental.jax2tf", **info,
                                      "serving_version": serving_version}
            files["savedmodel"] = {"model": "saved_model.pb", "variables": "variables/", "card": CARD_MARKDOWN_FILE}
        reference = jax_runner(reference_model(trained.config, trained.model), signature)
        report = verify(signature, reference, runtimes, batch_sizes=batch_sizes, tolerance=tolerance)
        for pair, d in report["max_abs_diff"].items():
            log(f"verified {pair}: max |diff| probabilities {d['probabilities']:.2e}, "
                f"logits {d['logits']:.2e} (batch sizes {report['batch_sizes']})")
        for f in formats:
            doc = {**description, "format": f, "files": files[f], "export": settings[f],
                   "verification": report}
            (staged[f] / metadata.METADATA_FILE).write_text(json.dumps(doc, indent=2) + "\n")
            (staged[f] / CARD_MARKDOWN_FILE).write_text(card)
        for f in formats:
            _move(staged[f], final[f], work / f"replaced-{f}")
            log(f"wrote {final[f]}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final


def _move(src: Path, dst: Path, trash: Path) -> None:
    """Rename ``src`` to ``dst``; an existing ``dst`` is first moved to ``trash``."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        os.replace(dst, trash)
    os.replace(src, dst)
