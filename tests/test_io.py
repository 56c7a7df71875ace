"""Image I/O: DICOM writer round trips and the reader, checked against pydicom and OpenCV."""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path

import cv2
import numpy as np
import pydicom.data
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut, compress, set_pixel_data
from pydicom.uid import (
    JPEG2000,
    BasicTextSRStorage,
    ExplicitVRLittleEndian,
    GrayscaleSoftcopyPresentationStateStorage,
    ImplicitVRLittleEndian,
    JPEGLSNearLossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from vertex_jax.data.io import ImageReadError, LoadedImage, NotAnImageError, is_dicom, read_image
from vertex_jax.synthetic.dicom_write import COMPRESSIONS, write_dicom

PYDICOM_FILES = Path(pydicom.data.__file__).parent / "test_files"  # shipped, never downloaded
SHAPE = (48, 64)


# ----------------------------------------------------------------------------- helpers


def _image(bits: int, seed: int = 0, shape: tuple[int, int] = SHAPE) -> np.ndarray:
    """Smooth ramp plus noise covering 0 .. 2**bits - 1 (both ends present)."""
    rng = np.random.default_rng(seed)
    top = 2**bits - 1
    ramp = np.linspace(0, top, shape[0] * shape[1]).reshape(shape)
    noisy = np.clip(ramp + rng.normal(0, top / 50, shape), 0, top)
    noisy.flat[0], noisy.flat[-1] = 0, top
    return noisy.round().astype(np.uint8 if bits <= 8 else np.uint16)


def _pydicom_display(path: Path) -> np.ndarray:
    """Independent reference: pydicom's decode, modality LUT and VOI LUT/window on the image."""
    ds = pydicom.dcmread(path)
    return np.asarray(apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds), dtype=np.float64)


def _rescaled(reference: np.ndarray) -> np.ndarray:
    """``reference`` mapped linearly onto 0..65535 (the image holds the stored extremes)."""
    lo, hi = reference.min(), reference.max()
    return np.rint((reference - lo) * (65535.0 / (hi - lo)))


def _assert_monotone(values: np.ndarray, reference: np.ndarray) -> None:
    """``values`` is a non-decreasing function of ``reference``."""
    order = np.argsort(reference, axis=None, kind="stable")
    assert np.all(np.diff(values.reshape(-1)[order].astype(np.int64)) >= 0)


def _save_dataset(path: Path, ds: Dataset, **kwargs) -> Path:
    ds.save_as(path, enforce_file_format=True, **kwargs)
    return path


def _dataset(arr: np.ndarray, photometric: str, bits_stored: int) -> Dataset:
    """A minimal Secondary Capture data set around ``arr`` (any pydicom-supported layout)."""
    ds = _header(SecondaryCaptureImageStorage, "OT")
    set_pixel_data(ds, arr, photometric, bits_stored)
    return ds


def _header(sop_class: str, modality: str) -> Dataset:
    """File meta and the identifying elements of a data set of ``sop_class``, no pixels."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Modality = modality
    return ds


def _assert_read_error(path: Path, match: str, **kwargs) -> ImageReadError:
    with pytest.raises(ImageReadError, match=match) as info:
        read_image(path, **kwargs)
    assert path.name in str(info.value) and info.value.path == str(path)
    return info.value


# ------------------------------------------------------------------ lossless round trips


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("bits", [8, 12, 16])
@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_lossless_round_trip(tmp_path, compression, photometric, bits):
    pixels = _image(bits, seed=bits)
    path = tmp_path / f"{compression}.dcm"
    write_dicom(path, pixels, bits_stored=bits, photometric=photometric, compression=compression)

    stored = pydicom.dcmread(path).pixel_array  # independent decoder path
    top = 2**bits - 1
    assert np.array_equal(top - stored if photometric == "MONOCHROME1" else stored, pixels)

    image = read_image(path)
    assert isinstance(image, LoadedImage)
    assert image.pixels.dtype == (np.uint8 if bits == 8 else np.uint16)
    assert np.array_equal(image.pixels, pixels)
    assert image.max_value == top
    assert image.meta["photometric"] == photometric and image.meta["bits_stored"] == bits
    assert image.meta["transfer_syntax"] == str(pydicom.dcmread(path).file_meta.TransferSyntaxUID)


@pytest.mark.parametrize("bits", [8, 12, 16])
def test_jpeg_plugin_decodes_as_libjpeg_does(tmp_path, bits):
    """The reader's JPEG decoder (libjpeg-turbo through imagecodecs, BSD-3) against the GPL-3.0
    pylibjpeg-libjpeg (installed for tests only): JPEG Lossless SV1 and Process 14 with another
    predictor give the written values with both; 12-bit lossy data is within one grey level of
    libjpeg's (the accuracy ITU-T T.83 asks of a conforming decoder)."""
    import imagecodecs
    from pydicom.encaps import encapsulate
    from pydicom.pixels import pixel_array
    from pydicom.uid import JPEGLossless

    from vertex_jax.data import jpeg_codec

    pixels = _image(bits, seed=bits)
    sv1 = tmp_path / "sv1.dcm"
    write_dicom(sv1, pixels, bits_stored=bits, compression="jpeg-lossless")
    ds = pydicom.dcmread(sv1)  # the same image as Process 14, predictor 7
    ds.PixelData = encapsulate([imagecodecs.jpeg8_encode(pixels, lossless=True, predictor=7, bitspersample=bits)])
    ds.file_meta.TransferSyntaxUID = JPEGLossless
    ds.save_as(tmp_path / "p7.dcm", enforce_file_format=True)
    for path in (sv1, tmp_path / "p7.dcm"):
        ours = pixel_array(str(path), decoding_plugin=jpeg_codec.PLUGIN)
        assert np.array_equal(ours, pixels) and np.array_equal(pixel_array(str(path), decoding_plugin="pylibjpeg"), ours)
        assert np.array_equal(read_image(path).pixels, pixels)
    lossy = PYDICOM_FILES / "JPGExtended.dcm"
    ours = pixel_array(str(lossy), decoding_plugin=jpeg_codec.PLUGIN).astype(np.int32)
    theirs = pixel_array(str(lossy), decoding_plugin="pylibjpeg").astype(np.int32)
    assert ours.shape == theirs.shape and np.abs(ours - theirs).max() <= 1


def test_shipped_encodings_agree_with_uncompressed():
    """Implicit/big-endian/RLE/JPEG-LS/JPEG 2000 versions of one image read identically."""
    base = read_image(PYDICOM_FILES / "MR_small.dcm")
    for name in ["MR_small_implicit.dcm", "MR_small_bigendian.dcm", "MR_small_expb.dcm", "MR_small_RLE.dcm",
                 "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm"]:
        image = read_image(PYDICOM_FILES / name)
        assert np.array_equal(image.pixels, base.pixels), name
        assert image.pixel_spacing_mm == base.pixel_spacing_mm == (0.3125, 0.3125)
    _assert_monotone(base.pixels, _pydicom_display(PYDICOM_FILES / "MR_small.dcm"))


def test_implicit_little_endian_from_writer(tmp_path):
    pixels = _image(12)
    path = tmp_path / "explicit.dcm"
    write_dicom(path, pixels, bits_stored=12)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    implicit = _save_dataset(tmp_path / "implicit.dcm", ds, implicit_vr=True)
    image = read_image(implicit)
    assert image.meta["transfer_syntax"] == ImplicitVRLittleEndian
    assert np.array_equal(image.pixels, pixels)


# ---------------------------------------------------------------------------- lossy


def test_lossy_jpeg2000_and_jpegls_match_pydicom(tmp_path):
    pixels = _image(12)
    for syntax, option in [(JPEG2000, {"j2k_cr": [8]}), (JPEGLSNearLossless, {"jls_error": 3})]:
        ds = _dataset(pixels, "MONOCHROME2", 12)
        compress(ds, syntax, **option)
        path = _save_dataset(tmp_path / f"{syntax.keyword}.dcm", ds)
        image = read_image(path)
        assert image.meta["transfer_syntax"] == syntax
        assert np.array_equal(image.pixels, pydicom.dcmread(path).pixel_array)
        error = np.abs(image.pixels.astype(np.int64) - pixels)
        assert error.max() <= (3 if syntax == JPEGLSNearLossless else 400) and error.mean() < 50
    shipped = PYDICOM_FILES / "JPEGLSNearLossless_16.dcm"
    assert np.array_equal(read_image(shipped).pixels, pydicom.dcmread(shipped).pixel_array)


# ------------------------------------------------------------ grey-scale transforms


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
@pytest.mark.parametrize(
    ("rescale", "window", "function"),
    [
        ((2.0, -1000.0), None, None),
        (None, (1500.0, 1200.0), None),
        ((2.0, -1000.0), (2000.0, 3000.0), None),
        ((0.5, 10.0), (900.0, 700.0), "LINEAR_EXACT"),
        (None, (2048.0, 1000.0), "SIGMOID"),
    ],
)
def test_rescale_and_window_follow_pydicom(tmp_path, photometric, rescale, window, function):
    path = tmp_path / "windowed.dcm"
    write_dicom(path, _image(12), bits_stored=12, photometric=photometric, rescale=rescale, window=window)
    if function:
        ds = pydicom.dcmread(path)
        ds.VOILUTFunction = function
        _save_dataset(path, ds)
    reference = _pydicom_display(path)
    if photometric == "MONOCHROME1":
        reference = -reference
    image = read_image(path)
    assert image.pixels.dtype == np.uint16 and image.max_value == 65535
    assert image.meta["modality_transform"] == ("rescale" if rescale else "none")
    assert image.meta["voi_transform"] == ("window" if window else "none")
    _assert_monotone(image.pixels, reference)
    assert np.abs(image.pixels - _rescaled(reference)).max() <= 1


def test_identity_rescale_is_skipped(tmp_path):
    pixels = _image(12)
    path = tmp_path / "identity.dcm"
    write_dicom(path, pixels, bits_stored=12, rescale=(1.0, 0.0))
    image = read_image(path)
    assert image.meta["modality_transform"] == "none" and image.max_value == 4095
    assert np.array_equal(image.pixels, pixels)


def _lut_item(entries: np.ndarray, bits: int) -> Dataset:
    item = Dataset()
    item.add_new(0x00283002, "US", [len(entries), 0, bits])  # LUT Descriptor
    item.add_new(0x00283006, "US", entries.tolist())  # LUT Data
    return item


@pytest.mark.parametrize("sequence", ["ModalityLUTSequence", "VOILUTSequence"])
def test_lut_sequences_follow_pydicom(tmp_path, sequence):
    path = tmp_path / "lut.dcm"
    write_dicom(path, _image(12), bits_stored=12)
    ds = pydicom.dcmread(path)
    gamma = np.rint(4095 * (np.arange(4096) / 4095) ** 0.5).astype(np.uint16)
    # PS3.3 C.11.1.1.1: Modality LUT entries are 8 or 16 bits; a VOI LUT's may be 10..16
    gamma = gamma * 16 if sequence.startswith("Modality") else gamma
    setattr(ds, sequence, [_lut_item(gamma, 16 if sequence.startswith("Modality") else 12)])
    _save_dataset(path, ds)
    image = read_image(path)
    reference = _pydicom_display(path)
    _assert_monotone(image.pixels, reference)
    assert np.abs(image.pixels - _rescaled(reference)).max() <= 1
    assert image.meta["modality_transform" if sequence.startswith("Modality") else "voi_transform"] == "lut"


def test_signed_pixels(tmp_path):
    signed = (_image(12).astype(np.int16) - 2048).astype(np.int16)
    plain = _save_dataset(tmp_path / "signed.dcm", _dataset(signed, "MONOCHROME2", 12))
    image = read_image(plain)
    assert image.max_value == 4095 and np.array_equal(image.pixels, signed + 2048)

    ds = _dataset(signed, "MONOCHROME1", 12)
    ds.RescaleSlope, ds.RescaleIntercept, ds.WindowCenter, ds.WindowWidth = 1, -24, -100, 2500
    windowed = _save_dataset(tmp_path / "signed_window.dcm", ds)
    reference = -_pydicom_display(windowed)
    assert np.abs(read_image(windowed).pixels - _rescaled(reference)).max() <= 1

    shipped = PYDICOM_FILES / "CT_small.dcm"  # signed, rescaled CT
    _assert_monotone(read_image(shipped).pixels, _pydicom_display(shipped))


@pytest.mark.parametrize("window", [None, (1500.0, 1200.0)])
@pytest.mark.parametrize("signed", [False, True])
def test_unused_high_bits_are_ignored(tmp_path, window, signed):
    pixels = _image(12)
    stored = (pixels.astype(np.int16) - 2048) if signed else pixels
    ds = _dataset(stored, "MONOCHROME2", 12)
    if window:
        ds.WindowCenter, ds.WindowWidth = window[0] - 2048 * signed, window[1]
    clean = _save_dataset(tmp_path / "clean.dcm", ds)
    ds.PixelData = (stored.view(np.uint16) ^ 0xA000).tobytes()  # junk in bits 13 and 15
    dirty = _save_dataset(tmp_path / "dirty.dcm", ds)
    assert np.array_equal(pydicom.dcmread(dirty).pixel_array, stored)  # pydicom ignores them too
    assert np.array_equal(read_image(dirty).pixels, read_image(clean).pixels)
    if not window:
        assert np.array_equal(read_image(dirty).pixels, pixels)


# ------------------------------------------------------------------------- metadata


def test_pixel_spacing_and_meta(tmp_path):
    pixels = _image(8)
    primary = tmp_path / "primary.dcm"
    write_dicom(primary, pixels, bits_stored=8, pixel_spacing_mm=(0.15, 0.2), patient_sex="F",
                patient_age_years=67.9, manufacturer="ACME", modality="DX")
    image = read_image(primary)
    assert image.pixel_spacing_mm == (0.15, 0.2)
    assert image.meta | {"modality": "DX", "manufacturer": "ACME", "patient_sex": "F", "patient_age": "067Y",
                         "rows": 48, "cols": 64} == image.meta

    fallback = tmp_path / "imager.dcm"
    write_dicom(fallback, pixels, bits_stored=8, pixel_spacing_mm=(0.1, 0.139), pixel_spacing_tag="ImagerPixelSpacing")
    assert read_image(fallback).pixel_spacing_mm == (0.1, 0.139)

    ds = pydicom.dcmread(primary)
    ds.ImagerPixelSpacing = [9, 9]  # PixelSpacing wins over ImagerPixelSpacing
    assert read_image(_save_dataset(tmp_path / "both.dcm", ds)).pixel_spacing_mm == (0.15, 0.2)

    none = tmp_path / "none.dcm"
    write_dicom(none, pixels, bits_stored=8)
    assert read_image(none).pixel_spacing_mm is None


def test_writer_header(tmp_path):
    dx, sc = tmp_path / "dx.dcm", tmp_path / "sc.dcm"
    write_dicom(dx, _image(16), bits_stored=16, photometric="MONOCHROME1", patient_id="P7")
    write_dicom(sc, _image(6), bits_stored=6, modality="OT")
    ds = pydicom.dcmread(dx)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.1.1" and ds.PresentationLUTShape == "INVERSE"
    assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID and ds.PatientID == "P7"
    assert (ds.SamplesPerPixel, ds.PixelRepresentation, ds.BitsAllocated, ds.HighBit) == (1, 0, 16, 15)
    ds = pydicom.dcmread(sc)
    assert ds.SOPClassUID == SecondaryCaptureImageStorage
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit) == (8, 6, 5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dx.dcm", "sc.dcm"]  # no temporary files left


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"pixels": np.full(SHAPE, 4096, np.uint16), "bits_stored": 12}, "does not fit"),
        ({"pixels": np.zeros((2, *SHAPE), np.uint16), "bits_stored": 12}, "2-D"),
        ({"pixels": np.zeros(SHAPE, np.float32), "bits_stored": 12}, "uint8/uint16"),
        ({"pixels": np.zeros(SHAPE, np.uint16), "bits_stored": 12, "compression": "jpeg"}, "compression"),
        ({"pixels": np.zeros(SHAPE, np.uint16), "bits_stored": 12, "photometric": "RGB"}, "photometric"),
        ({"pixels": np.zeros(SHAPE, np.uint16), "bits_stored": 17}, "bits_stored"),
    ],
)
def test_writer_rejects_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        write_dicom(tmp_path / "bad.dcm", **kwargs)
    assert not list(tmp_path.iterdir())


def test_writer_replaces_existing_file(tmp_path):
    path = tmp_path / "x.dcm"
    write_dicom(path, _image(8, seed=1), bits_stored=8)
    write_dicom(path, _image(8, seed=2), bits_stored=8, compression="rle")
    assert np.array_equal(read_image(path).pixels, _image(8, seed=2))
    assert [p.name for p in tmp_path.iterdir()] == ["x.dcm"]


# ------------------------------------------------------------------- dispatch on content


def test_dispatch_uses_content_not_extension(tmp_path):
    pixels = _image(12)
    dicom_named_png = tmp_path / "really_dicom.png"
    write_dicom(dicom_named_png, pixels, bits_stored=12)
    assert read_image(dicom_named_png).meta["format"] == "DICOM"
    png_named_dcm = tmp_path / "really_png.dcm"
    png_named_dcm.write_bytes(cv2.imencode(".png", pixels)[1].tobytes())
    assert read_image(png_named_dcm).meta["format"] == "PNG"
    assert read_image(PYDICOM_FILES / "MR_small.dcm").meta["format"] == "DICOM"  # its preamble is a TIFF header


def _without_preamble(path: Path, out: Path, *, implicit: bool) -> Path:
    """``path`` saved again with no preamble and no file meta (ACR-NEMA-style, PACS/CD exports)."""
    ds = pydicom.dcmread(path)
    ds.preamble = None
    del ds.file_meta
    ds.save_as(out, implicit_vr=implicit, little_endian=True)
    return out


@pytest.mark.parametrize("implicit", [True, False])
@pytest.mark.parametrize("name", ["raw.dcm", "IM0001", "raw.bin", "1.2.840.113619.2.55.3.320"])
def test_dicom_without_preamble_is_recognised_by_content(tmp_path, implicit, name):
    pixels = _image(12)
    write_dicom(tmp_path / "full.dcm", pixels, bits_stored=12)
    raw = _without_preamble(tmp_path / "full.dcm", tmp_path / name, implicit=implicit)
    assert raw.read_bytes()[:2] == b"\x08\x00"  # no preamble, no file meta: group 0008 first
    assert is_dicom(raw)
    image = read_image(raw)
    assert np.array_equal(image.pixels, pixels)
    assert image.meta["transfer_syntax"] == (ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian)


def test_content_sniff_refuses_what_is_not_dicom(tmp_path):
    cases = {"text": b"patient 7, lateral spine\n" * 4, "zeros": bytes(300),
             "odd_length": b"\x08\x00\x05\x00CS\x03\x00ISO",  # DICOM lengths are even
             "too_long": b"\x08\x00\x05\x00\x00\x10\x00\x00" + bytes(20)}  # longer than the file
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        assert not is_dicom(tmp_path / name), name
        _assert_read_error(tmp_path / name, "unrecognised content")
    png = tmp_path / "x.png"
    cv2.imwrite(str(png), _image(8))
    assert not is_dicom(png) and not is_dicom(tmp_path / "absent")
    write_dicom(tmp_path / "with_preamble", _image(8), bits_stored=8)
    assert is_dicom(tmp_path / "with_preamble")


@pytest.mark.parametrize("name", ["DICOMDIR", "DICOMDIR-implicit", "DICOMDIR-bigEnd"])
def test_dicomdir_is_not_an_image(name):
    path = PYDICOM_FILES / "dicomdirtests" / name
    error = _assert_read_error(path, "DICOMDIR")
    assert isinstance(error, NotAnImageError)


def test_objects_without_pixel_data_are_not_images_with_their_sop_class(tmp_path):
    error = _assert_read_error(PYDICOM_FILES / "test-SR.dcm", "Comprehensive SR Storage")
    assert isinstance(error, NotAnImageError) and error.reason.startswith("not an image")
    for sop, name in [(GrayscaleSoftcopyPresentationStateStorage, "Grayscale Softcopy Presentation State"),
                      (BasicTextSRStorage, "Basic Text SR Storage")]:
        path = _save_dataset(tmp_path / f"{name}.dcm", _header(sop, "PR"))
        assert isinstance(_assert_read_error(path, name), NotAnImageError)
    # An image SOP class without pixel data is a broken image, not "not an image".
    write_dicom(tmp_path / "full.dcm", _image(12), bits_stored=12)
    data = (tmp_path / "full.dcm").read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[:data.find(b"\xe0\x7f\x10\x00")])
    error = _assert_read_error(cut, "no pixel data: the file ends before the Pixel Data element")
    assert not isinstance(error, NotAnImageError)


def test_short_pixel_data_is_explained_in_the_header_s_terms(tmp_path):
    write_dicom(tmp_path / "full.dcm", _image(16, shape=(512, 512)), bits_stored=16)
    ds = pydicom.dcmread(tmp_path / "full.dcm")
    ds.PixelData = b""
    empty = _save_dataset(tmp_path / "empty.dcm", ds)
    _assert_read_error(empty, r": pixel data is 0 bytes, the header declares 512×512×16 bits \(524288 bytes\)$")
    data = (tmp_path / "full.dcm").read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[:-1000])
    _assert_read_error(tmp_path / "cut.dcm", r"pixel data is 523288 bytes \(the file ends 1000 bytes early\)")


def test_contradicted_uncompressed_transfer_syntax_is_inferred(tmp_path):
    pixels = _image(12)
    write_dicom(tmp_path / "full.dcm", pixels, bits_stored=12)
    ds = pydicom.dcmread(tmp_path / "full.dcm")
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian  # the data stay explicit VR
    path = tmp_path / "swapped.dcm"
    pydicom.dcmwrite(path, ds, implicit_vr=False, little_endian=True, force_encoding=True)
    with pytest.warns(UserWarning, match="Expected implicit VR, but found explicit VR"):
        image = read_image(path)
    assert np.array_equal(image.pixels, pixels)


# ---------------------------------------------------------------------- PNG/JPEG/TIFF


@pytest.mark.parametrize("ext", [".png", ".tif"])
@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_raster_formats(tmp_path, ext, bits, channels):
    grey = _image(bits)
    planes = [grey, np.roll(grey, 5, axis=1), grey[::-1], np.full_like(grey, 7)][:channels]
    written = planes[0] if channels == 1 else np.dstack(planes)
    path = tmp_path / f"img{ext}"
    assert cv2.imwrite(str(path), written)
    image = read_image(path)
    assert image.meta["format"] == ("PNG" if ext == ".png" else "TIFF") and image.meta["channels"] == channels
    assert image.pixels.dtype == grey.dtype and image.max_value == 2**bits - 1
    assert image.pixel_spacing_mm is None
    if channels == 1:
        assert np.array_equal(image.pixels, grey)
    else:  # BGR(A): ITU-R BT.601 luma, alpha ignored
        blue, green, red = (p.astype(np.float64) for p in planes[:3])
        luma = 0.114 * blue + 0.587 * green + 0.299 * red
        assert np.abs(image.pixels - luma).max() <= 1 + (bits == 16)  # OpenCV's 16-bit fixed point
        reference = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGRA2GRAY if channels == 4
                                 else cv2.COLOR_BGR2GRAY)
        assert np.array_equal(image.pixels, reference)


def _tiff_bytes(pixels: np.ndarray, order: str, big: bool) -> bytes:
    """A minimal uncompressed grey TIFF ("II"/"MM", classic or BigTIFF) with one strip."""
    end = "<" if order == "II" else ">"
    rows, cols = pixels.shape
    data = pixels.astype(pixels.dtype.newbyteorder(end)).tobytes()
    start = 16 if big else 8
    entries = [(256, 3, cols), (257, 4, rows), (258, 3, 8 * pixels.itemsize), (259, 3, 1), (262, 3, 1),
               (273, 16 if big else 4, start), (277, 3, 1), (278, 4, rows), (279, 4, len(data))]
    if big:
        out = order.encode() + struct.pack(end + "HHHQ", 43, 8, 0, start + len(data)) + data
        out += struct.pack(end + "Q", len(entries))
    else:
        out = order.encode() + struct.pack(end + "HI", 42, start + len(data)) + data
        out += struct.pack(end + "H", len(entries))
    for tag, kind, value in entries:
        field = struct.pack(end + {3: "H", 4: "I", 16: "Q"}[kind], value).ljust(8 if big else 4, b"\0")
        out += struct.pack(end + ("HHQ" if big else "HHI"), tag, kind, 1) + field
    return out + struct.pack(end + ("Q" if big else "I"), 0)


@pytest.mark.parametrize("order", ["II", "MM"])
@pytest.mark.parametrize("big", [False, True])
@pytest.mark.parametrize("bits", [8, 16])
def test_tiff_byte_orders_and_bigtiff(tmp_path, order, big, bits):
    pixels = _image(bits)
    path = tmp_path / "img.tif"
    path.write_bytes(_tiff_bytes(pixels, order, big))
    assert np.array_equal(read_image(path).pixels, pixels)
    _assert_read_error(path, "over max_pixels", max_pixels=pixels.size - 1)


@pytest.mark.parametrize("channels", [1, 3])
def test_jpeg(tmp_path, channels):
    grey = _image(8)
    path = tmp_path / "img.jpg"
    assert cv2.imwrite(str(path), grey if channels == 1 else np.dstack([grey] * 3), [cv2.IMWRITE_JPEG_QUALITY, 95])
    image = read_image(path)
    assert image.meta["format"] == "JPEG" and image.pixels.shape == SHAPE
    assert np.array_equal(image.pixels, cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) if channels == 1
                          else cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2GRAY))
    assert np.abs(image.pixels.astype(np.int64) - grey).mean() < 3


# ------------------------------------------------------------------------------ errors


def test_multi_frame_and_colour_dicom_are_rejected(tmp_path):
    frames = np.stack([_image(12), _image(12, seed=1)])
    multi = _save_dataset(tmp_path / "multi.dcm", _dataset(frames, "MONOCHROME2", 12))
    _assert_read_error(multi, "multi-frame")
    rgb = np.dstack([_image(8)] * 3)
    colour = _save_dataset(tmp_path / "rgb.dcm", _dataset(rgb, "RGB", 8))
    _assert_read_error(colour, "colour DICOM .*RGB")
    _assert_read_error(PYDICOM_FILES / "examples_palette.dcm", "PALETTE COLOR")


def test_oversized_images_are_rejected_before_decoding(tmp_path):
    path = tmp_path / "big.dcm"
    write_dicom(path, _image(12), bits_stored=12, compression="jpegls")
    data = bytearray(path.read_bytes())
    data[-200:-20] = bytes(180)  # corrupt the codestream: only the header may be looked at
    path.write_bytes(bytes(data))
    _assert_read_error(path, "over max_pixels=1000", max_pixels=1000)
    _assert_read_error(path, "cannot decode JPEG-LS")
    png = tmp_path / "big.png"
    png.write_bytes(cv2.imencode(".png", _image(8))[1].tobytes()[:40] + bytes(500))  # IHDR intact, data not
    _assert_read_error(png, "over max_pixels", max_pixels=1000)
    _assert_read_error(png, "could not decode")
    for ext in (".png", ".tif", ".jpg"):
        raster = tmp_path / f"big{ext}"
        cv2.imwrite(str(raster), _image(8))
        _assert_read_error(raster, "48x64 = 3072 pixels, over max_pixels=3071", max_pixels=3071)
        assert read_image(raster, max_pixels=3072).pixels.shape == SHAPE


@pytest.mark.filterwarnings("ignore:End of file reached before delimiter:UserWarning")
def test_bad_files_raise_image_read_error(tmp_path):
    _assert_read_error(tmp_path / "missing.dcm", "file not found")
    _assert_read_error(tmp_path, "is a directory")
    (tmp_path / "empty.dcm").write_bytes(b"")
    _assert_read_error(tmp_path / "empty.dcm", "empty file")
    for name in ("notes.txt", "notes.dcm"):
        (tmp_path / name).write_text("patient 7, lateral spine, no fracture\n" * 5)
    _assert_read_error(tmp_path / "notes.txt", "unrecognised content")
    _assert_read_error(tmp_path / "notes.dcm", "DICOM")
    magic_only = tmp_path / "magic.dcm"
    magic_only.write_bytes(bytes(128) + b"DICM" + os.urandom(300))
    _assert_read_error(magic_only, "DICOM")

    for compression in ("none", "jpegls", "jpeg-lossless"):
        whole = tmp_path / f"{compression}.dcm"
        write_dicom(whole, _image(16), bits_stored=16, compression=compression)
        data = whole.read_bytes()
        for cut in (100, len(data) // 2, len(data) - 12):
            truncated = tmp_path / f"{compression}_cut{cut}.dcm"
            truncated.write_bytes(data[:cut])
            _assert_read_error(truncated, "no Rows/Columns" if cut == 100 else "pixel data")

    png = cv2.imencode(".png", _image(16))[1].tobytes()
    for name, data in [("cut.png", png[: len(png) // 2]), ("garbled.png", png[:40] + os.urandom(len(png) - 40)),
                       ("header.png", png[:20]), ("cut.tif", cv2.imencode(".tif", _image(8))[1].tobytes()[:30]),
                       ("cut.jpg", cv2.imencode(".jpg", _image(8))[1].tobytes()[:300])]:
        (tmp_path / name).write_bytes(data)
        _assert_read_error(tmp_path / name, "PNG|TIFF|JPEG")


def test_image_read_error_pickles():
    error = ImageReadError("/data/x.dcm", "empty file")
    clone = pickle.loads(pickle.dumps(error))
    assert (clone.path, clone.reason, str(clone)) == ("/data/x.dcm", "empty file", "/data/x.dcm: empty file")
    assert isinstance(clone, ValueError)


def test_full_size_radiograph(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 4096, (2800, 2000), dtype=np.uint16)
    path = tmp_path / "full.dcm"
    write_dicom(path, pixels, bits_stored=12, pixel_spacing_mm=(0.14, 0.14))
    image = read_image(path)
    assert image.pixels.shape == (2800, 2000) and np.array_equal(image.pixels, pixels)
