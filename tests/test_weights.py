"""Weight-file dispatch errors (no peer library needed)."""

from __future__ import annotations

import pytest
from flax import nnx

from vertex_jax.models import EfficientNet, WeightImportError, load_pretrained


def _model() -> EfficientNet:
    return nnx.eval_shape(lambda: EfficientNet("b0", rngs=nnx.Rngs(0)))


def test_unknown_file_type_is_named(tmp_path):
    path = tmp_path / "weights.npz"
    path.write_bytes(b"not weights")
    with pytest.raises(WeightImportError, match=r"weights\.npz: unknown weight file type"):
        load_pretrained(_model(), path)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.h5"):
        load_pretrained(_model(), tmp_path / "nothing.h5")


def test_h5_without_keras_layout_is_rejected(tmp_path):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f["data"] = [1, 2, 3]
    with pytest.raises(WeightImportError, match=r"other\.h5: not a Keras weight file"):
        load_pretrained(_model(), path)
