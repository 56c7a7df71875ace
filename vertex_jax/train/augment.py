"""Training augmentation on the accelerator: rotation, scaling, Gaussian noise, mirroring,
and the clinical-variable dropout.

The paper augments with *"Gaussian noise addition, rotation, and scaling"* (the authors'
sibling code: rotation up to 30°, scale ±15%). It runs inside the jitted training step,
after the uint8 canvas reaches the device: on the CPU the warp of one 1024×512 canvas
costs more than the whole cache-to-batch path (``python -m vertex_jax.bench.input``
measures both), while on a GPU it is a negligible gather. Each example's draw depends
only on (seed, epoch, index), so a resumed run, a different device count or a different
process count sees identical augmentations. Each random choice draws from its own named
stream of the example's key (:data:`STREAMS`, :func:`stream`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from vertex_jax.models.efficientnet import to_unit_float

# The random streams of one example's key: ``stream(key, name)`` is ``fold_in(key, salt)``.
# The rotation angle, scale and noise sigma come from ``split(key, 3)`` of the key itself
# (``draw_params``). The salts are fixed: a change would change every augmentation drawn,
# so recorded results and resumed runs would no longer match.
STREAMS = {"noise": 3, "flip": 4, "clinical_dropout": 7}


def stream(key: jax.Array, name: str) -> jax.Array:
    """The key of stream ``name`` (see :data:`STREAMS`) of an example's ``key``."""
    return jax.random.fold_in(key, STREAMS[name])


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    max_rotation_deg: float = 30.0
    max_scale_delta: float = 0.15  # scale drawn from [1 - d, 1 + d]
    max_noise_std: float = 0.03  # noise sigma drawn from [0, max] on the [0, 1] scale
    flip_prob: float = 0.0  # left-right mirror: lateral films are taken facing either way

    @classmethod
    def from_config(cls, section: Any) -> "AugmentConfig":
        """From a run's ``config.augment``; fields it lacks (older runs) keep their defaults."""
        return cls(**{f.name: float(section[f.name]) for f in dataclasses.fields(cls)
                      if f.name in section})


def example_keys(seed: int, epoch: jax.Array, index: jax.Array) -> jax.Array:
    """One PRNG key per example from (seed, epoch, index)."""
    base = jax.random.key(seed)
    return jax.vmap(lambda e, i: jax.random.fold_in(jax.random.fold_in(base, e), i))(
        jnp.asarray(epoch, jnp.uint32), jnp.asarray(index, jnp.uint32))


def draw_params(key: jax.Array, config: AugmentConfig) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(angle in degrees, scale, noise sigma) for one example."""
    k_rot, k_scale, k_noise = jax.random.split(key, 3)
    angle = jax.random.uniform(k_rot, (), minval=-1.0, maxval=1.0) * config.max_rotation_deg
    scale = 1.0 + jax.random.uniform(k_scale, (), minval=-1.0, maxval=1.0) * config.max_scale_delta
    sigma = jax.random.uniform(k_noise, ()) * config.max_noise_std
    return angle, scale, sigma


def warp(image: jax.Array, angle_deg: jax.Array, scale: jax.Array) -> jax.Array:
    """Rotate by ``angle_deg`` (counter-clockwise) and scale about the centre; zero fill.

    ``image`` is [H, W] float. Matches ``cv2.warpAffine`` with
    ``cv2.getRotationMatrix2D(((W-1)/2, (H-1)/2), angle, scale)`` and bilinear sampling.
    """
    h, w = image.shape
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    theta = jnp.deg2rad(angle_deg)
    cos, sin = jnp.cos(theta) / scale, jnp.sin(theta) / scale
    ys, xs = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32) - cy,
                          jnp.arange(w, dtype=jnp.float32) - cx, indexing="ij")
    # Inverse of the forward map [[a, b], [-b, a]] with a = s cos, b = s sin.
    src_x = cos * xs - sin * ys + cx
    src_y = sin * xs + cos * ys + cy
    return jax.scipy.ndimage.map_coordinates(image, [src_y, src_x], order=1, mode="constant")


def draw_flip(key: jax.Array, config: AugmentConfig) -> jax.Array:
    """Whether the example is mirrored left-right (always False when ``flip_prob`` is 0)."""
    if config.flip_prob > 0.0:
        return jax.random.bernoulli(stream(key, "flip"), config.flip_prob)
    return jnp.bool_(False)


def warp_params(keys: jax.Array, config: AugmentConfig) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-example (angle in degrees, scale, mirror) of the warp :func:`augment_batch` applies
    with ``keys``: what moves the vertebra annotations with the pixels
    (:mod:`vertex_jax.train.vertebra_targets`)."""
    def one(key: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        angle, scale, _ = draw_params(key, config)
        return angle, scale, draw_flip(key, config)
    return jax.vmap(one)(keys)


def augment_one(image: jax.Array, key: jax.Array, config: AugmentConfig) -> jax.Array:
    """[H, W, C] float in [0, 1] → augmented float in [0, 1]."""
    angle, scale, sigma = draw_params(key, config)
    if config.flip_prob > 0.0:
        image = jnp.where(draw_flip(key, config), image[:, ::-1], image)
    warped = jax.vmap(lambda c: warp(c, angle, scale), in_axes=-1, out_axes=-1)(image)
    noise = jax.random.normal(stream(key, "noise"), warped.shape, warped.dtype)
    return jnp.clip(warped + sigma * noise, 0.0, 1.0)


def augment_batch(images: jax.Array, keys: jax.Array, config: AugmentConfig = AugmentConfig()
                  ) -> jax.Array:
    """[B, H, W, C] uint8/uint16 (or float in [0, 1]) canvases → augmented float32 in [0, 1]."""
    x = to_unit_float(images)
    return jax.vmap(lambda im, k: augment_one(im, k, config))(x, keys)


def hide_clinical(mask: jax.Array, keys: jax.Array, rate: float) -> jax.Array:
    """Modality dropout: with probability ``rate`` an example's clinical values are all
    presented as missing (the model's missing-value path), drawn from the example's
    ``clinical_dropout`` stream. Keeps the image branch from leaning on age/sex/BMI alone."""
    if rate <= 0.0:
        return mask
    hide = jax.vmap(lambda k: jax.random.bernoulli(stream(k, "clinical_dropout"), rate))(keys)
    return mask * (1.0 - hide.astype(mask.dtype))[:, None]
