"""TF SavedModel export through ``jax.experimental.jax2tf`` (still shipped with jax 0.10).

``jax2tf.convert`` serialises the JAX function as StableHLO inside one ``XlaCallModule``
op (native serialisation; the old graph-by-graph conversion is gone), with a polymorphic
batch dimension. Weights are ``tf.Variable``s (``variables/`` of the SavedModel), not
constants in the graph. The module is lowered for every platform in ``platforms``, so one
SavedModel serves on CPU and NVIDIA GPUs. A consumer needs an ``XlaCallModule`` that
supports the recorded calling-convention version and StableHLO of the exporting jax: TF
(Serving) at least as new as the TensorFlow that verified the export (model.json).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Sequence

import jax
import numpy as np

from vertex_jax.export.errors import ExportError, require
from vertex_jax.export.graph import INPUTS, Signature, split_weights
from vertex_jax.models.vertex import VertexNet

DEFAULT_PLATFORMS = ("cpu", "cuda")
SIGNATURE_KEY = "serving_default"


def _tensorflow():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return require("tensorflow", "SavedModel export")


def _variable_name(path: tuple) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-/]", "_", jax.tree_util.keystr(path, simple=True, separator="/"))


def export_savedmodel(model: VertexNet, signature: Signature, directory: Path, *,
                      platforms: Sequence[str] = DEFAULT_PLATFORMS) -> dict[str, Any]:
    """Write a SavedModel with a ``serving_default`` signature of the named inputs and
    outputs into ``directory``; returns what a consumer must support."""
    tf = _tensorflow()
    from jax.experimental import jax2tf

    weights, fn = split_weights(model, signature.calibration)
    flat, treedef = jax.tree_util.tree_flatten_with_path(weights)
    shapes, dtypes = signature.input_shapes("b"), signature.input_dtypes()
    poly = [None] + ["(" + ", ".join(map(str, shapes[n])) + ")" for n in INPUTS]
    converted = jax2tf.convert(fn, polymorphic_shapes=poly, with_gradient=False,
                               native_serialization_platforms=tuple(platforms))
    module = tf.Module()
    module.params = [tf.Variable(np.asarray(leaf), trainable=False, name=_variable_name(path))
                     for path, leaf in flat]
    specs = [tf.TensorSpec((None, *shapes[n][1:]), dtypes[n], name=n) for n in INPUTS]

    @tf.function(input_signature=specs, autograph=False)
    def serve(image, clinical, clinical_mask):
        outputs = converted(jax.tree.unflatten(treedef, module.params), image, clinical, clinical_mask)
        return dict(zip(signature.outputs, outputs))

    module.serve = serve
    try:
        tf.saved_model.save(module, str(directory), signatures={SIGNATURE_KEY: serve})
    except Exception as e:  # noqa: BLE001 - conversion errors surface here, of many kinds
        raise ExportError(f"jax2tf could not convert the model: {type(e).__name__}: {e}") from e
    return {"signature": SIGNATURE_KEY, "platforms": list(platforms),
            "xla_call_module_calling_convention": int(jax.config.jax_export_calling_convention_version)}


def load_serving(directory: Path):
    """The ``serving_default`` function of a SavedModel: ``f(**inputs) -> {name: tensor}``."""
    tf = _tensorflow()
    return tf.saved_model.load(str(directory)).signatures[SIGNATURE_KEY]
