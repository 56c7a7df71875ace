"""The served model and the scoring of one uploaded file, by ``predict``'s own code.

An upload is stored in a temporary folder with a one-row CSV beside it (its id, its file,
the form's age/sex/BMI) and that CSV goes through :func:`vertex_jax.predict.inputs.collect_inputs`
(with the DICOM header filling what the form leaves blank, as ``predict
--clinical-from-dicom`` does) and :func:`vertex_jax.predict.run.score_table`: the same
reading, preprocessing, clinical encoding and output columns as ``predict --backend onnx``.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vertex_jax.data.clinical import CLINICAL
from vertex_jax.errors import MissingInputError
from vertex_jax.jsonable import jsonable
from vertex_jax.predict.inputs import collect_inputs
from vertex_jax.predict.onnx_backend import OnnxBackend
from vertex_jax.predict.run import NOT_AN_IMAGE, score_table
from vertex_jax.predict.vertebra_table import VertebraTable
from vertex_jax.run_layout import CARD_MARKDOWN_FILE
from vertex_jax.serve.upload import UploadError

MODEL_FILE = "model.onnx"
SLOTS = 2  # uploads decoded and scored at once; more wait (a decoded image can be 200 MB)


def resolve_model(path: str | Path) -> Path:
    """model.onnx from the export's output folder (``onnx/model.onnx`` under it), its
    ``onnx`` folder or the file itself; :class:`MissingInputError` otherwise."""
    given = Path(path)
    if given.is_file() and given.suffix == ".onnx":
        return given
    looked = [given / MODEL_FILE, given / "onnx" / MODEL_FILE] if given.is_dir() else []
    for candidate in looked:
        if candidate.is_file():
            return candidate
    seen = ("it is a file, not an .onnx model" if given.is_file() else
            f"neither {looked[0]} nor {looked[1]} exists" if looked else "no such file or folder")
    raise MissingInputError(f"--model {given}: no exported ONNX model there ({seen})",
                            todo="give the output folder of python -m vertex_jax.export (it holds "
                                 "onnx/model.onnx), its onnx/ folder or the model.onnx file")


@dataclasses.dataclass(frozen=True)
class Scored:
    """One upload's scores (the scores.csv row as JSON values), its format and, for a model
    with the vertebra head, its found vertebrae (the ``<out>_vertebrae.csv`` rows, top to
    bottom; None without the head)."""

    row: dict[str, Any]
    format: str
    vertebrae: list[dict[str, Any]] | None = None

    def answer(self) -> dict[str, Any]:
        """The JSON answer: the row, and ``vertebrae`` when the model has the head."""
        return self.row if self.vertebrae is None else {**self.row, "vertebrae": self.vertebrae}


class Scorer:
    """The exported model (``model``: as :func:`resolve_model` takes it) and one-file scoring."""

    def __init__(self, model: str | Path, *, threads: int = 0):
        self.path = resolve_model(model)
        self.backend = OnnxBackend(self.path, threads=threads)
        self.domain = self.backend.domain or "xray"
        self._slots = threading.BoundedSemaphore(SLOTS)

    @property
    def name(self) -> str:
        return self.backend.name

    @property
    def card(self) -> dict[str, Any]:
        """model.json's content."""
        return self.backend.metadata

    def card_markdown(self) -> str | None:
        """The clinical model card (``model_card.md`` beside the model), None when the export
        has none (made before the export wrote it)."""
        path = self.path.with_name(CARD_MARKDOWN_FILE)
        return path.read_text(encoding="utf-8") if path.is_file() else None

    def score_file(self, path: Path, *, filename: str, fmt: str, clinical: Mapping[str, str]) -> Scored:
        """Score the stored upload ``path`` (``filename``: the client's name; ``clinical``: the
        form's manifest text, "" where not given). Raises :class:`UploadError` (422) when the
        file cannot be read or preprocessed, with predict's reason."""
        table = path.with_name("upload.csv")
        image_id = Path(filename).stem or "upload"
        pd.DataFrame([{"image_id": image_id, "path": path.name,
                       **{c: clinical.get(c, "") for c in CLINICAL}}]).to_csv(table, index=False)
        df = collect_inputs(table, self.domain, clinical_from_dicom=True).table
        found = VertebraTable.for_backend(self.backend, list(df["image_id"]))
        with self._slots:
            scores, unreadable = score_table(df, self.backend, batch=1, workers=1, progress=False,
                                             vertebrae=found)
        if len(unreadable):
            failure = unreadable.iloc[0]
            reason = str(failure["reason"]).replace(str(path), filename)
            what = reason if failure["kind"] == NOT_AN_IMAGE else f"cannot read the image: {reason}"
            raise UploadError(422, f"{filename}: {what}",
                              "send one single-frame greyscale radiograph (DICOM, PNG, JPEG or TIFF), whole")
        row = scores.iloc[0].to_dict()
        row["path"] = filename
        row["clinical_source"] = str(df["clinical_source"].iloc[0]).replace("=csv", "=form")
        row["clinical_notes"] = str(df["clinical_notes"].iloc[0])
        vertebrae = None
        if found is not None:
            vertebrae = [{k: _plain(v) for k, v in r.items()} for r in found.frame(scores).to_dict("records")]
            for r in vertebrae:
                r["path"] = filename
        return Scored({k: _plain(v) for k, v in row.items()}, fmt, vertebrae)


def _plain(value: Any) -> Any:
    """A JSON value: NumPy scalars unwrapped, NaN / NA as null."""
    if isinstance(value, str):
        return value
    if value is None or value is pd.NA or (isinstance(value, (float, np.floating)) and not math.isfinite(value)):
        return None
    return jsonable(value)
