"""Helpers shared by the weight-import parity tests against Keras and timm."""

import jax
import numpy as np
from flax import nnx

from vertex_jax.models import EfficientNet, normalize_input


def rel_error(ours, ref) -> float:
    """max |ours - ref| / max |ref| in float64."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))


@nnx.jit
def forward(net: EfficientNet, image: jax.Array):
    """Raw image (uint8) -> (logits or pooled features, feature map), input scaling included."""
    return net(normalize_input(image), return_features=True)
