"""The Secondary Capture of one saliency overlay: the overlay picture (the source image with
the map blended in) under a black banner that carries the warning, in a new series of the
source's study, with Burned In Annotation YES and the source image referenced. An overlay
narrower than :data:`MIN_WIDTH` pixels is enlarged by a whole factor first, so the warning
is legible; the SC's pixels are not the source's geometry (it is a picture, not an image to
measure on)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import cv2
import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset

from vertex_jax.dicom_out import MANUFACTURER, NOT_FOR_CLINICAL_USE
from vertex_jax.dicom_out.source import completed, missing_identifiers
from vertex_jax.dicom_out.uids import METHOD_KEY, output_uids, text

SERIES_NUMBER = 9902  # beside the SR's 9901; one series per task
FONT = cv2.FONT_HERSHEY_SIMPLEX
MIN_WIDTH = 480  # narrower overlays are enlarged (whole pixels) so that the warning stays legible


def _lines(task: str, row: Mapping[str, Any]) -> list[str]:
    method = text(row.get(METHOD_KEY))
    return [NOT_FOR_CLINICAL_USE, f"VERTE-X {task} map" + (f" ({method})" if method else "")]


def enlargement(width: int) -> int:
    """The whole-pixel factor that makes a picture ``width`` wide at least :data:`MIN_WIDTH`."""
    return max(1, -(-MIN_WIDTH // max(width, 1)))


def with_banner(picture: np.ndarray, lines: list[str]) -> np.ndarray:
    """``picture`` (RGB uint8; enlarged by :func:`enlargement`, each pixel a square block)
    under a black banner with ``lines`` in white, each scaled to fit the width."""
    factor = enlargement(picture.shape[1])
    if factor > 1:
        picture = np.repeat(np.repeat(picture, factor, axis=0), factor, axis=1)
    width = picture.shape[1]
    rendered = []
    for line in lines:
        (w, h), _ = cv2.getTextSize(line, FONT, 1.0, 2)
        scale = min(1.5, 0.92 * width / w)
        thickness = max(1, round(2 * scale))
        (w, h), base = cv2.getTextSize(line, FONT, scale, thickness)
        strip = np.zeros((h + base + max(4, h // 2), width, 3), np.uint8)
        cv2.putText(strip, line, ((width - w) // 2, h + max(2, h // 4)), FONT, scale, (255, 255, 255),
                    thickness, cv2.LINE_AA)
        rendered.append(strip)
    return np.ascontiguousarray(np.concatenate([*rendered, picture], axis=0))


def secondary_capture(source: pydicom.Dataset, row: Mapping[str, Any], task: str,
                      picture: np.ndarray) -> Dataset:
    """The SC of ``task``'s overlay ``picture`` (RGB uint8) for
    the image whose header is ``source`` scored as in ``row``; deterministic UIDs."""
    if missing := missing_identifiers(source):
        raise ValueError(f"the source header has no {', '.join(missing)}")
    if picture.ndim != 3 or picture.shape[2] != 3 or picture.dtype != np.uint8:
        raise ValueError(f"the overlay must be an RGB uint8 picture, got {picture.dtype} {picture.shape}")
    header = completed(source)
    orientation = header.get("PatientOrientation")
    uids = output_uids(source, row, f"sc-{task}")
    with warnings.catch_warnings():  # highdicom's remarks on the source's own person names
        warnings.simplefilter("ignore", UserWarning)
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=header, pixel_array=with_banner(picture, _lines(task, row)),
            photometric_interpretation="RGB", bits_allocated=8, coordinate_system="PATIENT",
            series_instance_uid=uids.series, series_number=SERIES_NUMBER,
            sop_instance_uid=uids.instance, instance_number=int(text(source.get("InstanceNumber")) or 1),
            manufacturer=MANUFACTURER,
            patient_orientation=tuple(orientation) if orientation and len(orientation) == 2 else ("A", "F"),
            series_description=f"VERTE-X {task} map - {NOT_FOR_CLINICAL_USE}")
    if not (orientation and len(orientation) == 2):
        sc.PatientOrientation = None  # Type 2C: unknown, as in the source, rather than guessed
    if "Laterality" not in sc:  # Type 2C; the spine is unpaired: empty, as validators expect it
        sc.Laterality = source.get("Laterality") or None
    sc.BurnedInAnnotation = "YES"
    sc.ImageComments = f"{NOT_FOR_CLINICAL_USE}: research model output, not a diagnosis."
    sc.DerivationDescription = f"VERTE-X {task} saliency map blended over the source image"
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    sc.SourceImageSequence = [reference]
    return sc
