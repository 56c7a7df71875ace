"""Vertebrae: per-level detection, naming and Genant grading, the numerical parts (NumPy only).

A vertebra head on the backbone's feature map gives dense, CenterNet-style outputs on a
stride-``S`` grid of the preprocessed canvas (:mod:`~vertex_jax.vertebrae.targets`, the
channel layout; ``S = 8`` at the 1024×512 canvas). This package holds everything around the
network: reading per-vertebra annotations (:mod:`~vertex_jax.vertebrae.annotations`), Genant
grades measured from six endplate points (:mod:`~vertex_jax.vertebrae.genant`), encoding
annotations into the head's dense targets (:mod:`~vertex_jax.vertebrae.targets`), decoding
outputs back into vertebrae in original-image pixels (:mod:`~vertex_jax.vertebrae.decode`),
naming levels from the spine's order (:mod:`~vertex_jax.vertebrae.levels`) and the per-vertebra
and per-image metrics with bootstrap intervals (:mod:`~vertex_jax.vertebrae.metrics`).
No JAX: the training code calls these on the host.
"""

from vertex_jax.vertebrae.levels import LEVELS

__all__ = ["LEVELS"]
