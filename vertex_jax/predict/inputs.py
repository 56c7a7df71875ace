"""What to score: a folder of DICOM/PNG files or a manifest-style CSV, as one table.

The table has the manifest columns (:mod:`vertex_jax.data.manifest`), parsed the same way;
from a folder, or where a CSV leaves them out, clinical values and labels are blank
(the model's missing-value path is used and the output says so), ``image_id`` is the
file's path relative to the folder (or CSV) without its extension, and ``patient_id``
defaults to the ``image_id``. Files are not opened here: an unreadable one is reported
when it is scored, without stopping the run.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from vertex_jax.data.manifest import REQUIRED, ManifestError, validate

IMAGE_SUFFIXES = {".dcm", ".dicom", ".dic", ".png", ".jpg", ".jpeg", ".tif", ".tiff"}
OPTIONAL_COLUMNS = ("split", "exam")


def _is_dicom_without_suffix(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


def find_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursive): known suffixes, plus suffix-less DICOMs."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            path = Path(root) / name
            if name.startswith("."):
                continue
            if path.suffix.lower() in IMAGE_SUFFIXES or (not path.suffix and _is_dicom_without_suffix(path)):
                found.append(path)
    return found


def _image_id(path: Path, root: Path) -> str:
    rel = path.relative_to(root) if path.is_relative_to(root) else Path(path.name)
    return rel.with_suffix("").as_posix()


def load_inputs(source: str | os.PathLike, domain: str) -> pd.DataFrame:
    """The images to score, validated like a manifest (every problem listed at once)."""
    source = Path(source)
    if source.is_dir():
        paths = find_images(source)
        if not paths:
            raise FileNotFoundError(f"no DICOM/PNG/JPEG/TIFF files found under {source}")
        df = pd.DataFrame({"path": [str(p) for p in paths],
                           "image_id": [_image_id(p, source) for p in paths]})
        root, name = source, str(source)
    elif source.is_file():
        try:
            df = pd.read_csv(source, dtype=str, keep_default_na=False)
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
            raise ManifestError(str(source), [f"cannot read CSV: {e}"]) from e
        if "path" not in df.columns:
            raise ManifestError(str(source), ["missing column 'path'"])
        root, name = source.parent, str(source)
        if "image_id" not in df.columns:
            df["image_id"] = [_image_id(root / p, root) for p in df["path"]]
    else:
        raise FileNotFoundError(f"input {source} is neither a folder nor a CSV file")
    if "patient_id" not in df.columns:
        df["patient_id"] = df["image_id"]
    if "domain" not in df.columns:
        df["domain"] = domain
    for column in REQUIRED:
        if column not in df.columns:
            df[column] = ""
    for column in OPTIONAL_COLUMNS:
        if column not in df.columns:
            df[column] = ""
    return validate(df, root, source=name, check_files=False)
