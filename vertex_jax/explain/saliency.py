"""Saliency maps of a VERTE-X model, batched in JAX: one backbone pass per batch for every task.

Methods (``A`` a tapped feature map [h, w, C], ``G`` the gradient of a task's logit w.r.t. it):

- ``gradcam``: ``ReLU(sum_c mean_ij(G_c) A_c)`` (Selvaraju et al. 2017);
- ``hirescam``: ``ReLU(sum_c G_c * A_c)``, the gradient kept per position, so the map is the
  exact contribution of each position for a linear head (Draelos & Carin, arXiv 2011.08891);
- ``layercam``: per layer ``ReLU(sum_c ReLU(G_c) * A_c)``, each normalised, resized to the
  finest layer and averaged (Jiang et al. 2021), from a stride-8/16 stage up to the head;
- ``evidence``: the evidence head's own map (no gradient): each position's share of the
  image logit (:func:`vertex_jax.models.evidence.evidence_weights`).

Gradients of every tapped layer come from one backward pass per task: the model is called with
zero ``deltas`` added to the tapped outputs and differentiated with respect to those. In
evaluation mode example ``i``'s logits depend on example ``i`` only, so a pull-back of a task's
logit column gives every example's gradient at once. Maps are normalised to [0, 1] per image
and task; :meth:`~vertex_jax.data.preprocess.Geometry.heatmap_to_original` puts them on the
original pixels.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vertex_jax.explain import METHODS
from vertex_jax.models.evidence import HEAD, check_taps, evidence_map
from vertex_jax.errors import ConfigError

# Grad-CAM keeps its classic layer; HiResCAM and LayerCAM default to the layers that pointed
# best on the demo (README, "Localisation"): HiResCAM at stage 1 (stride 4) for the `gap` head,
# and for an evidence head at the finest layer the head reads (stage 2, stride 8, on the demo).
DEFAULT_LAYERS = {"gradcam": (HEAD,), "hirescam": ("stage1",),
                  "layercam": ("stage1", "stage2", "stage4", HEAD), "evidence": ()}


def default_layers(method: str, model) -> tuple[str, ...]:
    """The layers ``method`` reads when none are given (see :data:`DEFAULT_LAYERS`)."""
    if method == "hirescam" and model.head == "evidence":
        return (model.head_taps[-1],)
    return DEFAULT_LAYERS[method]


def check_layers_read(model, layers: Sequence[str]) -> None:
    """Refuse layers the model's scores do not depend on: their gradient is zero, so every
    map would be empty (e.g. ``head`` under an evidence head, which reads earlier stages)."""
    read = model.score_layers()
    if unread := [name for name in layers if name not in read]:
        raise ConfigError(f"the model's scores do not depend on layer(s) {', '.join(unread)} (its "
                         f"{model.head} head reads {', '.join(model.head_taps) or 'head'}), so their "
                         f"maps would be empty; layers that work: {', '.join(read)}")


Saliency = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def _normalise(maps: jax.Array) -> jax.Array:
    """[B, T, h, w] -> each map divided by its maximum (all-zero maps stay zero)."""
    top = jnp.max(maps, axis=(2, 3), keepdims=True)
    return jnp.where(top > 0, maps / jnp.where(top > 0, top, 1.0), 0.0)


def _resize(maps: jax.Array, shape: tuple[int, int]) -> jax.Array:
    return jax.image.resize(maps, (*maps.shape[:2], *shape), "bilinear")


def layer_map(method: str, activation: jax.Array, gradient: jax.Array) -> jax.Array:
    """[B, h, w, C] activation and gradient -> [B, h, w] map of one layer (before
    normalisation)."""
    a, g = activation.astype(jnp.float32), gradient.astype(jnp.float32)
    if method == "gradcam":
        return jax.nn.relu(jnp.einsum("bhwc,bc->bhw", a, jnp.mean(g, axis=(1, 2))))
    if method == "hirescam":
        return jax.nn.relu(jnp.sum(g * a, axis=-1))
    if method == "layercam":
        return jax.nn.relu(jnp.sum(jax.nn.relu(g) * a, axis=-1))
    raise ValueError(f"no gradient map for method {method!r}")


def make_saliency(model, tasks: str | Sequence[str], method: str = "hirescam",
                  layers: Sequence[str] | None = None) -> Saliency:
    """``(image, clinical, clinical_mask) -> (maps [B, len(tasks), h, w] in [0, 1], logits
    [B, T])`` for a model in evaluation mode; ``h, w``: the finest layer's grid."""
    tasks = (tasks,) if isinstance(tasks, str) else tuple(tasks)
    if unknown := [t for t in tasks if t not in model.tasks]:
        raise ConfigError(f"the model has no task {unknown[0]!r}; it has {model.tasks}")
    if method not in METHODS:
        raise ConfigError(f"saliency method must be one of {METHODS}, got {method!r}")
    if method == "evidence" and model.head != "evidence":
        raise ConfigError("method 'evidence' needs a model trained with model.head=evidence")
    layers = check_taps(model.backbone.variant, layers or default_layers(method, model)) \
        if method != "evidence" else ()
    if method in ("gradcam", "hirescam") and len(layers) != 1:
        raise ConfigError(f"{method} takes one layer, got {layers}")
    check_layers_read(model, layers)
    columns = [model.tasks.index(t) for t in tasks]
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state, image, clinical, clinical_mask):
        net = nnx.merge(graphdef, state)
        if method == "evidence":
            logits, evidence = net.classify_taps(net.image_taps(image), clinical, clinical_mask)
            maps = jnp.moveaxis(evidence_map(evidence, net.pooling, net.lse_r), -1, 1)
            return _normalise(maps[:, jnp.asarray(columns)]), logits
        shapes = jax.eval_shape(lambda: net.image_taps(image, layers))
        zeros = {name: jnp.zeros(shapes[name].shape, jnp.float32) for name in layers}

        def forward(deltas):
            taps = net.image_taps(image, layers, deltas)
            logits, _ = net.classify_taps(taps, clinical, clinical_mask)
            return logits.astype(jnp.float32), {name: taps[name] for name in layers}

        logits, pull_back, taps = jax.vjp(forward, zeros, has_aux=True)
        finest = max((taps[name].shape[1:3] for name in layers), key=lambda s: s[0] * s[1])
        maps = []
        for t in columns:
            (grads,) = pull_back(jnp.zeros_like(logits).at[:, t].set(1.0))
            per_layer = jnp.stack([_resize(layer_map(method, taps[n], grads[n])[:, None], finest)[:, 0]
                                   for n in layers], axis=1)  # [B, layers, h, w]
            per_layer = _normalise(per_layer)
            maps.append(jnp.mean(per_layer, axis=1))
        return _normalise(jnp.stack(maps, axis=1)), logits

    def saliency(image, clinical, clinical_mask):
        maps, logits = run(state, image, clinical, clinical_mask)
        return np.asarray(maps), np.asarray(logits)

    return saliency
