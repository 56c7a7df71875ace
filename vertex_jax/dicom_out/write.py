"""A prediction run's DICOM outputs (``predict --dicom-out DIR``).

For every scored DICOM image: ``DIR/<StudyInstanceUID>/SR_<SOPInstanceUID>.dcm`` (the
Structured Report, :mod:`~vertex_jax.dicom_out.report`) and, per task with a saliency
overlay, ``DIR/<StudyInstanceUID>/SC_<task>_<SOPInstanceUID>.dcm`` (the Secondary Capture,
:mod:`~vertex_jax.dicom_out.capture`); the UIDs in the names are the outputs' own
(deterministic: a re-run overwrites the same files). Inputs that are not DICOM are skipped;
an output that cannot be made (a header without its UIDs, an unreadable overlay) is named
with the reason and the run goes on. Everything not written is listed in
``DIR/not_written.csv``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import pydicom

from vertex_jax.data.io import is_dicom
from vertex_jax.dicom_out.capture import secondary_capture
from vertex_jax.dicom_out.report import structured_report
from vertex_jax.dicom_out.source import missing_identifiers, read_header
from vertex_jax.dicom_out.uids import METHOD_KEY
from vertex_jax.errors import InputDataError
from vertex_jax.files import atomic_open

CONSOLE_LIMIT = 5  # failures listed on the console; all are in not_written.csv
LISTING = "not_written.csv"
OverlayPath = Callable[[str, str], Path]  # (image_id, task) -> the overlay PNG's path


@dataclasses.dataclass
class DicomOutputs:
    """What a run wrote and what it did not (``not_written``: path, output, kind, reason)."""

    folder: Path
    reports: int = 0
    captures: int = 0
    images: int = 0  # DICOM images with at least one output
    not_written: list[dict[str, str]] = dataclasses.field(default_factory=list)
    overlays: bool = True
    written: list[Path] = dataclasses.field(default_factory=list)  # every file, in writing order

    def _count(self, kind: str) -> int:
        return sum(1 for r in self.not_written if r["kind"] == kind)

    def summary(self) -> list[str]:
        """The console lines: counts that add up, then the failures."""
        skipped, failed = self._count("skipped"), self._count("failed")
        lines = [f"DICOM outputs -> {self.folder}: {self.reports} structured report(s) and "
                 f"{self.captures} secondary capture(s) for {self.images} DICOM image(s); "
                 f"{skipped} input(s) skipped (not DICOM: no study to file into), {failed} output(s) failed"]
        if not self.overlays:
            lines.append("no saliency overlays (they need --explain DIR, jax backend): structured reports only")
        failures = [r for r in self.not_written if r["kind"] == "failed"]
        lines += [f"  {r['path']} ({r['output']}): {r['reason']}" for r in failures[:CONSOLE_LIMIT]]
        if len(failures) > CONSOLE_LIMIT:
            lines.append(f"  … and {len(failures) - CONSOLE_LIMIT} more")
        if self.not_written:
            lines.append(f"not written, with the reason: {self.folder / LISTING}")
        return lines


def _save(ds: pydicom.Dataset, folder: Path, name: str) -> Path:
    path = folder / str(ds.StudyInstanceUID) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as f:
        ds.save_as(f, enforce_file_format=True)
    return path


def prepare_folder(folder: Path) -> None:
    """Make ``folder`` (a UserError when it cannot be) and remove a previous run's listing."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise InputDataError(f"--dicom-out {folder} is a file, not a folder",
                             todo="give a folder (it is made when absent)") from None
    except PermissionError:
        raise InputDataError(f"--dicom-out {folder}: permission denied",
                             todo="give a folder you can write to") from None
    (folder / LISTING).unlink(missing_ok=True)  # a previous run's list would mislead


def _one(out: DicomOutputs, row: Mapping[str, Any], tasks: Sequence[str],
         thresholds: Mapping[str, float] | None, overlay: OverlayPath | None,
         vertebrae: Sequence[Mapping[str, Any]]) -> None:
    path = str(row["path"])

    def failed(output: str, e: Exception) -> None:
        out.not_written.append({"path": path, "output": output, "kind": "failed",
                                "reason": f"{type(e).__name__}: {e}"})

    if not is_dicom(path):
        out.not_written.append({"path": path, "output": "all", "kind": "skipped",
                                "reason": "not DICOM (PNG/JPEG/TIFF input): no study to file into"})
        return
    try:
        source = read_header(path)
    except Exception as e:  # noqa: BLE001 - one unreadable header loses only its outputs
        failed("all", e)
        return
    if missing := missing_identifiers(source):
        failed("all", ValueError(f"the source header has no {', '.join(missing)}"))
        return
    wrote = False
    try:
        sr = structured_report(source, row, tasks=tasks, thresholds=thresholds, vertebrae=vertebrae)
        out.written.append(_save(sr, out.folder, f"SR_{sr.SOPInstanceUID}.dcm"))
        out.reports, wrote = out.reports + 1, True
    except Exception as e:  # noqa: BLE001 - named and counted; the others go on
        failed("SR", e)
    for task in tasks if overlay is not None else ():
        picture_path = overlay(str(row["image_id"]), task)
        if not picture_path.exists():
            continue  # an empty map has no overlay (scores.csv: <task>_map = empty)
        try:
            picture = cv2.imread(str(picture_path), cv2.IMREAD_COLOR)
            if picture is None:
                raise OSError(f"cannot read the overlay {picture_path}")
            sc = secondary_capture(source, row, task, cv2.cvtColor(picture, cv2.COLOR_BGR2RGB))
            out.written.append(_save(sc, out.folder, f"SC_{task}_{sc.SOPInstanceUID}.dcm"))
            out.captures, wrote = out.captures + 1, True
        except Exception as e:  # noqa: BLE001
            failed(f"SC {task}", e)
    out.images += wrote


def write_outputs(scores: pd.DataFrame, folder: str | Path, *, tasks: Sequence[str],
                  thresholds: Mapping[str, float] | None = None, method: str | None = None,
                  overlay: OverlayPath | None = None, vertebrae: pd.DataFrame | None = None) -> DicomOutputs:
    """The SR (and SCs, with ``overlay``) of every scores.csv row into ``folder``;
    ``method`` names the saliency map (part of the outputs' identity); ``vertebrae``, the
    rows of ``<out>_vertebrae.csv``, adds a group per found vertebra to its image's SR."""
    out = DicomOutputs(Path(folder), overlays=overlay is not None)
    prepare_folder(out.folder)
    narrow = [c for c in scores.columns if scores[c].dtype == np.float32]  # to_dict widens them
    found = {} if vertebrae is None else {str(k): g.to_dict("records")
                                          for k, g in vertebrae.groupby("image_id", sort=False)}
    for row in scores.to_dict("records"):
        row.update({c: np.float32(row[c]) for c in narrow})  # the SR holds scores.csv's decimals
        if method:
            row[METHOD_KEY] = method
        _one(out, row, tasks, thresholds, overlay, found.get(str(row["image_id"]), []))
    if out.not_written:
        pd.DataFrame(out.not_written).to_csv(out.folder / LISTING, index=False)
    return out
