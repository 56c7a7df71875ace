"""VERTE-X network: EfficientNet image features fused with age / sex / BMI, one logit per task.

Follows the authors' 2023 design (`image_clnical_combineNet`): the backbone's pooled
features go through dropout and a linear projection (their replaced `_fc`); the clinical
branch is Linear-BN-ReLU-Dropout(0.2) twice; both are concatenated and mapped by
Linear(., 100) then Linear(100, tasks) (no nonlinearity in between, as in their code).
Here the clinical branch also sees the missing-value mask, so "missing" is learnable.

Input scaling happens inside the call (and so inside any jit): uint8/uint16 images are divided by
their full range (to 0..1), then `normalize_input` applies the ImageNet constants.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from vertex_jax.models.efficientnet import HEAD, STAGES, VARIANTS, EfficientNet, normalize_input
from vertex_jax.models.evidence import (EvidenceHead, check_taps, pool_evidence, tap_channels, tap_names,
                                        tap_strides, task_poolings)
from vertex_jax.models.vertebra_head import VertebraHead, vertebra_taps
from vertex_jax.tasks import TASKS
from vertex_jax.errors import ConfigError

__all__ = ["HEADS", "ClinicalBranch", "VertexNet"]

HEADS = ("gap", "evidence")  # global average pool + fusion MLP (the paper's); evidence map


class ClinicalBranch(nnx.Module):
    """[values * mask, mask] -> (Linear-BN-ReLU-Dropout) x len(hidden), all float32."""

    def __init__(self, num_inputs: int, hidden: Sequence[int], *, dropout: float = 0.2, rngs: nnx.Rngs):
        sizes = (2 * num_inputs, *hidden)
        self.linears = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes, sizes[1:])])
        # PyTorch BatchNorm1d defaults, as in the authors' code.
        self.norms = nnx.List([nnx.BatchNorm(b, momentum=0.9, epsilon=1e-5, rngs=rngs) for b in hidden])
        self.dropout = nnx.Dropout(dropout, rngs=rngs)

    def __call__(self, values: jax.Array, mask: jax.Array) -> jax.Array:
        h = jnp.concatenate([values * mask, mask], axis=-1)
        for linear, norm in zip(self.linears, self.norms):
            h = self.dropout(jax.nn.relu(norm(linear(h))))
        return h


class VertexNet(nnx.Module):
    """Radiograph (+ clinical variables) -> logits [B, len(tasks)], float32.

    `image`: [B, H, W, in_channels], uint8/uint16 (full range) or float 0..1. `clinical`: [B, num_clinical]
    float32 (age, sex, BMI normalised by the pipeline, missing = 0); `clinical_mask`: same
    shape, 1 where the value is present. Both may be None when `use_clinical=False`.
    Logit column i belongs to `tasks[i]`. Sizes: `image_projection` 100 as in the authors'
    code; their clinical hidden sizes are not published, (64, 32) is this code's default.
    ``vertebra_channels`` > 0 adds the vertebra head (:mod:`vertex_jax.models.vertebra_head`),
    whose map :meth:`outputs` returns; 0 (the paper's network) leaves it out. With
    ``vertebra_detach`` its losses train the head alone, not the backbone it reads.
    """

    def __init__(self, *, variant: str = "b4", tasks: Sequence[str] = ("pvf",), use_clinical: bool = True,
                 num_clinical: int = 3, clinical_hidden: tuple[int, int] = (64, 32),
                 image_projection: int = 100, fusion_hidden: int = 100, in_channels: int = 1,
                 dtype: Any = jnp.float32, remat: bool = False, recompute: str = "none",
                 recompute_stages: int = STAGES, depthwise: str = "auto", padding: str = "tf", head: str = "gap",
                 evidence_taps: Sequence[str] = (HEAD, "stage4"),
                 evidence_width: int = 64, pooling: str = "lse", lse_r: float = 1.0,
                 vertebra_channels: int = 0, vertebra_stride: int = 8, vertebra_width: int = 64,
                 vertebra_dilations: Sequence[int] = (1, 1), vertebra_detach: bool = False,
                 rngs: nnx.Rngs):
        tasks = tuple(tasks)
        unknown = [t for t in tasks if t not in TASKS]
        if not tasks or unknown or len(set(tasks)) != len(tasks):
            raise ConfigError(f"tasks must be distinct names from {TASKS}, got {tasks}")
        if variant not in VARIANTS:
            raise ConfigError(f"unknown EfficientNet variant {variant!r}; expected one of {sorted(VARIANTS)}")
        self.tasks = tasks
        self.use_clinical = use_clinical
        self.num_clinical = num_clinical
        self.backbone = EfficientNet(variant, in_channels=in_channels, num_classes=None, dtype=dtype,
                                     remat=remat, recompute=recompute,
                                     recompute_stages=recompute_stages, depthwise=depthwise,
                                     padding=padding, rngs=rngs)
        if head not in HEADS:
            raise ConfigError(f"model head must be one of {HEADS}, got {head!r}")
        self.head = head
        self.pooling, self.lse_r = pooling, float(lse_r)
        if head == "gap":  # (creation order fixes the random initialisation: keep it)
            self.head_taps: tuple[str, ...] = ()
            self.image_dropout = nnx.Dropout(VARIANTS[variant].dropout, rngs=rngs)
            self.image_projection = nnx.Linear(self.backbone.num_features, image_projection, rngs=rngs)
            self.clinical = ClinicalBranch(num_clinical, clinical_hidden, rngs=rngs) if use_clinical else None
            fused = image_projection + (clinical_hidden[-1] if use_clinical else 0)
            self.fusion = nnx.Linear(fused, fusion_hidden, rngs=rngs)
            self.output = nnx.Linear(fusion_hidden, len(tasks), rngs=rngs)
        else:
            self.clinical = ClinicalBranch(num_clinical, clinical_hidden, rngs=rngs) if use_clinical else None
            self.head_taps = check_taps(variant, evidence_taps)
            strides = [tap_strides(variant)[t] for t in self.head_taps]
            if strides != sorted(strides, reverse=True):
                raise ConfigError(f"evidence_taps go from coarse to fine (strides {dict(zip(self.head_taps, strides))})")
            task_poolings(pooling, len(tasks))  # a clear error now rather than at the first call
            self.evidence = EvidenceHead(tap_channels(variant, self.backbone.num_features),
                                         self.head_taps, len(tasks), width=evidence_width,
                                         dropout=VARIANTS[variant].dropout, dtype=dtype, rngs=rngs)
            # Clinical values add one logit per task to every position alike: they shift the
            # image's score, never where its evidence lies.
            self.clinical_logits = (nnx.Linear(clinical_hidden[-1], len(tasks), rngs=rngs)
                                    if use_clinical else None)
        # Created last, so the rest of the network initialises as without it.
        self.vertebra_detach = bool(vertebra_detach)
        self.vertebra_taps: tuple[str, ...] = (vertebra_taps(variant, vertebra_stride)
                                               if vertebra_channels else ())
        self.vertebra_head = (VertebraHead(tap_channels(variant, self.backbone.num_features),
                                           vertebra_channels, taps=self.vertebra_taps,
                                           width=vertebra_width, dilations=tuple(vertebra_dilations), dtype=dtype,
                                           rngs=rngs)
                              if vertebra_channels else None)

    def image_features(self, image: jax.Array) -> jax.Array:
        """Scale the raw image and return the backbone's last-stage feature map."""
        return self.backbone.features(normalize_input(image))

    def score_layers(self) -> tuple[str, ...]:
        """The feature taps the logits depend on, finest first: every layer up to the
        coarsest one the head reads (``gap``: all of them, it pools ``head``)."""
        names = tap_names(self.backbone.variant)
        if not self.head_taps:
            return names
        return names[:max(names.index(t) for t in self.head_taps) + 1]

    def image_taps(self, image: jax.Array, taps: Sequence[str] = (),
                   deltas: dict[str, jax.Array] | None = None) -> dict[str, jax.Array]:
        """Scale the raw image; the feature maps ``taps`` and those the head needs (with
        ``deltas`` added, see :meth:`EfficientNet.taps`)."""
        return self.backbone.taps(normalize_input(image), (*taps, *self.head_taps, *self.vertebra_taps),
                                  deltas)

    def _check_clinical(self, batch: int, clinical: jax.Array | None, clinical_mask: jax.Array | None) -> None:
        if self.clinical is None:
            return
        expected = (batch, self.num_clinical)
        for name, arr in (("clinical", clinical), ("clinical_mask", clinical_mask)):
            if arr is None or tuple(arr.shape) != expected:
                got = None if arr is None else tuple(arr.shape)
                raise ValueError(f"{name} must have shape {expected}, got {got}")

    def classify(self, features: jax.Array, clinical: jax.Array | None,
                 clinical_mask: jax.Array | None) -> jax.Array:
        """Logits of the ``gap`` head from the last feature map (split out so saliency can
        differentiate w.r.t. ``features``)."""
        return self.classify_taps({HEAD: features}, clinical, clinical_mask)[0]

    def classify_taps(self, taps: dict[str, jax.Array], clinical: jax.Array | None,
                      clinical_mask: jax.Array | None) -> tuple[jax.Array, jax.Array | None]:
        """(logits [B, T], evidence map [B, h, w, T] of the ``evidence`` head, else None)."""
        self._check_clinical(taps[HEAD].shape[0], clinical, clinical_mask)
        c = None
        if self.clinical is not None:
            c = self.clinical(clinical.astype(jnp.float32), clinical_mask.astype(jnp.float32))
        if self.head == "gap":
            h = self.image_projection(self.image_dropout(self.backbone.head(taps[HEAD])))
            if c is not None:
                h = jnp.concatenate([h, c], axis=-1)
            return self.output(self.fusion(h)), None
        evidence = self.evidence(taps)
        logits = pool_evidence(evidence, self.pooling, self.lse_r)
        if c is not None:
            logits = logits + self.clinical_logits(c)
        return logits, evidence

    def __call__(self, image: jax.Array, clinical: jax.Array | None, clinical_mask: jax.Array | None, *,
                 return_features: bool = False):
        """Logits [B, T]; with `return_features`, (logits, last-stage feature map)."""
        self._check_clinical(image.shape[0], clinical, clinical_mask)
        taps = self.image_taps(image)
        logits, _ = self.classify_taps(taps, clinical, clinical_mask)
        return (logits, taps[HEAD]) if return_features else logits

    def outputs(self, image: jax.Array, clinical: jax.Array | None,
                clinical_mask: jax.Array | None) -> dict[str, jax.Array]:
        """``{"logits": [B, T]}``, and with the vertebra head ``"vertebrae"``: its raw map
        [B, H/S, W/S, channels] float32, S = ``model.vertebra_stride``
        (:func:`vertex_jax.vertebrae.decode.split` names it)."""
        self._check_clinical(image.shape[0], clinical, clinical_mask)
        taps = self.image_taps(image)
        logits, _ = self.classify_taps(taps, clinical, clinical_mask)
        out = {"logits": logits}
        if self.vertebra_head is not None:
            out["vertebrae"] = self.vertebra_map(taps)
        return out

    def vertebra_map(self, taps: dict[str, jax.Array]) -> jax.Array:
        """The vertebra head's raw map from :meth:`image_taps`' features (detached with
        ``vertebra_detach``: its gradient then stops at the head)."""
        if self.vertebra_detach:
            taps = {t: jax.lax.stop_gradient(taps[t]) for t in self.vertebra_taps}
        return self.vertebra_head(taps)
