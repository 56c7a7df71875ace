"""The function every export format serves: named inputs in, probabilities and logits out.

Inputs (batch ``B`` dynamic):

- ``image``: [B, H, W, 1], the preprocessed canvas in its stored dtype (uint8 0..255 or
  uint16 0..65535), scaled to [0, 1] inside the graph exactly as in training;
- ``clinical``: float32 [B, 3], age, sex (1 = female), BMI normalised with the training
  statistics, 0 where missing;
- ``clinical_mask``: float32 [B, 3], 1 where the value is present.

Outputs: ``probabilities`` and ``logits`` [B, T] (column ``i`` is ``tasks[i]``), and the
same columns one by one as ``<task>_prob`` and ``<task>_logit`` [B] (the scores.csv names).
The probabilities are calibrated when the checkpoint's card carries a calibration
(:mod:`vertex_jax.calibrate`: temperature and Platt as arithmetic on the logit, isotonic as
a sum of clipped ramps), else ``sigmoid(logits)``.
A model with the evidence head (``model.head=evidence``) also gives ``evidence`` [B, h, w, T]:
each position's share of its task's logit (the explanation ``predict --explain`` shows), on
the map's grid over the canvas. A model with the vertebra head (``model.vertebrae``) also
gives ``vertebrae`` [B, h, w, channels]: the head's raw map (``model.outputs()['vertebrae']``,
the layout of :class:`~vertex_jax.vertebrae.targets.HeadSpec`), which
:func:`vertex_jax.vertebrae.decode.decode_outputs` turns into vertebrae.

The exported network is the checkpoint's, rebuilt to compute in float32 with depthwise
convolutions as grouped convolutions (one ``Conv`` node in ONNX; the CPU-only "shifts"
form would unroll into k*k slices): same weights, same function.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vertex_jax.calibrate import Calibration
from vertex_jax.data.clinical import CLINICAL
from vertex_jax.inference import TrainedModel
from vertex_jax.models.build import build_model
from vertex_jax.models.efficientnet import to_unit_float
from vertex_jax.models.evidence import evidence_map, tap_strides
from vertex_jax.models.vertex import VertexNet

if TYPE_CHECKING:  # the vertebra code is imported where a model has the head
    from vertex_jax.vertebrae.targets import HeadSpec

INPUTS = ("image", "clinical", "clinical_mask")
EXPORT_DTYPE = "float32"


@dataclasses.dataclass(frozen=True)
class Signature:
    """Names, shapes and dtypes of the served function's inputs and outputs."""

    canvas: tuple[int, int]
    image_dtype: str
    tasks: tuple[str, ...]
    evidence_grid: tuple[int, int] | None = None  # (h, w) of the evidence map, if the model has one
    calibration: Calibration | None = None  # applied to the probabilities, if the model has one
    vertebrae: HeadSpec | None = None  # the vertebra head's grid and layout, if the model has one

    @property
    def outputs(self) -> tuple[str, ...]:
        return ("probabilities", "logits", *(f"{t}_prob" for t in self.tasks),
                *(f"{t}_logit" for t in self.tasks), *(("evidence",) if self.evidence_grid else ()),
                *(("vertebrae",) if self.vertebrae else ()))

    def input_shapes(self, batch: Any) -> dict[str, tuple]:
        h, w = self.canvas
        return {"image": (batch, h, w, 1), "clinical": (batch, len(CLINICAL)),
                "clinical_mask": (batch, len(CLINICAL))}

    def input_dtypes(self) -> dict[str, str]:
        return {"image": self.image_dtype, "clinical": "float32", "clinical_mask": "float32"}

    def abstract_inputs(self, batch: Any) -> list[jax.ShapeDtypeStruct]:
        shapes, dtypes = self.input_shapes(batch), self.input_dtypes()
        return [jax.ShapeDtypeStruct(shapes[n], jnp.dtype(dtypes[n])) for n in INPUTS]

    def random_inputs(self, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
        """A test batch: uniform canvases, N(0, 1) clinical values with ~30% missing."""
        rng = np.random.default_rng(seed)
        shapes = self.input_shapes(batch)
        top = np.iinfo(self.image_dtype).max
        mask = (rng.random(shapes["clinical_mask"]) > 0.3).astype(np.float32)
        return {"image": rng.integers(0, top + 1, shapes["image"], dtype=self.image_dtype),
                "clinical": (rng.normal(size=shapes["clinical"]) * mask).astype(np.float32),
                "clinical_mask": mask}


def signature_of(trained: TrainedModel) -> Signature:
    canvas = tuple(trained.preprocess.canvas)
    grid = None
    if trained.model.head == "evidence":
        stride = tap_strides(trained.model.backbone.variant)[trained.model.head_taps[-1]]
        grid = (-(-canvas[0] // stride), -(-canvas[1] // stride))
    return Signature(canvas, trained.preprocess.out_dtype, trained.tasks, grid, trained.calibration,
                     trained.vertebra_spec)


def rebuild(config: Any, model: VertexNet, **model_overrides: Any) -> VertexNet:
    """``model``'s weights in a fresh model built from ``config`` with ``config.model`` overridden."""
    config = config.copy_and_resolve_references()
    for key, value in model_overrides.items():
        config.model[key] = value
    fresh = build_model(config, seed=0)
    nnx.update(fresh, nnx.state(model, (nnx.Param, nnx.BatchStat)))
    fresh.eval()
    return fresh


def export_model(config: Any, model: VertexNet) -> VertexNet:
    """The model that is exported: float32 compute, grouped-convolution depthwise layers,
    no rematerialisation (a training-only setting; the export traces closed over weights),
    the squeeze-excite pool read from the activation (no optimization barrier for the
    converters; a serving runtime schedules the graph itself) and every BatchNorm folded into
    its convolution's kernel and a bias (``model.fold_bn``): onnxruntime does not fold the
    exported normalisation itself, and runs B4 at 1024x512 1.8-2.2x faster folded
    (docs/performance-notes.md §21). The exports are checked against the trained model
    in its own form (:func:`reference_model`)."""
    return rebuild(config, model, dtype=EXPORT_DTYPE, depthwise="conv", remat=False, recompute="none",
                   se_pool="shared", fold_bn="folded")


def reference_model(config: Any, model: VertexNet) -> VertexNet:
    """What exports are checked against: the trained model itself (its own depthwise
    implementation), computing in float32 if it was trained in another dtype."""
    if config.model.dtype == EXPORT_DTYPE:
        return model
    return rebuild(config, model, dtype=EXPORT_DTYPE)


def _outputs(logits: jax.Array, tasks: tuple[str, ...], calibration: Calibration | None
             ) -> tuple[jax.Array, ...]:
    if calibration is None:
        probabilities = jax.nn.sigmoid(logits)
    else:
        probabilities = calibration.probabilities(logits, tasks, xp=jnp).astype(jnp.float32)
    return (probabilities, logits, *(probabilities[:, i] for i in range(logits.shape[1])),
            *(logits[:, i] for i in range(logits.shape[1])))


def split_weights(model: VertexNet, calibration: Calibration | None = None
                  ) -> tuple[nnx.State, Callable[..., tuple[jax.Array, ...]]]:
    """(weights, fn) with ``fn(weights, image, clinical, clinical_mask)`` -> every output in
    :attr:`Signature.outputs` order; weights are the parameters and BatchNorm statistics."""
    graphdef, weights, rest = nnx.split(model, (nnx.Param, nnx.BatchStat), ...)

    def fn(weights: nnx.State, image: jax.Array, clinical: jax.Array, clinical_mask: jax.Array):
        net = nnx.merge(graphdef, weights, rest)
        if not net.use_clinical:
            clinical = clinical_mask = None
        taps = net.image_taps(to_unit_float(image))
        logits, evidence = net.classify_taps(taps, clinical, clinical_mask)
        outputs = _outputs(logits.astype(jnp.float32), tuple(net.tasks), calibration)
        if evidence is not None:
            outputs = (*outputs, evidence_map(evidence, net.pooling, net.lse_r))
        if net.vertebra_head is not None:
            outputs = (*outputs, net.vertebra_map(taps))
        return outputs

    return weights, fn


def closed_function(model: VertexNet, calibration: Calibration | None = None
                    ) -> Callable[..., tuple[jax.Array, ...]]:
    """``fn(image, clinical, clinical_mask)`` with the weights closed over (as constants)."""
    weights, fn = split_weights(model, calibration)
    return lambda image, clinical, clinical_mask: fn(weights, image, clinical, clinical_mask)
