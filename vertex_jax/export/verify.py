"""Parity check of exported models: the same batches through JAX and every exported runtime."""

from __future__ import annotations

import itertools
from typing import Callable, Mapping, Sequence

import jax
import numpy as np

from vertex_jax.export.errors import ExportError
from vertex_jax.export.graph import Signature, split_weights
from vertex_jax.models.vertex import VertexNet

TOLERANCE = 1e-4  # max |difference| of probabilities, float32
BATCH_SIZES = (1, 3)

Runner = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


def jax_runner(model: VertexNet, signature: Signature) -> Runner:
    weights, fn = split_weights(model, signature.calibration)
    jitted = jax.jit(fn)

    def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = jitted(weights, inputs["image"], inputs["clinical"], inputs["clinical_mask"])
        return {name: np.asarray(v) for name, v in zip(signature.outputs, outputs)}

    return run


def onnx_runner(session) -> Runner:
    names = [o.name for o in session.get_outputs()]
    return lambda inputs: dict(zip(names, session.run(names, inputs)))


def tf_runner(serving) -> Runner:
    import tensorflow as tf
    return lambda inputs: {k: v.numpy() for k, v in
                           serving(**{k: tf.constant(v) for k, v in inputs.items()}).items()}


GROUPS = ("probabilities", "logits", "evidence")  # always reported (0 where a model has none)
OWN_GROUPS = ("evidence", "vertebrae")  # an output of this name is its own group
CHECKED = ("probabilities", "evidence", "vertebrae")  # held to the tolerance; logits are reported


def _group(name: str) -> str:
    if name == "probabilities" or name.endswith("_prob"):
        return "probabilities"
    return name if name in OWN_GROUPS else "logits"


def max_differences(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Max |a - b| over the probability, logit and evidence-map outputs, and the vertebra
    head's raw map where ``a`` has one; NaN where an output is missing, misshapen or NaN, so
    that it fails every tolerance."""
    groups: dict[str, list[float]] = {g: [] for g in GROUPS}
    for name, x in a.items():
        y = b.get(name)
        same_shape = y is not None and np.shape(y) == np.shape(x)
        diff = np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)).max(initial=0.0) \
            if same_shape else np.nan
        groups.setdefault(_group(name), []).append(diff)
    return {k: float(np.max(v)) if v else 0.0 for k, v in groups.items()}


def verify(signature: Signature, reference: Runner, runtimes: Mapping[str, Runner], *,
           batch_sizes: Sequence[int] = BATCH_SIZES, tolerance: float = TOLERANCE) -> dict:
    """Run random batches (seeded) through the JAX reference and each runtime; raise
    :class:`ExportError` unless every pair agrees on probabilities (and the evidence and
    vertebra maps, where the model has them) within ``tolerance``."""
    outputs: dict[str, list[dict[str, np.ndarray]]] = {"jax": [], **{k: [] for k in runtimes}}
    for seed, batch in enumerate(batch_sizes):
        inputs = signature.random_inputs(batch, seed)
        outputs["jax"].append(reference(inputs))
        for name, run in runtimes.items():
            outputs[name].append(run(inputs))
    diffs = {}
    for a, b in itertools.combinations(outputs, 2):
        per_batch = [max_differences(x, y) for x, y in zip(outputs[a], outputs[b])]
        diffs[f"{b}_vs_{a}"] = {k: float(np.max([d[k] for d in per_batch])) for k in per_batch[0]}
    report = {"tolerance_probabilities": tolerance, "batch_sizes": list(batch_sizes),
              "inputs": (f"random {signature.image_dtype} canvases, N(0,1) clinical values with ~30% "
                         f"missing (Signature.random_inputs, seeds 0..{len(batch_sizes) - 1})"),
              "max_abs_diff": diffs}
    failed = {f"{pair} ({k})": d[k] for pair, d in diffs.items() for k in CHECKED
              if k in d and not d[k] <= tolerance}
    if failed:
        raise ExportError("verification failed: max |difference| of probabilities / evidence / vertebra maps "
                          + ", ".join(f"{pair} {v:.3g}" for pair, v in failed.items())
                          + f" exceeds {tolerance:g} (batch sizes {list(batch_sizes)})")
    return report
