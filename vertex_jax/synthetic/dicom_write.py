"""Write single-frame greyscale DICOM files (synthetic cohorts, tests).

Pixels are given "bone bright" (MONOCHROME2 sense). Encoders, all lossless:

- ``"none"``: Explicit VR Little Endian.
- ``"rle"``: RLE Lossless, pydicom's own encoder.
- ``"jpegls"``: JPEG-LS Lossless, pyjpegls (CharLS).
- ``"jpeg2000"``: JPEG 2000 Lossless, pylibjpeg-openjpeg.
- ``"jpeg-lossless"``: JPEG Lossless Process 14 SV1 (first-order prediction); pydicom has no
  encoder for it, so libjpeg-turbo's lossless mode is used through ``imagecodecs``.

Files are written atomically (:func:`vertex_jax.files.atomic_open`), so a reader never
sees a half-written file.
"""

from __future__ import annotations

import os

import imagecodecs
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import compress, set_pixel_data
from pydicom.uid import (
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)
from pydicom.valuerep import format_number_as_ds

from vertex_jax.files import atomic_open

COMPRESSIONS = ("none", "rle", "jpegls", "jpeg2000", "jpeg-lossless")

# compression -> (transfer syntax, pydicom encoding plugin); JPEG Lossless is encoded here.
_PYDICOM_ENCODERS = {
    "rle": (RLELossless, "pydicom"),
    "jpegls": (JPEGLSLossless, "pyjpegls"),
    "jpeg2000": (JPEG2000Lossless, "pylibjpeg"),
}
_PHOTOMETRICS = ("MONOCHROME1", "MONOCHROME2")
_SPACING_TAGS = ("PixelSpacing", "ImagerPixelSpacing")


def write_dicom(
    path: str | os.PathLike,
    pixels: np.ndarray,
    *,
    bits_stored: int,
    photometric: str = "MONOCHROME2",
    compression: str = "none",
    pixel_spacing_mm: tuple[float, float] | None = None,
    pixel_spacing_tag: str = "PixelSpacing",
    patient_id: str = "ANON",
    patient_sex: str | None = None,
    patient_age_years: float | None = None,
    modality: str = "DX",
    manufacturer: str | None = None,
    rescale: tuple[float, float] | None = None,
    window: tuple[float, float] | None = None,
) -> None:
    """Write a 2-D unsigned greyscale image as a single-frame DICOM file.

    Args:
      path: destination file; its folder must exist.
      pixels: 2-D uint8/uint16 array, bone bright, every value < 2**bits_stored.
      bits_stored: 1..16; Bits Allocated is 8 up to 8 bits stored, else 16.
      photometric: "MONOCHROME2", or "MONOCHROME1" (stores 2**bits_stored - 1 - pixels,
        so a correct reader recovers ``pixels``).
      compression: one of COMPRESSIONS, all lossless.
      pixel_spacing_mm: (row, column) spacing written to ``pixel_spacing_tag``
        ("PixelSpacing" or "ImagerPixelSpacing").
      patient_id, patient_sex ("M"/"F"/"O"), patient_age_years, modality, manufacturer:
        header fields. Modality "DX" gives the Digital X-Ray (For Presentation) SOP class,
        anything else Secondary Capture.
      rescale: (slope, intercept) stored as Rescale Slope/Intercept (pixels untouched).
      window: (center, width) stored as Window Center/Width (pixels untouched).

    Raises:
      ValueError: on an invalid argument.
    """
    stored = _stored_pixels(pixels, bits_stored, photometric)
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {COMPRESSIONS}, got {compression!r}")
    if pixel_spacing_tag not in _SPACING_TAGS:
        raise ValueError(f"pixel_spacing_tag must be one of {_SPACING_TAGS}, got {pixel_spacing_tag!r}")

    ds = _header(modality, patient_id, patient_sex, patient_age_years, manufacturer, photometric)
    set_pixel_data(ds, stored, photometric, bits_stored, generate_instance_uid=False)
    if pixel_spacing_mm is not None:
        setattr(ds, pixel_spacing_tag, [_ds_value(v) for v in pixel_spacing_mm])
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = (_ds_value(v) for v in rescale)
        ds.RescaleType = "US"
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = (_ds_value(v) for v in window)
    _encode(ds, stored, bits_stored, compression)
    with atomic_open(path, "wb") as f:
        ds.save_as(f, enforce_file_format=True)


def _stored_pixels(pixels: np.ndarray, bits_stored: int, photometric: str) -> np.ndarray:
    """Validate ``pixels`` and return the stored values in the Bits Allocated dtype."""
    pixels = np.asarray(pixels)
    if pixels.ndim != 2 or pixels.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"pixels must be a 2-D uint8/uint16 array, got {pixels.dtype} {pixels.shape}")
    if not 1 <= bits_stored <= 16:
        raise ValueError(f"bits_stored must be in 1..16, got {bits_stored}")
    if photometric not in _PHOTOMETRICS:
        raise ValueError(f"photometric must be one of {_PHOTOMETRICS}, got {photometric!r}")
    top = 2**bits_stored - 1
    if pixels.size and int(pixels.max()) > top:
        raise ValueError(f"pixel value {int(pixels.max())} does not fit in {bits_stored} bits stored")
    stored = pixels.astype(np.uint8 if bits_stored <= 8 else np.uint16)
    if photometric == "MONOCHROME1":
        stored = top - stored
    return np.ascontiguousarray(stored)


def _header(
    modality: str,
    patient_id: str,
    patient_sex: str | None,
    patient_age_years: float | None,
    manufacturer: str | None,
    photometric: str,
) -> Dataset:
    """Patient/study/series/instance elements and file meta (Explicit VR Little Endian)."""
    is_dx = modality == "DX"
    sop_class = DigitalXRayImageStorageForPresentation if is_dx else SecondaryCaptureImageStorage
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Modality = modality
    ds.PatientID = patient_id
    ds.PatientName = patient_id
    if patient_sex is not None:
        if patient_sex not in ("M", "F", "O"):
            raise ValueError(f"patient_sex must be 'M', 'F' or 'O', got {patient_sex!r}")
        ds.PatientSex = patient_sex
    if patient_age_years is not None:
        if not 0 <= patient_age_years < 1000:
            raise ValueError(f"patient_age_years must be in [0, 1000), got {patient_age_years}")
        ds.PatientAge = f"{int(patient_age_years):03d}Y"
    if manufacturer is not None:
        ds.Manufacturer = manufacturer
    if is_dx:
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.PresentationLUTShape = "INVERSE" if photometric == "MONOCHROME1" else "IDENTITY"
    else:
        ds.ConversionType = "WSD"
    return ds


def _ds_value(value: float) -> str:
    """A Decimal String (at most 16 characters) for ``value``."""
    return format_number_as_ds(float(value))


def _encode(ds: Dataset, stored: np.ndarray, bits_stored: int, compression: str) -> None:
    """Replace the native Pixel Data with the ``compression`` encoding, in place."""
    if compression == "none":
        return
    if compression == "jpeg-lossless":
        frame = imagecodecs.jpeg8_encode(stored, lossless=True, predictor=1, bitspersample=bits_stored)
        ds.PixelData = encapsulate([bytes(frame)])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
        return
    syntax, plugin = _PYDICOM_ENCODERS[compression]
    compress(ds, syntax, stored, encoding_plugin=plugin, generate_instance_uid=False)
