"""The ONNX backend of ``predict``: an exported model.onnx served by onnxruntime, without JAX.

Everything besides the graph (tasks, preprocessing, clinical statistics, checkpoint and
step, thresholds, the vertebra head's grid and channel layout) comes from the ``model.json``
written next to it by ``python -m vertex_jax.export``. Imports neither JAX nor anything that does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnxruntime as ort

from vertex_jax.calibrate import Calibration
from vertex_jax.data.clinical import ClinicalStats
from vertex_jax.data.clinical import CLINICAL
from vertex_jax.data.preprocess import PreprocessConfig
from vertex_jax.errors import InputDataError, MissingInputError
from vertex_jax.vertebrae.targets import HeadSpec

SCHEMA = "vertex_jax.export/1"
DEFAULT_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")
_ORT_DTYPES = {"tensor(uint8)": np.uint8, "tensor(uint16)": np.uint16, "tensor(float)": np.float32}


def read_model_json(path: Path) -> dict[str, Any]:
    """model.json, checked for the keys this backend reads."""
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise MissingInputError(f"{path} not found: an exported model.onnx needs the model.json "
                                "written next to it by python -m vertex_jax.export") from None
    except (OSError, json.JSONDecodeError) as e:
        raise InputDataError(f"{path}: cannot read model metadata: {e}") from None
    if not isinstance(meta, dict) or meta.get("schema") != SCHEMA:
        got = meta.get("schema") if isinstance(meta, dict) else type(meta).__name__
        raise InputDataError(f"{path}: schema {got!r} is not {SCHEMA!r}")
    missing = [k for k in ("tasks", "preprocess", "clinical_stats", "model") if k not in meta]
    if missing:
        raise InputDataError(f"{path}: missing key(s) {missing}")
    return meta


class OnnxBackend:
    """Scores preprocessed canvases with an exported ONNX model.

    ``model_path``: model.onnx (or the folder holding it). ``providers``: onnxruntime
    execution providers, default CUDA where onnxruntime-gpu provides it, then CPU.
    ``threads``: intra-op threads (0 = onnxruntime's default).
    """

    def __init__(self, model_path: str | Path, *, providers: Sequence[str] | None = None,
                 threads: int = 0):
        path = Path(model_path)
        if path.is_dir():
            path = path / "model.onnx"
        if not path.is_file():
            raise MissingInputError(f"ONNX model {path} not found")
        meta_path = path.with_name("model.json")
        self.metadata = read_model_json(meta_path)
        try:
            self.tasks: tuple[str, ...] = tuple(self.metadata["tasks"])
            self.preprocess = PreprocessConfig.from_dict(self.metadata["preprocess"])
            self.stats = ClinicalStats.from_dict(self.metadata["clinical_stats"])
            self.name: str = str(self.metadata["model"]["checkpoint"])
            step = self.metadata["model"].get("step")
            vertebrae = self.metadata.get("vertebrae")
            self.vertebrae: HeadSpec | None = None if vertebrae is None else HeadSpec.from_dict(vertebrae)
        except (KeyError, TypeError, ValueError) as e:
            raise InputDataError(f"{meta_path}: malformed entry: {type(e).__name__}: {e}") from None
        self.step: int | None = None if step is None else int(step)
        self.domain: str | None = self.metadata.get("domain")
        self.thresholds: dict | None = self.metadata.get("thresholds")
        self.calibration: Calibration | None = Calibration.from_card(self.metadata)  # applied in the graph
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        available = ort.get_available_providers()
        providers = list(providers or [p for p in DEFAULT_PROVIDERS if p in available])
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self._check_session(meta_path)

    def _check_session(self, meta_path: Path) -> None:
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name: o for o in self.session.get_outputs()}
        if set(inputs) != {"image", "clinical", "clinical_mask"} or \
                not {"probabilities", "logits"} <= set(outputs):
            raise InputDataError(f"{meta_path}: the ONNX graph has inputs {sorted(inputs)} and outputs "
                             f"{sorted(outputs)}; expected an export of vertex_jax")
        if self.vertebrae is not None and "vertebrae" not in outputs:
            raise InputDataError(f"{meta_path}: describes a vertebra head but the ONNX graph has no "
                                 "'vertebrae' output; the JSON belongs to another model")
        width = outputs["probabilities"].shape[1]
        if width != len(self.tasks):
            raise InputDataError(f"{meta_path}: lists tasks {list(self.tasks)} but the ONNX model has "
                             f"{width} output column(s); the JSON belongs to another model")
        self._image_dtype = _ORT_DTYPES[inputs["image"].type]

    def score(self, image: np.ndarray, clinical: np.ndarray, clinical_mask: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities, logits), float32 [n, len(tasks)], for canvases [n, H, W(, 1)]."""
        probabilities, logits = self._run(("probabilities", "logits"), image, clinical, clinical_mask)
        return probabilities, logits

    def score_vertebrae(self, image: np.ndarray, clinical: np.ndarray, clinical_mask: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(probabilities, logits, the vertebra head's raw map [n, h, w, channels]) of a model
        exported with the head (:attr:`vertebrae` is its spec)."""
        if self.vertebrae is None:
            raise InputDataError(f"{self.name}: the exported model has no vertebra head")
        probabilities, logits, raw = self._run(("probabilities", "logits", "vertebrae"), image,
                                               clinical, clinical_mask)
        return probabilities, logits, raw

    def _run(self, names: tuple[str, ...], image: np.ndarray, clinical: np.ndarray,
             clinical_mask: np.ndarray) -> list[np.ndarray]:
        """The outputs ``names`` for canvases [n, H, W(, 1)], the inputs checked first."""
        image = np.asarray(image)
        if image.ndim == 3:
            image = image[..., None]
        n, h, w = len(image), *self.preprocess.canvas
        problems = []
        if image.shape != (n, h, w, 1):
            problems.append(f"image shape {image.shape}, expected ({n}, {h}, {w}, 1)")
        if image.dtype != self._image_dtype:
            problems.append(f"image dtype {image.dtype}, expected {np.dtype(self._image_dtype)} "
                            f"(preprocess out_dtype {self.preprocess.out_dtype})")
        feeds = {"image": image}
        for key, values in (("clinical", clinical), ("clinical_mask", clinical_mask)):
            feeds[key] = np.asarray(values, np.float32)
            if feeds[key].shape != (n, len(CLINICAL)):
                problems.append(f"{key} shape {feeds[key].shape}, expected ({n}, {len(CLINICAL)})")
        if problems:
            raise InputDataError(f"{self.name}: " + "; ".join(problems))
        if n == 0:
            return [np.zeros((0, *self.vertebrae.grid, self.vertebrae.channels) if k == "vertebrae"
                             else (0, len(self.tasks)), np.float32) for k in names]
        return self.session.run(list(names), feeds)
