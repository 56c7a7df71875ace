"""Read one radiograph (DICOM, PNG, JPEG or TIFF) into a 2-D unsigned "bone bright" array.

``read_image`` dispatches on content, not on the file name: a file with the DICOM preamble
("DICM" at byte 128) is DICOM even when it is called ``*.png``; PNG, JPEG and TIFF are
recognised by their magic bytes; only when neither matches is a ``.dcm``/``.dicom``/``.dic``
file read as a raw DICOM data set without preamble (pydicom ``force``).

DICOM rules
-----------
- Any transfer syntax pydicom 3 can decode with the installed plugins: uncompressed
  (implicit/explicit VR, little/big endian), RLE Lossless, JPEG (incl. Lossless Process 14
  SV1), JPEG-LS (lossless and near-lossless), JPEG 2000 (lossless and lossy).
- Single-frame greyscale only: MONOCHROME1/MONOCHROME2, Samples per Pixel 1, Bits Allocated
  8 or 16, Bits Stored 1..16, signed or unsigned. Number of Frames > 1, and every colour
  photometric interpretation (RGB, YBR_*, PALETTE COLOR), raise ``ImageReadError``: pick the
  frame or convert to grey upstream, so that no silent choice is made here.
- The grey-scale pipeline of PS3.3 C.11 is applied as pydicom implements it
  (``apply_modality_lut`` then ``apply_voi_lut``: Modality LUT or Rescale Slope/Intercept,
  then VOI LUT or the first Window Center/Width with its VOI LUT Function); MONOCHROME1 is
  then inverted so that bone is always bright.
- Both steps only depend on the stored value, so they are evaluated once per file on every
  possible stored value (at most 65 536 of them, in float64) and applied to the image as
  one table look-up; the image itself never goes through floating point. When the whole
  chain is the identity (no Modality LUT, slope 1 / intercept 0 or absent, no VOI LUT or
  window) the stored values are returned as they are (signed ones shifted to start at 0)
  and ``max_value`` is ``2**BitsStored - 1``. Otherwise the table's output, over the
  stored-value range, is mapped linearly onto 0..65535 (rounded; ``max_value`` 65535): a
  monotone increasing map of the displayed intensity, so histogram equalisation downstream
  sees the same ordering of grey levels.
- ``Rows * Columns`` is checked against ``max_pixels`` from the header before any pixel
  data is read or decoded (the size a compressed codestream declares inside itself is left
  to the codec and to pydicom's check of the decoded length).

PNG / JPEG / TIFF rules
-----------------------
Decoded by OpenCV with ``IMREAD_UNCHANGED`` (full bit depth, no EXIF rotation), 8 or 16 bit;
colour is converted to grey with OpenCV's BGR(A)->GRAY weights and alpha dropped;
``max_value`` is 255 or 65535; for TIFF the first page is read. The width and height are
parsed from the PNG IHDR chunk, the JPEG frame header or the first TIFF IFD and checked
against ``max_pixels`` before decoding. (OpenCV's ``OPENCV_IO_MAX_IMAGE_PIXELS`` is read
once, when OpenCV loads, so it cannot carry a per-call limit; its default of 2**30 pixels
stays in force as a backstop.)

Every failure -- missing, empty, truncated, corrupt, unsupported or too large -- raises
``ImageReadError`` naming the file and the reason.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut, get_decoder, pixel_array
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLSLossless,
    JPEGLSNearLossless,
)

DEFAULT_MAX_PIXELS: int = 100_000_000
"""Decompression-bomb cap on rows * columns (100 M pixels, 200 MB as uint16). The largest
radiographs in the VERTE-X cohorts are about 8383 x 3520 (29.5 M pixels), so real images pass
with 3x headroom while a forged header cannot make the reader allocate gigabytes."""

_DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF
# Start-of-frame markers carry the image size (all but DHT C4, JPG C8, DAC CC).
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers without a length field: TEM, RSTn, SOI.
_JPEG_STANDALONE = frozenset([0x01, *range(0xD0, 0xD9)])
# CharLS decodes JPEG-LS about 4x faster than libjpeg (90 vs 420 ms, 2800x2000 16-bit).
_PREFERRED_PLUGINS = {JPEGLSLossless: "pyjpegls", JPEGLSNearLossless: "pyjpegls"}
_LUT_CHUNK = 1 << 16  # pixels per np.take call: keeps the intp index copy in cache


class ImageReadError(ValueError):
    """One error type for every unreadable image; str() is '<path>: <reason>'."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # picklable across worker processes despite the 2-argument init
        return type(self), (self.path, self.reason)


@dataclasses.dataclass(frozen=True, eq=False)
class LoadedImage:
    """A decoded image, bone bright (MONOCHROME2 sense), with its provenance."""

    pixels: np.ndarray  # 2-D, uint8 or uint16
    max_value: int  # top of the nominal range: 2**bits - 1 as stored, or 65535 after a LUT
    pixel_spacing_mm: tuple[float, float] | None  # (row, column): PixelSpacing, else ImagerPixelSpacing
    path: str
    meta: dict  # format, rows, cols and format-specific fields (see read_image)


def read_image(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Read a DICOM, PNG, JPEG or TIFF file as a 2-D bone-bright unsigned array.

    See the module docstring for the rules. ``meta`` always holds "format", "rows" and
    "cols"; DICOM adds transfer syntax, photometric, bit depths, the grey-scale transforms
    applied and, when present, modality, manufacturer, model, patient sex and age; raster
    formats add the original channel count and dtype.

    Raises:
      ImageReadError: for any file that cannot be read as one such image.
    """
    name = os.fspath(path)
    with _errors_as(name, "cannot read"):
        try:
            f = open(name, "rb")
        except FileNotFoundError:
            raise ImageReadError(name, "file not found") from None
        except IsADirectoryError:
            raise ImageReadError(name, "is a directory, not a file") from None
        with f:
            head = f.read(132)
            f.seek(0)
            if not head:
                raise ImageReadError(name, "empty file")
            if head[128:132] == b"DICM":
                return _read_dicom(name, f, max_pixels, force=False)
            raster = _raster_format(head)
            if raster is not None:
                return _read_raster(name, f.read(), raster, max_pixels)
            if Path(name).suffix.lower() in _DICOM_SUFFIXES:
                return _read_dicom(name, f, max_pixels, force=True)
    raise ImageReadError(name, "not a DICOM, PNG, JPEG or TIFF file (unrecognised content)")


@contextlib.contextmanager
def _errors_as(path: str, what: str) -> Iterator[None]:
    """Re-raise any exception from a decoder as ImageReadError (chained)."""
    try:
        yield
    except ImageReadError:
        raise
    except Exception as e:  # pydicom, codecs and OpenCV raise a wide variety
        raise ImageReadError(path, f"{what}: {type(e).__name__}: {e}") from e


# ----------------------------------------------------------------------------- DICOM


def _read_dicom(path: str, f: BinaryIO, max_pixels: int, *, force: bool) -> LoadedImage:
    with _errors_as(path, "invalid DICOM header"):
        ds = pydicom.dcmread(f, stop_before_pixels=True, force=force)
        rows, cols, bits_stored = _check_dicom_header(path, ds, max_pixels)
        syntax = _transfer_syntax(ds)
    with _errors_as(path, "invalid grey-scale transform elements"):
        transforms = _grey_transforms(ds)
    identity = transforms["modality_transform"] == transforms["voi_transform"] == "none"
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    # Unsigned data without transforms is returned as decoded. Otherwise a look-up table over
    # every bit pattern maps it, which needs neither pydicom's writeable copy of native data
    # nor its masking of the unused high bits.
    uses_table = signed or not identity
    options = {"view_only": True, "correct_unused_bits": False} if uses_table else {}
    stored = _decode(path, f, syntax, (rows, cols), force=force, **options)
    with _errors_as(path, "cannot apply the DICOM grey-scale transforms"):
        if uses_table:
            table, max_value = _display_table(ds, stored.itemsize, bits_stored, signed=signed, identity=identity)
            if transforms["inverted"]:
                table = max_value - table
            pixels = _apply_table(table, stored)
        else:
            pixels, max_value = stored, 2**bits_stored - 1
            if transforms["inverted"]:
                np.subtract(stored.dtype.type(max_value), stored, out=stored)
    meta = {
        "format": "DICOM",
        "rows": rows,
        "cols": cols,
        "transfer_syntax": str(syntax),
        "transfer_syntax_name": syntax.name,
        "photometric": ds.PhotometricInterpretation,
        "bits_stored": bits_stored,
        "bits_allocated": int(ds.BitsAllocated),
        "pixel_representation": int(ds.get("PixelRepresentation", 0)),
        **transforms,
    }
    for key, keyword in _OPTIONAL_META.items():
        if value := ds.get(keyword):
            meta[key] = str(value)
    return LoadedImage(pixels, max_value, _pixel_spacing(ds), path, meta)


_OPTIONAL_META = {
    "modality": "Modality",
    "manufacturer": "Manufacturer",
    "model": "ManufacturerModelName",
    "patient_sex": "PatientSex",
    "patient_age": "PatientAge",
}


def _decode(path: str, f: BinaryIO, syntax: UID, shape: tuple[int, int], *, force: bool, **options) -> np.ndarray:
    """The stored values, decoded by pydicom (``options``: its decoding options)."""
    f.seek(0)
    with _errors_as(path, f"cannot decode {syntax.name} pixel data"):
        plugin = _PREFERRED_PLUGINS.get(syntax, "")
        if plugin not in get_decoder(syntax).available_plugins:
            plugin = ""
        src = _pixel_source(path, f, syntax, force)
        stored = pixel_array(src, transfer_syntax_uid=syntax, decoding_plugin=plugin, **options)
    if stored.shape != shape or stored.dtype.kind not in "ui" or stored.itemsize > 2:
        raise ImageReadError(path, f"decoded pixel data is {stored.dtype} {stored.shape}, expected {shape}")
    return stored


def _pixel_source(path: str, f: BinaryIO, syntax: UID, force: bool) -> BinaryIO | Dataset:
    """Where pydicom should decode from.

    Native data decodes straight from the file (pydicom checks its length). Encapsulated data
    is read whole first, because only that read notices a missing end delimiter: decoding
    from the file would hand truncated fragments to codecs that tolerate them. A deflated
    data set needs the full read to be inflated anyway.
    """
    if not (syntax.is_encapsulated or syntax.is_deflated):
        return f
    ds = pydicom.dcmread(f, force=force)
    if "PixelData" not in ds:
        raise ImageReadError(path, "pixel data missing or truncated (file ends before its end delimiter)")
    return ds


def _check_dicom_header(path: str, ds: Dataset, max_pixels: int) -> tuple[int, int, int]:
    """Reject what this reader does not handle; return (rows, cols, bits stored)."""
    rows, cols = ds.get("Rows"), ds.get("Columns")
    if not rows or not cols:
        raise ImageReadError(path, "not a DICOM image (no Rows/Columns)")
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames != 1:
        raise ImageReadError(path, f"multi-frame DICOM ({frames} frames) is not supported; export one frame")
    photometric = ds.get("PhotometricInterpretation", "")
    samples = int(ds.get("SamplesPerPixel") or 1)
    if photometric not in ("MONOCHROME1", "MONOCHROME2") or samples != 1:
        raise ImageReadError(
            path, f"colour DICOM (Photometric Interpretation {photometric!r}, {samples} samples) is not supported"
        )
    allocated, stored = ds.get("BitsAllocated"), ds.get("BitsStored")
    if allocated not in (8, 16) or stored is None or not 1 <= stored <= allocated:
        raise ImageReadError(path, f"unsupported bit depth (Bits Allocated {allocated}, Bits Stored {stored})")
    if rows * cols > max_pixels:
        raise ImageReadError(path, f"image is {rows}x{cols} = {rows * cols} pixels, over max_pixels={max_pixels}")
    return int(rows), int(cols), int(stored)


def _transfer_syntax(ds: Dataset) -> UID:
    """The file meta's transfer syntax, else the encoding pydicom detected (no-meta files)."""
    if syntax := ds.file_meta.get("TransferSyntaxUID"):
        return UID(syntax)
    implicit, little = ds.original_encoding
    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def _grey_transforms(ds: Dataset) -> dict:
    """Which grey-scale steps the header asks for (the meta entries)."""
    _drop_empty(ds, ("RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth"))
    modality = "lut" if ds.get("ModalityLUTSequence") else "rescale" if _has_rescale(ds) else "none"
    voi = "lut" if ds.get("VOILUTSequence") else "window" if "WindowCenter" in ds and "WindowWidth" in ds else "none"
    return {
        "modality_transform": modality,
        "voi_transform": voi,
        "inverted": ds.PhotometricInterpretation == "MONOCHROME1",
    }


def _drop_empty(ds: Dataset, keywords: tuple[str, ...]) -> None:
    """Delete elements present without a value, so that they count as absent."""
    for keyword in keywords:
        if keyword in ds and ds[keyword].value in (None, ""):
            del ds[keyword]


def _has_rescale(ds: Dataset) -> bool:
    if "RescaleSlope" not in ds or "RescaleIntercept" not in ds:
        return False
    return (float(ds.RescaleSlope), float(ds.RescaleIntercept)) != (1.0, 0.0)


def _display_table(
    ds: Dataset, itemsize: int, bits_stored: int, *, signed: bool, identity: bool
) -> tuple[np.ndarray, int]:
    """Output value for every bit pattern of the allocated bits, and max_value."""
    patterns = np.arange(2 ** (8 * itemsize), dtype=np.int64)
    values = patterns & (2**bits_stored - 1)  # bits above Bits Stored are ignored (PS3.5 8.1.1)
    if signed:  # two's complement within Bits Stored
        sign = 2 ** (bits_stored - 1)
        values = (values ^ sign) - sign
    if identity:  # signed data without transforms: shift to start at 0
        max_value = 2**bits_stored - 1
        return (values - values.min()).astype(np.uint8 if max_value <= 255 else np.uint16), max_value
    shown = apply_modality_lut(values, ds)
    if ds.get("VOILUTSequence") and shown.dtype.kind == "f":  # a VOI LUT is indexed by integers
        shown = np.floor(shown).astype(np.int64)
    shown = np.asarray(apply_voi_lut(shown, ds), dtype=np.float64)
    lo, hi = shown.min(), shown.max()
    scale = 65535.0 / (hi - lo) if hi > lo else 0.0
    return np.rint((shown - lo) * scale).astype(np.uint16), 65535


def _apply_table(table: np.ndarray, stored: np.ndarray) -> np.ndarray:
    """``table[stored]`` with the stored bit patterns as indices, in cache-sized chunks.

    ``stored`` may be a read-only view in the file's byte order (big endian included).
    """
    unsigned = np.dtype(f"{stored.dtype.byteorder}u{stored.itemsize}")
    index = np.ascontiguousarray(stored).reshape(-1).view(unsigned)
    out = np.empty(index.shape, table.dtype)
    for start in range(0, index.size, _LUT_CHUNK):
        stop = start + _LUT_CHUNK
        np.take(table, index[start:stop], out=out[start:stop], mode="clip")
    return out.reshape(stored.shape)


def _pixel_spacing(ds: Dataset) -> tuple[float, float] | None:
    """(row, column) spacing in mm from PixelSpacing, else ImagerPixelSpacing; None if neither is valid."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        try:
            row, col = (float(v) for v in ds.get(keyword) or ())
        except (TypeError, ValueError):  # absent, wrong multiplicity or not a number
            continue
        if row > 0 and col > 0:
            return row, col
    return None


# ----------------------------------------------------------------------- PNG/JPEG/TIFF


def _raster_format(head: bytes) -> str | None:
    if head.startswith(_PNG_MAGIC):
        return "PNG"
    if head.startswith(_JPEG_MAGIC):
        return "JPEG"
    if head[:4] in _TIFF_MAGICS:
        return "TIFF"
    return None


def _read_raster(path: str, data: bytes, fmt: str, max_pixels: int) -> LoadedImage:
    with _errors_as(path, f"corrupt {fmt} header"):
        rows, cols = _RASTER_DIMS[fmt](data)
    if rows * cols > max_pixels:
        raise ImageReadError(path, f"image is {rows}x{cols} = {rows * cols} pixels, over max_pixels={max_pixels}")
    with _errors_as(path, f"cannot decode {fmt}"):
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageReadError(path, f"OpenCV could not decode this {fmt} file (corrupt or truncated)")
    if image.dtype not in (np.uint8, np.uint16):
        raise ImageReadError(path, f"{fmt} sample type {image.dtype} is not supported (8 or 16 bit only)")
    channels = 1 if image.ndim == 2 else image.shape[2]
    if channels in (3, 4):
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY if channels == 3 else cv2.COLOR_BGRA2GRAY)
    elif channels != 1:
        raise ImageReadError(path, f"{fmt} with {channels} channels is not supported")
    image = image.reshape(image.shape[:2])
    meta = {"format": fmt, "rows": image.shape[0], "cols": image.shape[1], "channels": channels,
            "dtype": str(image.dtype)}
    return LoadedImage(image, int(np.iinfo(image.dtype).max), None, path, meta)


def _png_dims(data: bytes) -> tuple[int, int]:
    if data[12:16] != b"IHDR":
        raise ValueError("no IHDR chunk")
    width, height = struct.unpack_from(">II", data, 16)
    return height, width


def _jpeg_dims(data: bytes) -> tuple[int, int]:
    i = 2
    while True:
        if data[i] != 0xFF:
            raise ValueError(f"no marker at byte {i}")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker in _JPEG_SOF:
            return struct.unpack_from(">HH", data, i + 5)
        elif marker == 0xDA:
            raise ValueError("scan data before any frame header")
        elif marker in _JPEG_STANDALONE:
            i += 2
        else:
            i += 2 + struct.unpack_from(">H", data, i + 2)[0]


def _tiff_dims(data: bytes) -> tuple[int, int]:
    order = "<" if data[:2] == b"II" else ">"
    big = data[2:4] in (b"+\x00", b"\x00+")
    offset_fmt, count_fmt, entry_size, value_at = ("Q", "Q", 20, 12) if big else ("I", "H", 12, 8)
    (ifd,) = struct.unpack_from(order + offset_fmt, data, 8 if big else 4)
    (count,) = struct.unpack_from(order + count_fmt, data, ifd)
    dims: dict[int, int] = {}
    entry = ifd + struct.calcsize(count_fmt)
    for _ in range(count):
        tag, kind = struct.unpack_from(order + "HH", data, entry)
        if tag in (256, 257):  # ImageWidth, ImageLength: SHORT, LONG or LONG8
            dims[tag] = struct.unpack_from(order + {3: "H", 4: "I", 16: "Q"}[kind], data, entry + value_at)[0]
            if len(dims) == 2:
                return dims[257], dims[256]
        entry += entry_size
    raise ValueError("first IFD has no ImageWidth/ImageLength")


_RASTER_DIMS = {"PNG": _png_dims, "JPEG": _jpeg_dims, "TIFF": _tiff_dims}
