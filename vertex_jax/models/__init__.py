"""Models: EfficientNet B0-B7 (Flax NNX), the VERTE-X fusion network, pretrained-weight import."""

from vertex_jax.models.efficientnet import VARIANTS, EfficientNet, block_specs, normalize_input, to_unit_float
from vertex_jax.models.vertex import VertexNet
from vertex_jax.models.weight_maps import ImportReport, WeightImportError
from vertex_jax.models.weights import build_pretrained, load_pretrained

__all__ = [
    "VARIANTS", "EfficientNet", "block_specs", "normalize_input", "to_unit_float", "VertexNet",
    "ImportReport", "WeightImportError", "build_pretrained", "load_pretrained",
]
