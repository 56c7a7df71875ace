"""ONNX export through jax2onnx: a dynamic batch axis ``B`` and named inputs/outputs."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import jax

from vertex_jax.export.errors import ExportError, require
from vertex_jax.export.graph import INPUTS, Signature, closed_function
from vertex_jax.models.vertex import VertexNet

DEFAULT_OPSET = 21  # onnxruntime >= 1.18 runs it; jax2onnx's default (23) needs a newer one
METADATA_KEY = "vertex_jax"


def export_onnx(model: VertexNet, signature: Signature, path: Path, *, opset: int = DEFAULT_OPSET,
                description: dict[str, Any] | None = None) -> Path:
    """Write ``path`` (model.onnx); ``description`` is stored in the model's metadata
    properties under ``vertex_jax`` (JSON) so the file documents itself."""
    jax2onnx = require("jax2onnx", "ONNX export")
    onnx = require("onnx", "ONNX export")
    batch = jax.export.symbolic_shape("B")[0]
    logging.getLogger("jax2onnx").setLevel(logging.ERROR)  # plugin discovery is chatty
    try:
        proto = jax2onnx.to_onnx(closed_function(model, signature.calibration), signature.abstract_inputs(batch),
                                 model_name="vertex_jax", opset=opset, input_names=list(INPUTS),
                                 output_names=list(signature.outputs))
    except Exception as e:  # noqa: BLE001 - the converter raises many kinds; name the stage
        raise ExportError(f"jax2onnx could not convert the model (opset {opset}): "
                          f"{type(e).__name__}: {e}") from e
    proto.doc_string = "VERTE-X scores (probabilities and logits per task) from a preprocessed canvas"
    if description is not None:
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, json.dumps(description)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path))
    onnx.checker.check_model(str(path))
    return path


def onnx_session(path: Path, threads: int = 0):
    """A CPU onnxruntime session (``threads`` 0 = onnxruntime's default)."""
    ort = require("onnxruntime", "running the ONNX model")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
