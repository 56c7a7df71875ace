"""Grad-CAM for a task's logit from the last convolutional stage, mapped onto the original image.

``cam = ReLU(sum_c w_c * A_c)`` with ``w_c`` the spatial mean of d logit / d A_c, ``A`` the
backbone's last feature map (after the head convolution), computed batched in JAX with the
model in evaluation mode (so examples do not interact), normalised to [0, 1] per image,
then resampled through the preprocessing :class:`~vertex_jax.data.preprocess.Geometry`
onto the original pixels. ``pointing_game`` scores a heat-map's peak against boxes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import cv2
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vertex_jax.data.preprocess import Geometry
from vertex_jax.models.vertex import VertexNet


def make_gradcam(model: VertexNet, tasks: str | Sequence[str]
                 ) -> Callable[..., tuple[np.ndarray, np.ndarray]]:
    """``(image, clinical, clinical_mask) -> (cams [B, len(tasks), h, w] in [0, 1], logits
    [B, T])``; the backbone runs once per batch, whatever the number of tasks."""
    tasks = (tasks,) if isinstance(tasks, str) else tuple(tasks)
    if unknown := [t for t in tasks if t not in model.tasks]:
        raise ValueError(f"the model has no task {unknown[0]!r}; it has {model.tasks}")
    columns = [model.tasks.index(t) for t in tasks]
    graphdef, state = nnx.split(model)

    @jax.jit
    def cam(state, image, clinical, clinical_mask):
        net = nnx.merge(graphdef, state)
        feats = net.image_features(image)
        # Eval mode: example i's logits depend on feats[i] only, so one pull-back of a
        # task's column gives every example's gradient.
        logits, pull_back = jax.vjp(
            lambda f: net.classify(f, clinical, clinical_mask).astype(jnp.float32), feats)
        maps = []
        for t in columns:
            (grads,) = pull_back(jnp.zeros_like(logits).at[:, t].set(1.0))
            weights = jnp.mean(grads.astype(jnp.float32), axis=(1, 2))
            maps.append(jax.nn.relu(jnp.einsum("bhwc,bc->bhw", feats.astype(jnp.float32), weights)))
        maps = jnp.stack(maps, axis=1)
        peak = jnp.max(maps, axis=(2, 3), keepdims=True)
        return jnp.where(peak > 0, maps / jnp.where(peak > 0, peak, 1.0), 0.0), logits

    def run(image, clinical, clinical_mask):
        maps, logits = cam(state, image, clinical, clinical_mask)
        return np.asarray(maps), np.asarray(logits)

    return run


def to_original(cam: np.ndarray, geometry: Geometry) -> np.ndarray:
    """A canvas-covering heat-map resampled onto the original image (0 outside the crop)."""
    return geometry.heatmap_to_original(cam)


def peak(heatmap: np.ndarray) -> tuple[float, float]:
    """(x, y) of the heat-map maximum (the centre of mass of tied maxima)."""
    ys, xs = np.nonzero(heatmap >= heatmap.max())
    return float(xs.mean()), float(ys.mean())


def pointing_hit(heatmap: np.ndarray, boxes: Sequence[Sequence[float]], margin: float = 0.0) -> bool:
    """Whether the heat-map peak lies inside any (x0, y0, x1, y1) box, grown by ``margin``
    times its size on each side."""
    x, y = peak(heatmap)
    for x0, y0, x1, y1 in boxes:
        mx, my = margin * (x1 - x0), margin * (y1 - y0)
        if x0 - mx <= x <= x1 + mx and y0 - my <= y <= y1 + my:
            return True
    return False


def overlay(original: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """BGR uint8 picture: the original (min-max to 8 bits) with a JET heat-map blended in."""
    grey = cv2.normalize(original.astype(np.float32), None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    colour = cv2.applyColorMap(np.clip(heatmap * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
    weight = (alpha * heatmap)[..., None]
    out = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR) * (1 - weight) + colour * weight
    return np.clip(out, 0, 255).astype(np.uint8)


def save_overlay(path: str | Path, original: np.ndarray, heatmap: np.ndarray) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), overlay(original, heatmap)):
        raise OSError(f"cannot write {path}")
    return path
