"""What to score: a folder of DICOM/PNG files or a manifest-style CSV, as one table.

The table has the manifest columns (:mod:`vertex_jax.data.manifest`), parsed the same way;
from a folder, or where a CSV leaves them out, clinical values and labels are blank
(the model's missing-value path is used and the output says so), ``image_id`` is the
file's path relative to the folder (or CSV) without its extension (with it, where two
files differ only by extension), and ``patient_id`` defaults to the ``image_id``.

A folder is searched recursively (hidden folders left out). Every file is accounted for:
it is an input when its extension is an image one or its content is DICOM (preamble, or a
data set without preamble, whatever the name: ``IM0001``, ``1.2.840...``); ``DICOMDIR``
and every other file are *skipped*, with the reason (:attr:`Inputs.skipped`). Files are
not decoded here: an unreadable one is reported when it is scored, without stopping the
run. With ``clinical_from_dicom`` blank age/sex/BMI come from the DICOM headers
(:mod:`vertex_jax.data.dicom_clinical`; the CSV wins).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pandas as pd

from vertex_jax.data.dicom_clinical import fill_from_headers
from vertex_jax.data.io import is_dicom
from vertex_jax.data.manifest import REQUIRED, ManifestError, read_csv, validate
from vertex_jax.errors import MissingInputError

IMAGE_SUFFIXES = {".dcm", ".dicom", ".dic", ".png", ".jpg", ".jpeg", ".tif", ".tiff"}
OPTIONAL_COLUMNS = ("split", "exam")
DICOMDIR_REASON = "DICOMDIR: the index of a DICOM CD or export folder, not an image (its images are read as files)"


@dataclasses.dataclass(frozen=True)
class Inputs:
    """The validated table to score and the files of a folder that are not inputs."""

    table: pd.DataFrame
    skipped: pd.DataFrame  # path, reason


def scan_folder(folder: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(inputs, skipped with the reason) for every file under ``folder``, in sorted order."""
    found, skipped = [], []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            path = Path(root) / name
            if name.upper() == "DICOMDIR":
                skipped.append((path, DICOMDIR_REASON))
            elif name.startswith("."):  # also macOS "._name" resource forks
                skipped.append((path, "hidden file"))
            elif path.suffix.lower() in IMAGE_SUFFIXES or is_dicom(path):
                found.append(path)
            else:
                skipped.append((path, f"extension {path.suffix or '(none)'} is not an image one, "
                                      f"and the content is not DICOM"))
    return found, skipped


def find_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursive): known suffixes, plus DICOM by content."""
    return scan_folder(folder)[0]


def unique_ids(paths: list[Path], root: Path) -> list[str]:
    """Relative paths without extension, with it where that alone would repeat an id."""
    full = [(p.relative_to(root) if p.is_relative_to(root) else Path(p.name)).as_posix() for p in paths]
    ids = [Path(f).with_suffix("").as_posix() for f in full]
    while len(set(ids)) < len(ids):  # ends: full relative paths are unique
        counts = pd.Series(ids).value_counts()
        ids = [f if counts[i] > 1 else i for i, f in zip(ids, full)]
    return ids


def collect_inputs(source: str | os.PathLike, domain: str, *, clinical_from_dicom: bool = False
                   ) -> Inputs:
    """The images to score, validated like a manifest (every problem listed at once)."""
    source = Path(source)
    skipped: list[tuple[Path, str]] = []
    if source.is_dir():
        paths, skipped = scan_folder(source)
        if not paths:
            raise MissingInputError(f"no DICOM/PNG/JPEG/TIFF files found under {source} "
                                    f"({len(skipped)} other file(s))")
        df = pd.DataFrame({"path": [str(p) for p in paths], "image_id": unique_ids(paths, source)})
        root = source
    elif source.is_file():
        df = read_csv(source)
        if "path" not in df.columns:
            raise ManifestError(str(source), ["missing column 'path'"])
        root = source.parent
        if "image_id" not in df.columns:
            df["image_id"] = unique_ids([root / p for p in df["path"]], root)
    else:
        raise MissingInputError(f"input {source} is neither a folder nor a CSV file")
    if "patient_id" not in df.columns:
        df["patient_id"] = df["image_id"]
    if "domain" not in df.columns:
        df["domain"] = domain
    for column in (*REQUIRED, *OPTIONAL_COLUMNS):
        if column not in df.columns:
            df[column] = ""
    if clinical_from_dicom:
        df = fill_from_headers(df, root)
    table = validate(df, root, source=str(source), check_files=False)
    return Inputs(table, pd.DataFrame({"path": [str(p) for p, _ in skipped],
                                       "reason": [r for _, r in skipped]}))


def load_inputs(source: str | os.PathLike, domain: str, *, clinical_from_dicom: bool = False
                ) -> pd.DataFrame:
    """The table of :func:`collect_inputs` alone."""
    return collect_inputs(source, domain, clinical_from_dicom=clinical_from_dicom).table
