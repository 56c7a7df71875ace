"""Build a manifest from a folder: one row per image, everything the headers can tell.

- ``patient_id`` from PatientID (else the image id, counted in the report);
- age, sex and BMI from the headers (:mod:`vertex_jax.data.dicom_clinical`), with their
  source per row (``clinical_source``) and why a value is missing (``clinical_notes``);
- the DICOM identifiers (:mod:`vertex_jax.data.dicom_ids`);
- labels (and split, and any age/sex/BMI, which win over the header) joined from a CSV by the
  first identifier column it shares with the images: image_id, sop_instance_uid,
  accession_number, study_instance_uid, series_instance_uid, dicom_patient_id or patient_id.

Paths are written relative to the manifest's folder. The result is checked with the
manifest's own validation, so ``python -m vertex_jax.main --config.data.manifest=CSV``
takes it as it is.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pandas as pd

from vertex_jax.data.clinical import CLINICAL
from vertex_jax.data.dicom_clinical import fill_from_headers
from vertex_jax.data.dicom_ids import COLUMNS as IDENTIFIERS, add_identifiers
from vertex_jax.data.folder import scan_folder, unique_ids
from vertex_jax.data.manifest import REQUIRED, ManifestError, read_csv, validate
from vertex_jax.errors import InputDataError, MissingInputError
from vertex_jax.tasks import TASKS

JOIN_KEYS = ("image_id", "sop_instance_uid", "accession_number", "study_instance_uid", "series_instance_uid",
             "dicom_patient_id", "patient_id")
FROM_LABELS = (*TASKS, "split", *CLINICAL)  # columns a labels CSV may give


@dataclasses.dataclass(frozen=True)
class Built:
    """The manifest table and what could not be filled."""

    table: pd.DataFrame
    report: dict


def _join_labels(df: pd.DataFrame, labels_path: Path) -> tuple[pd.DataFrame, dict]:
    labels = read_csv(labels_path)
    key = next((k for k in JOIN_KEYS if k in labels.columns), None)
    if key is None:
        raise ManifestError(str(labels_path), [f"no identifier column to join on; expected one of {list(JOIN_KEYS)}"])
    given = [c for c in FROM_LABELS if c in labels.columns]
    if not given:
        raise ManifestError(str(labels_path), [f"no label column; expected some of {list(FROM_LABELS)}"])
    labels = labels[labels[key].str.strip() != ""]
    if (dup := labels[key].duplicated(keep=False)).any():
        raise ManifestError(str(labels_path), [f"{key} {sorted(set(labels[key][dup]))[:5]} appear(s) more than once: "
                                               "which label is meant?"])
    merged = df.drop(columns=[c for c in given if c in df.columns]).merge(
        labels[[key, *given]], on=key, how="left", indicator=True)
    matched = merged["_merge"] == "both"
    unused = sorted(set(labels[key]) - set(df[key]))
    merged = merged.drop(columns="_merge")
    merged[given] = merged[given].fillna("")
    report = {"joined_on": key, "columns": given, "images_labelled": int(matched.sum()),
              "images_without_a_label_row": int((~matched).sum()),
              "label_rows_matching_no_image": len(unused), "first_unmatched_label_keys": unused[:10]}
    return merged, report


def build_manifest(folder: str | os.PathLike, out: str | os.PathLike, *, labels: str | os.PathLike | None = None,
                   domain: str = "xray") -> Built:
    """The manifest of every image under ``folder`` (to be written at ``out``)."""
    folder, out = Path(folder), Path(out)
    if not folder.is_dir():
        raise MissingInputError(f"{folder} is not a folder")
    paths, skipped = scan_folder(folder)
    if not paths:
        raise MissingInputError(f"no DICOM/PNG/JPEG/TIFF files under {folder} ({len(skipped)} other file(s))")
    df = pd.DataFrame({"image_id": unique_ids(paths, folder), "path": [str(p) for p in paths]})
    df = add_identifiers(df, "/")
    from_header = df["dicom_patient_id"] != ""
    df["patient_id"] = df["dicom_patient_id"].where(from_header, df["image_id"])
    df["domain"] = domain
    report: dict = {"folder": str(folder), "images": len(df), "dicom": int((df["sop_instance_uid"] != "").sum()),
                    "skipped_files": [{"path": str(p), "reason": r} for p, r in skipped],
                    "patients": int(df["patient_id"].nunique()),
                    "images_without_patient_id": int((~from_header).sum())}
    if labels is not None:
        df, report["labels"] = _join_labels(df, Path(labels))
    for column in (*REQUIRED, "split"):
        if column not in df.columns:
            df[column] = ""
    df = fill_from_headers(df, "/")
    report["clinical_from_header"] = {c: int(df["clinical_source"].str.contains(f"{c}=dicom", regex=False).sum())
                                      for c in CLINICAL}
    report["clinical_missing"] = {c: int((df[c].astype(str).str.strip() == "").sum()) for c in CLINICAL}
    report["labels_missing"] = {t: int((df[t].astype(str).str.strip() == "").sum()) for t in TASKS}
    columns = [*REQUIRED, "split", *IDENTIFIERS, "clinical_source", "clinical_notes"]
    table = df[columns + [c for c in df.columns if c not in columns]]
    validate(table, folder, source=str(out))  # what main will check (the paths still absolute)
    table = table.assign(path=[os.path.relpath(p, out.resolve().parent) for p in table["path"]])
    if table["pvf"].eq("").all() and table["osteo"].eq("").all():
        report["note"] = "no labels: score with predict, or give --labels to train"
    if table.empty:
        raise InputDataError(f"no images under {folder}")
    return Built(table, report)


def summary(report: dict) -> list[str]:
    """The report, a few lines for the terminal."""
    lines = [f"{report['images']} image(s) ({report['dicom']} DICOM) of {report['patients']} patient(s) "
             f"under {report['folder']}; {len(report['skipped_files'])} other file(s) skipped"]
    if report["images_without_patient_id"]:
        lines.append(f"{report['images_without_patient_id']} image(s) without a PatientID: each is its own "
                     "patient (give patient_id in --labels to group them)")
    lab = report.get("labels")
    if lab:
        lines.append(f"labels joined on {lab['joined_on']}: {lab['images_labelled']} image(s) labelled, "
                     f"{lab['images_without_a_label_row']} without a label row, {lab['label_rows_matching_no_image']} "
                     f"label row(s) matching no image" + (f" (e.g. {', '.join(lab['first_unmatched_label_keys'][:3])})"
                                                          if lab["first_unmatched_label_keys"] else ""))
    lines.append("from the headers: " + ", ".join(f"{c} {n}" for c, n in report["clinical_from_header"].items())
                 + "; still missing: " + ", ".join(f"{c} {n}" for c, n in report["clinical_missing"].items())
                 + " (see clinical_notes)")
    lines.append("labels missing: " + ", ".join(f"{t} {n}" for t, n in report["labels_missing"].items()))
    if "note" in report:
        lines.append(report["note"])
    return lines
