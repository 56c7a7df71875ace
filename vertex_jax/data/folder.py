"""The images of a folder: every file accounted for, and an id for each image.

A folder is searched recursively (hidden folders left out). A file is an image when its
extension is an image one or its content is DICOM (preamble, or a data set without
preamble, whatever the name: ``IM0001``, ``1.2.840...``); ``DICOMDIR`` and every other file
are skipped, with the reason. An image's id is its path relative to the folder without
its extension (with it, where two files differ only by extension).
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from vertex_jax.data.io import is_dicom

IMAGE_SUFFIXES = {".dcm", ".dicom", ".dic", ".png", ".jpg", ".jpeg", ".tif", ".tiff"}
DICOMDIR_REASON = "DICOMDIR: the index of a DICOM CD or export folder, not an image (its images are read as files)"


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
