"""Is this the kind of image the model was made for? A warning per image, never silence.

The model reads lateral spine radiographs (or DXA VFA scans). From the DICOM header:
ViewPosition (0018,5101) must be blank or lateral (``LL``, ``RL``, ``LAT``, ``LATERAL``,
``LLD``, ``RLD``), and BodyPartExamined (0018,0015) blank or a spine (``SPINE``,
``TSPINE``, ``LSPINE``, ``TLSPINE``, ``THORACICSPINE``, ``LUMBARSPINE``); from every
image: its height / width within what training saw (:data:`ASPECT`). What falls outside is
named in the ``input_check`` column of ``scores.csv`` (``predict --refuse-unexpected``
withholds those scores); blank means nothing unexpected was found.
"""

from __future__ import annotations

import os

import pandas as pd
import pydicom

from vertex_jax.data.io import is_dicom

LATERAL = {"LL", "RL", "LAT", "LATERAL", "LLD", "RLD"}
SPINE = {"SPINE", "TSPINE", "LSPINE", "TLSPINE", "THORACICSPINE", "LUMBARSPINE"}
# height / width of the training images (the synthetic cohort follows the papers' sizes:
# radiographs ~1.45, some square detectors ~0.9; VFA scans ~2.9), with a margin
ASPECT = {"xray": (0.75, 3.0), "vfa": (1.5, 4.5)}


def header_findings(path: str | os.PathLike) -> list[str]:
    """What a DICOM header says against the image being a lateral spine view ([] if nothing)."""
    if not is_dicom(path):
        return []
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True,
                             specific_tags=["ViewPosition", "BodyPartExamined"])
    except Exception:  # noqa: BLE001 - an unreadable header is reported when the image is read
        return []
    view = str(ds.get("ViewPosition", "") or "").strip().upper()
    part = str(ds.get("BodyPartExamined", "") or "").strip().upper().replace(" ", "")
    found = []
    if view and view not in LATERAL:
        found.append(f"ViewPosition {view} (the model reads lateral views)")
    if part and part not in SPINE:
        found.append(f"BodyPartExamined {part} (the model reads spines)")
    return found


def geometry_finding(shape: tuple[int, int], domain: str) -> str | None:
    """A note when the image's height / width is outside training's range, else None."""
    lo, hi = ASPECT[domain]
    aspect = shape[0] / max(shape[1], 1)
    if lo <= aspect <= hi:
        return None
    return f"height/width {aspect:.2f} outside {lo:g}-{hi:g} of the {domain} training images"


def add_header_findings(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with ``input_check`` from each row's (absolute) ``path`` header."""
    out = df.copy()
    out["input_check"] = ["; ".join(header_findings(p)) if isinstance(p, str) and p else "" for p in out["path"]]
    return out
