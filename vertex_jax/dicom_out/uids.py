"""Deterministic UIDs: the same source image scored by the same model gives the same SR/SC
Series and SOP Instance UIDs every time, so sending a study twice does not duplicate results.

A UID is :func:`pydicom.uid.generate_uid` over a fixed list of strings: the output's kind,
the source's Study (series UIDs) or SOP Instance UID (instance UIDs), and the model's
identity (its name, step, calibration, saliency method; :func:`model_identity`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

import pydicom
from pydicom.uid import generate_uid

METHOD_KEY = "saliency_method"  # row key naming the saliency map's method, when a map was made
NAMESPACE = "vertex_jax.dicom_out/1"  # bump only to mint new UIDs for the same inputs


@dataclasses.dataclass(frozen=True)
class OutputUids:
    """Series and SOP Instance UID of one output."""

    series: str
    instance: str


def text(value: Any) -> str:
    """A cell as stable text: blank for None/NaN, ``3`` for 3.0 (a step read back from CSV)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def model_name(row: Mapping[str, Any]) -> str:
    """The model's name: its run folder's name for a checkpoint path (``.../<run>/checkpoints/
    <step>``, as the JAX backend and an exported model's model.json name it), so neither
    where the run lies nor the backend changes it; any other name as it is."""
    name = text(row.get("model"))
    parts = PurePath(name).parts
    if "checkpoints" in parts[1:]:
        return parts[len(parts) - 1 - parts[::-1].index("checkpoints") - 1]
    return PurePath(name).name if len(parts) > 1 else name


def model_identity(row: Mapping[str, Any]) -> list[str]:
    """What makes two scorings the same: model name, step, calibration, saliency method."""
    return [model_name(row), *(text(row.get(k)) for k in ("model_step", "calibration", METHOD_KEY))]


def _derived(*parts: str) -> str:
    return generate_uid(entropy_srcs=[NAMESPACE, *parts])


def output_uids(source: pydicom.Dataset, row: Mapping[str, Any], kind: str) -> OutputUids:
    """UIDs of output ``kind`` (e.g. ``sr``, ``sc-pvf``) for ``source`` scored as in ``row``:
    one series per study, model and kind; one instance per source instance, model and kind."""
    identity = model_identity(row)
    return OutputUids(series=_derived("series", kind, str(source.StudyInstanceUID), *identity),
                      instance=_derived("instance", kind, str(source.SOPInstanceUID), *identity))


def derived_uid(*parts: str) -> str:
    """Any other deterministic UID (tracking identifiers, the device observer)."""
    return _derived(*parts)
