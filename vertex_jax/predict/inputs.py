"""What to score: a folder of DICOM/PNG files or a manifest-style CSV, as one table.

The table has the manifest columns (:mod:`vertex_jax.data.manifest`), parsed the same way;
from a folder, or where a CSV leaves them out, clinical values and labels are blank
(the model's missing-value path is used and the output says so), ``image_id`` is the
file's path relative to the folder (or CSV) without its extension (with it, where two
files differ only by extension), and ``patient_id`` defaults to the DICOM PatientID, else
the ``image_id``. Every DICOM input's identifiers (study, series and instance UIDs,
accession number: :mod:`vertex_jax.data.dicom_ids`) are read from its header and go into
the scores, so a score can be filed back to its study.

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
from vertex_jax.data.dicom_ids import add_identifiers
from vertex_jax.data.folder import scan_folder, unique_ids
from vertex_jax.data.input_check import add_header_findings
from vertex_jax.data.manifest import REQUIRED, ManifestError, read_csv, validate
from vertex_jax.errors import MissingInputError

OPTIONAL_COLUMNS = ("split", "exam")


@dataclasses.dataclass(frozen=True)
class Inputs:
    """The validated table to score and the files of a folder that are not inputs."""

    table: pd.DataFrame
    skipped: pd.DataFrame  # path, reason


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
    df = add_identifiers(df, root)
    if "patient_id" not in df.columns:  # PatientID where the header has it
        df["patient_id"] = df["dicom_patient_id"].where(df["dicom_patient_id"] != "", df["image_id"])
    if "domain" not in df.columns:
        df["domain"] = domain
    for column in (*REQUIRED, *OPTIONAL_COLUMNS):
        if column not in df.columns:
            df[column] = ""
    if clinical_from_dicom:
        df = fill_from_headers(df, root)
    table = add_header_findings(validate(df, root, source=str(source), check_files=False))
    return Inputs(table, pd.DataFrame({"path": [str(p) for p, _ in skipped],
                                       "reason": [r for _, r in skipped]}))


def load_inputs(source: str | os.PathLike, domain: str, *, clinical_from_dicom: bool = False
                ) -> pd.DataFrame:
    """The table of :func:`collect_inputs` alone."""
    return collect_inputs(source, domain, clinical_from_dicom=clinical_from_dicom).table
