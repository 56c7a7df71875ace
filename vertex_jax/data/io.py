"""Read one radiograph (DICOM, PNG, JPEG or TIFF) into a 2-D unsigned "bone bright" array.

``read_image`` dispatches on content, not on the file name: a file with the DICOM preamble
("DICM" at byte 128) is DICOM even when it is called ``*.png``; PNG, JPEG and TIFF are
recognised by their magic bytes; a file whose first bytes parse as a DICOM element of group
0002 or 0008 (explicit or implicit VR little endian) is a DICOM data set without preamble
(ACR-NEMA-style exports, files like ``IM0001`` from PACS or CDs), read with pydicom
``force``, whatever its name; a ``.dcm``/``.dicom``/``.dic`` file is tried that way too.
:func:`is_dicom` is the same test for folder listings.

DICOM rules
-----------
- Any transfer syntax pydicom 3 can decode with the installed plugins: uncompressed
  (implicit/explicit VR, little/big endian), RLE Lossless, JPEG (incl. Lossless Process 14
  SV1), JPEG-LS (lossless and near-lossless), JPEG 2000 (lossless and lossy).
- The transfer syntax is the file meta's. Without file meta, or when the meta names an
  uncompressed syntax, it is the encoding the Pixel Data element itself shows (a wrong
  implicit/explicit label would otherwise shift every pixel). An encapsulated codestream of
  another family than its syntax says (JPEG 2000 labelled JPEG Baseline) is refused, and so
  are decoded values above ``2**BitsStored - 1`` (a codestream deeper than its header).
- DICOM objects without an image raise :class:`NotAnImageError` (an ``ImageReadError``) with
  their SOP class: a ``DICOMDIR`` (the index of a CD or export folder), structured reports,
  presentation states, key object selections, encapsulated PDFs. A file of an image SOP class
  without pixel data, or with less pixel data than Rows x Columns x Bits Allocated, is a
  broken image (reason in those terms), not "not an image".
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
stays in force as a backstop.) What the C decoders print (OpenCV's log, libpng, libjpeg,
libtiff) is captured, not left on stderr: it becomes part of the reason when a file fails,
and ``meta["decoder_warnings"]`` when it decodes; a JPEG whose data ends early ("premature
end") is refused rather than scored half grey.

Every failure -- missing, empty, truncated, corrupt, unsupported or too large -- raises
``ImageReadError`` naming the file and the reason.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import struct
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import generate_fragments
from pydicom.pixels import apply_modality_lut, apply_voi_lut, get_decoder, pixel_array
from pydicom.uid import (
    HTJ2K,
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000TransferSyntaxes,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
    MediaStorageDirectoryStorage,
)

from vertex_jax.data import jpeg_codec
from vertex_jax.errors import Explanation, UserError

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
# CharLS decodes JPEG-LS about 4x faster than libjpeg (90 vs 420 ms, 2800x2000 16-bit); JPEG
# goes to libjpeg-turbo (imagecodecs, BSD-3: vertex_jax.data.jpeg_codec) when it is installed.
jpeg_codec.register()
_PREFERRED_PLUGINS = {JPEGLSLossless: "pyjpegls", JPEGLSNearLossless: "pyjpegls",
                      **dict.fromkeys(jpeg_codec.SYNTAXES, jpeg_codec.PLUGIN)}
_LUT_CHUNK = 1 << 16  # pixels per np.take call: keeps the intp index copy in cache
# Value representations of an explicit VR element, and those with a 4-byte length (PS3.5 7.1.2).
_VRS = frozenset(b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM "
                 b"UC UI UL UN UR US UT UV".split())
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
_SNIFF_GROUPS = (0x0002, 0x0008)  # file meta, identifying elements: what a data set starts with
_UNDEFINED = 0xFFFFFFFF
_NATIVE = (ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian)
# The codestream each encapsulated syntax family holds, as _codestream_kind names it.
_CODESTREAM = {**dict.fromkeys(JPEGTransferSyntaxes, "JPEG"), **dict.fromkeys(JPEGLSTransferSyntaxes, "JPEG-LS"),
               **dict.fromkeys([*JPEG2000TransferSyntaxes, HTJ2K, HTJ2KLossless, HTJ2KLosslessRPCL], "JPEG 2000")}


class ImageReadError(UserError, ValueError):
    """One error type for every unreadable image; str() is '<path>: <reason>'."""

    kind = "cannot read an image"

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # picklable across worker processes despite the 2-argument init
        return type(self), (self.path, self.reason)

    def explanation(self) -> Explanation:
        recorded = re.search(r"\(recorded in (.+?);", self.reason)
        listing = (f"{recorded.group(1)}/unreadable.csv" if recorded
                   else "unreadable.csv of the data cache (<data_dir>/cache/<fingerprint>/)")
        return Explanation(f"{self.kind}: {self.reason}", self.path,
                           "re-run with --config.data.skip_unreadable=True to leave out unreadable images; "
                           f"they are listed in {listing}")


class NotAnImageError(ImageReadError):
    """A readable DICOM object that holds no image: a DICOMDIR, a structured report, a
    presentation state (the reason names its SOP class)."""

    kind = "not an image"


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
            if _starts_like_dataset(head, os.fstat(f.fileno()).st_size) or (
                    Path(name).suffix.lower() in _DICOM_SUFFIXES):
                return _read_dicom(name, f, max_pixels, force=True)
    raise ImageReadError(name, "not a DICOM, PNG, JPEG or TIFF file (unrecognised content)")


def is_dicom(path: str | os.PathLike) -> bool:
    """Whether the content says DICOM: the preamble, or a data set that starts with a group
    0002/0008 element (no preamble); False for a file that cannot be opened."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
            size = os.fstat(f.fileno()).st_size
    except OSError:
        return False
    return head[128:132] == b"DICM" or _starts_like_dataset(head, size)


def _starts_like_dataset(head: bytes, size: int) -> bool:
    """Do the first bytes parse as one group 0002/0008 element, explicit or implicit VR
    little endian, with an even length that fits in the file?"""
    if len(head) < 8 or struct.unpack_from("<H", head)[0] not in _SNIFF_GROUPS:
        return False
    vr = head[4:6]
    if vr in _LONG_VRS:
        if len(head) < 12 or head[6:8] != b"\0\0":
            return False
        start, length = 12, struct.unpack_from("<I", head, 8)[0]
    elif vr in _VRS:
        start, length = 8, struct.unpack_from("<H", head, 6)[0]
    else:  # implicit VR: a 4-byte length
        start, length = 8, struct.unpack_from("<I", head, 4)[0]
    return length == _UNDEFINED or (length % 2 == 0 and start + length <= size)


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
        meta_syntax = _meta_syntax(path, ds)
        deflated = meta_syntax is not None and meta_syntax.is_deflated
        declared, left, encoding = (0, 0, None) if deflated else _pixel_data_element(f)
        syntax = _transfer_syntax(ds, meta_syntax, encoding)
        _check_is_image(path, ds, has_pixels=deflated or declared is not None, at_end=left <= 0)
        rows, cols, bits_stored = _check_dicom_header(path, ds, max_pixels)
        if syntax in _NATIVE:
            _check_native_length(path, declared, left, rows, cols, int(ds.BitsAllocated))
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
            if (top := int(stored.max())) > max_value:  # compressed data keeps its own precision
                raise ImageReadError(path, f"the pixel data holds values up to {top}, more than the "
                                           f"{max_value} that Bits Stored {bits_stored} allows")
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
    if syntax.is_encapsulated and (expected := _CODESTREAM.get(syntax)):
        items = generate_fragments(ds.PixelData)  # the Basic Offset Table item, then fragments
        next(items, None)
        found = _codestream_kind(next(items, b""))
        if found not in (None, expected):
            raise ImageReadError(path, f"the transfer syntax says {syntax.name}, but the pixel data is a "
                                       f"{found} codestream (mislabelled file)")
    return ds


def _codestream_kind(fragment: bytes) -> str | None:
    """"JPEG", "JPEG-LS" or "JPEG 2000" by the codestream's first bytes; None if unknown."""
    if fragment[:4] == b"\xff\x4f\xff\x51" or fragment[4:8] == b"jP  ":
        return "JPEG 2000"
    if fragment[:2] != b"\xff\xd8":
        return None
    with contextlib.suppress(ValueError, IndexError, struct.error):
        return "JPEG-LS" if _jpeg_frame(fragment)[0] == 0xF7 else "JPEG"
    return None


def _pixel_data_element(f: BinaryIO) -> tuple[int | None, int, UID | None]:
    """(declared value length, bytes left after the element header, the uncompressed transfer
    syntax its own encoding shows) of the Pixel Data element at which a ``stop_before_pixels``
    read left ``f``. Without one there: (None, bytes left after the header, None)."""
    start = f.tell()
    raw = f.read(12)
    left = os.fstat(f.fileno()).st_size - start
    f.seek(start)
    for order, group in (("<", b"\xe0\x7f"), (">", b"\x7f\xe0")):
        if len(raw) >= 8 and raw[:2] == group and struct.unpack_from(order + "H", raw, 2)[0] in (8, 9, 0x10):
            break
    else:
        return None, left, None
    vr = raw[4:6]
    if vr in _LONG_VRS and raw[6:8] == b"\0\0":
        length = struct.unpack_from(order + "I", raw, 8)[0] if len(raw) == 12 else 0
        return length, left - 12, ExplicitVRLittleEndian if order == "<" else ExplicitVRBigEndian
    if vr in _VRS and vr not in _LONG_VRS:
        return struct.unpack_from(order + "H", raw, 6)[0], left - 8, (
            ExplicitVRLittleEndian if order == "<" else ExplicitVRBigEndian)
    return struct.unpack_from(order + "I", raw, 4)[0], left - 8, ImplicitVRLittleEndian if order == "<" else None


def _check_is_image(path: str, ds: Dataset, *, has_pixels: bool, at_end: bool) -> None:
    """Raise :class:`NotAnImageError` for a DICOMDIR or an object of a known non-image SOP
    class without pixel data, and ``ImageReadError`` for any other object without them."""
    sop = ds.get("SOPClassUID") or ds.file_meta.get("MediaStorageSOPClassUID")
    if sop == MediaStorageDirectoryStorage or "DirectoryRecordSequence" in ds:
        raise NotAnImageError(path, "not an image: a DICOMDIR (the index of a DICOM CD or export "
                                    "folder); the images are the files it lists")
    if has_pixels:
        return
    sop_name = UID(str(sop)).name if isinstance(sop, str) else ""
    known = sop_name not in ("", str(sop))  # a SOP class in the DICOM dictionary
    has_size = ds.get("Rows") and ds.get("Columns")
    if known and not has_size and "Image" not in sop_name:
        raise NotAnImageError(path, f"not an image: a DICOM {sop_name} object (SOP class {sop}) "
                                    f"has no pixel data")
    where = ("the file ends before the Pixel Data element (truncated?)" if at_end else
             "no Pixel Data element where the header ends (damaged header?)")
    if not has_size:
        raise ImageReadError(path, f"not a DICOM image (no Rows/Columns, no Pixel Data): {where}")
    raise ImageReadError(path, f"no pixel data: {where}")


def _check_native_length(path: str, declared: int | None, left: int, rows: int, cols: int,
                         bits_allocated: int) -> None:
    """Uncompressed pixel data must hold Rows x Columns x Bits Allocated bits."""
    if declared is None:
        return
    expected = rows * cols * bits_allocated // 8
    declares = f"the header declares {rows}×{cols}×{bits_allocated} bits ({expected} bytes)"
    if declared == _UNDEFINED:
        raise ImageReadError(path, f"pixel data has an undefined length, as compressed data would, "
                                   f"but the transfer syntax is uncompressed; {declares}")
    if min(declared, left) < expected:
        cut = f" (the file ends {declared - left} bytes early)" if left < declared else ""
        raise ImageReadError(path, f"pixel data is {max(min(declared, left), 0)} bytes{cut}, {declares}")


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


def _meta_syntax(path: str, ds: Dataset) -> UID | None:
    """The file meta's Transfer Syntax UID, None without one."""
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if not syntax:
        return None
    if not UID(syntax).is_transfer_syntax:
        raise ImageReadError(path, f"the file meta names {str(syntax)!r}, which is not a transfer syntax")
    return UID(syntax)


def _transfer_syntax(ds: Dataset, meta_syntax: UID | None, pixel_encoding: UID | None) -> UID:
    """The file meta's transfer syntax; where it is absent or uncompressed, the encoding the
    Pixel Data element itself shows (else the one pydicom detected): a meta that names the
    wrong uncompressed syntax would shift every pixel by the element header's difference."""
    if meta_syntax is not None and meta_syntax not in _NATIVE:
        return meta_syntax
    if pixel_encoding is not None:
        return pixel_encoding
    implicit, little = ds.original_encoding
    return (ImplicitVRLittleEndian if implicit is not False else
            ExplicitVRLittleEndian if little is not False else ExplicitVRBigEndian)


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
    with _errors_as(path, f"cannot decode {fmt}"), _decoder_messages() as messages:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    said = f": {'; '.join(messages)}" if messages else ""
    if image is None:
        raise ImageReadError(path, f"OpenCV could not decode this {fmt} file (corrupt or truncated){said}")
    if any("premature end" in m.lower() for m in messages):
        raise ImageReadError(path, f"{fmt} data ends early (truncated file){said}")
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
    if messages:
        meta["decoder_warnings"] = messages
    return LoadedImage(image, int(np.iinfo(image.dtype).max), None, path, meta)


_STDERR_LOCK = threading.Lock()  # fd 2 is captured by one decode at a time
# What the C decoders print: OpenCV's log lines and the libpng/libjpeg/libtiff messages.
_DECODER_LINE = re.compile(r"^(\[\s*(WARN|ERROR|INFO)|libpng|libtiff|TIFF|Corrupt JPEG|Premature end|"
                           r"Invalid |Inconsistent |Bogus |Unsupported |Not a JPEG|Warning)")
_OPENCV_PREFIX = re.compile(r"^\[[^\]]*\]\s+(global\s+)?\S+:\d+\s+\S+\s+")  # [ WARN:0@0.02] global f.cpp:8 fn


@contextlib.contextmanager
def _decoder_messages() -> Iterator[list[str]]:
    """Collect what C code prints on stderr (fd 2) during the block.

    Decoder lines go to the yielded list (OpenCV's ``[ WARN:..] file:line function`` prefix
    dropped); anything else printed meanwhile (another thread's progress bar) goes back to
    stderr. fd 2 belongs to the whole process, so these blocks run one at a time: raster
    decodes are serialised across threads (DICOM decoding is not; cache builds use processes).
    """
    messages: list[str] = []
    with _STDERR_LOCK, tempfile.TemporaryFile() as sink:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield messages
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            said, other = _sort_lines(sink.read().decode("utf-8", "replace"))
            messages += said
            if other:
                os.write(2, other.encode())


def _sort_lines(text: str) -> tuple[list[str], str]:
    """(the decoders' messages in short form, the rest of ``text``).

    OpenCV's own lines about its internals ("OpenCV(5.0.0) .../grfmt_tiff.cpp:1040: error")
    are dropped where a library said what is wrong; a message's ``>`` lines are joined to it.
    """
    said, other = [], []
    for line in text.splitlines(keepends=True):
        stripped = line.strip()
        if not stripped:
            continue
        if _DECODER_LINE.match(stripped):
            said.append(_OPENCV_PREFIX.sub("", stripped).removeprefix("TIFF_Error ").removeprefix("TIFF_Warning "))
        elif said and stripped.startswith(">"):
            said[-1] += " " + " ".join(stripped.lstrip("> ").split())
        else:
            other.append(line)
    own = [m for m in said if "OpenCV" not in m]
    return list(dict.fromkeys(own or said)), "".join(other)


# The sizes are read here, not by Pillow's lazy headers: Pillow 13 takes a big-endian BigTIFF
# for a classic TIFF (its version test reads byte 2) and refuses it; it parses every PNG chunk
# before IDAT, so a damaged one hides the size from the max_pixels check; its TIFF parser
# logs and warns onto stderr; and it has no JPEG-LS parser, which _codestream_kind needs.
def _png_dims(data: bytes) -> tuple[int, int]:
    if data[12:16] != b"IHDR":
        raise ValueError("no IHDR chunk")
    width, height = struct.unpack_from(">II", data, 16)
    return height, width


def _jpeg_dims(data: bytes) -> tuple[int, int]:
    marker, i = _jpeg_frame(data)
    if marker == 0xF7:
        raise ValueError("a JPEG-LS frame header")
    return struct.unpack_from(">HH", data, i + 5)


def _jpeg_frame(data: bytes) -> tuple[int, int]:
    """(marker, offset) of the first frame header: a JPEG SOFn, or JPEG-LS SOF55 (0xF7)."""
    i = 2
    while True:
        if data[i] != 0xFF:
            raise ValueError(f"no marker at byte {i}")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker in _JPEG_SOF or marker == 0xF7:
            return marker, i
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
