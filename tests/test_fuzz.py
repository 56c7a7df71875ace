"""Fuzzing the image reader: mutated PNG, JPEG, TIFF and DICOM files must each give an image or
an ``ImageReadError`` naming the file -- never another exception, a hang or a memory blow-up.

Small valid fixtures (64x64) are mutated with a fixed seed: truncation at random offsets,
random byte flips, header fields set to 0, huge or negative values, element lengths
forged, transfer syntax UIDs swapped. The files are read in a fresh process (run as
``python tests/test_fuzz.py FOLDER RESULT.json``), so its peak memory is the reader's alone
and a hang inside a C codec is caught by the process timeout; each read also runs under a
per-file alarm. Every failure ever found is kept in ``REGRESSIONS`` below.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLSLossless,
    RLELossless,
    SecondaryCaptureImageStorage,
)

SEED = 20260513
MUTANTS_PER_FIXTURE = 120
FILE_TIME_LIMIT_S = 5.0  # one read; the valid 64x64 fixtures take milliseconds
PROCESS_TIMEOUT_S = 120.0
PEAK_RSS_LIMIT_MB = 1024  # the reading process, imports included (about 150 MB of it)
SHAPE = (64, 64)
# DICOM elements whose value is forged: Samples per Pixel, Rows, Columns, Bits Allocated,
# Bits Stored, High Bit, Pixel Representation, Number of Frames, Window Center/Width,
# Rescale Slope, Planar Configuration.
DICOM_FIELDS = [(0x0028, 0x0002), (0x0028, 0x0010), (0x0028, 0x0011), (0x0028, 0x0100),
                (0x0028, 0x0101), (0x0028, 0x0102), (0x0028, 0x0103), (0x0028, 0x0008),
                (0x0028, 0x1050), (0x0028, 0x1051), (0x0028, 0x1053), (0x0028, 0x0006)]
SYNTAXES = [ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian, RLELossless,
            JPEGLSLossless, "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.90", "1.2.3"]
FIXED_UIDS = {"SOPInstanceUID": "1.2.826.0.1.3680043.10.1.1", "StudyInstanceUID": "1.2.826.0.1.3680043.10.1.2",
              "SeriesInstanceUID": "1.2.826.0.1.3680043.10.1.3"}  # fixtures the same on every run


# ------------------------------------------------------------------------------ fixtures


def _pixels(bits: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 2**bits - 1, SHAPE[0] * SHAPE[1]).reshape(SHAPE)
    return np.clip(ramp + rng.normal(0, 2**bits / 40, SHAPE), 0, 2**bits - 1).astype(
        np.uint8 if bits <= 8 else np.uint16)


def fixtures(tmp: Path) -> dict[str, bytes]:
    """Valid files of every kind the reader knows, as bytes."""
    from vertex_jax.synthetic.dicom_write import write_dicom

    out = {f"png{b}": cv2.imencode(".png", _pixels(b))[1].tobytes() for b in (8, 16)}
    out |= {f"tif{b}": cv2.imencode(".tif", _pixels(b))[1].tobytes() for b in (8, 16)}
    out["jpg"] = cv2.imencode(".jpg", _pixels(8))[1].tobytes()
    out["png_rgb"] = cv2.imencode(".png", np.dstack([_pixels(8)] * 3))[1].tobytes()
    dicoms = {"dcm": {}, "dcm_mono1_window": {"photometric": "MONOCHROME1", "window": (2000, 3000)},
              "dcm_rescale": {"rescale": (2.0, -100.0)}, "dcm_rle": {"compression": "rle"},
              "dcm_jpegls": {"compression": "jpegls"}, "dcm_j2k": {"compression": "jpeg2000"},
              "dcm_jpeg_lossless": {"compression": "jpeg-lossless"}}
    for name, kwargs in dicoms.items():
        path = tmp / f"{name}.dcm"
        write_dicom(path, _pixels(12), bits_stored=12, **kwargs)
        ds = pydicom.dcmread(path)
        for keyword, uid in FIXED_UIDS.items():
            setattr(ds, keyword, uid)
        ds.file_meta.MediaStorageSOPInstanceUID = FIXED_UIDS["SOPInstanceUID"]
        ds.save_as(path)
        out[name] = path.read_bytes()
    ds = pydicom.dcmread(tmp / "dcm.dcm")  # no preamble, no file meta (ACR-NEMA style)
    ds.preamble = None
    del ds.file_meta
    ds.save_as(tmp / "raw", implicit_vr=True, little_endian=True)
    out["dcm_raw_implicit"] = (tmp / "raw").read_bytes()
    return out


# ----------------------------------------------------------------------------- mutations


def _dicom_value_at(data: bytes, tag: tuple[int, int]) -> tuple[int, int] | None:
    """(offset, length) of the first value of ``tag`` (little endian, explicit or implicit VR)."""
    at = data.find(struct.pack("<HH", *tag))
    if at < 0 or at + 12 > len(data):
        return None
    if data[at + 4:at + 6].isalpha():  # explicit VR, 2-byte length
        return at + 8, struct.unpack_from("<H", data, at + 6)[0]
    return at + 8, struct.unpack_from("<I", data, at + 4)[0]


def _forge(value: bytes, how: int) -> bytes:
    """A value of the same length: 0, huge, negative (binary) or as text."""
    n = len(value)
    if value[:1].isdigit() or value[:1] in (b"-", b" ", b"+"):  # IS / DS text
        text = [b"0", b"99999999", b"-1", b"1e308", b"nan"][how % 5]
        return text[:n].ljust(n, b" ")
    return [b"\0" * n, b"\xff" * n, b"\xff" * (n - 1) + b"\x7f", b"\0" * (n - 1) + b"\x80",
            b"\x01" + b"\0" * (n - 1)][how % 5]


def _header_fields(name: str, data: bytes, rng: np.random.Generator) -> bytes:
    """One header field set to 0, huge or negative."""
    out = bytearray(data)
    how = int(rng.integers(5))
    if name.startswith("png"):
        at = int(rng.choice([16, 20, 24, 25]))  # IHDR width, height, bit depth, colour type
        size = 4 if at < 24 else 1
        out[at:at + size] = _forge(bytes(out[at:at + size]), how)
    elif name == "jpg":
        sof = data.find(b"\xff\xc0")
        at = sof + int(rng.choice([2, 4, 5, 7, 9]))  # length, precision, height, width, components
        out[at:at + 2] = _forge(bytes(out[at:at + 2]), how)
    elif name.startswith("tif"):
        ifd = struct.unpack_from("<I", data, 4)[0]
        entry = ifd + 2 + 12 * int(rng.integers(struct.unpack_from("<H", data, ifd)[0]))
        at = entry + int(rng.choice([2, 4, 8]))  # type, count, value/offset
        out[at:at + 4] = _forge(bytes(out[at:at + 4]), how)
    else:
        fields = [f for f in DICOM_FIELDS if _dicom_value_at(data, f)]
        where = _dicom_value_at(data, fields[int(rng.integers(len(fields)))])
        if rng.random() < 0.3:  # the length field itself
            at, length = where
            size = 2 if data[at - 4:at - 2].isalpha() else 4
            out[at - size:at] = _forge(bytes(out[at - size:at]), how)
        else:
            at, length = where
            out[at:at + length] = _forge(bytes(out[at:at + length]), how)
    return bytes(out)


def _swap_syntax(data: bytes, rng: np.random.Generator) -> bytes:
    """The file meta's transfer syntax UID replaced by another (no longer than the field)."""
    where = _dicom_value_at(data, (0x0002, 0x0010))
    if where is None:
        return data
    at, length = where
    fits = [s for s in SYNTAXES if len(s) <= length]
    uid = str(fits[int(rng.integers(len(fits)))]).encode()
    return data[:at] + uid.ljust(length, b"\0") + data[at + length:]


def mutants(sources: dict[str, bytes], seed: int = SEED) -> dict[str, bytes]:
    """``MUTANTS_PER_FIXTURE`` mutated copies of each fixture, named by what was done."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, data in sources.items():
        for k in range(MUTANTS_PER_FIXTURE):
            kind = ["cut", "flip", "field", "field", "swap"][k % 5]
            if kind == "swap" and not name.startswith("dcm"):
                kind = "flip"
            elif kind == "swap" and k % 10 == 4:
                kind = "fieldswap"
            if kind == "cut":
                mutant = data[:int(rng.integers(1, len(data)))]
            elif kind == "flip":
                mutant = bytearray(data)
                for at in rng.integers(0, len(data), int(rng.integers(1, 9))):
                    mutant[at] = int(rng.integers(256))
                mutant = bytes(mutant)
            elif kind == "field":
                mutant = _header_fields(name, data, rng)
            else:
                mutant = _swap_syntax(_header_fields(name, data, rng) if kind == "fieldswap" else data, rng)
            # Every other DICOM mutant has no suffix: recognised by content or refused.
            suffix = "" if name.startswith("dcm") and k % 2 else {"p": ".png", "t": ".tif", "j": ".jpg"}.get(
                name[0], ".dcm")
            out[f"{name}-{k:03d}-{kind}{suffix}"] = mutant
        out[f"{name}-orig{suffix}"] = data
    return out


# ------------------------------------------------------------------------ reading process


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout


def _peak_rss_mb() -> float:
    """This process's own resident high-water mark (VmHWM). Not ``ru_maxrss``: Linux carries
    the pre-exec high-water mark of the forked parent (a pytest worker holding GBs) into it."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def read_folder(folder: Path) -> dict:
    """Read every file; the outcomes that break the contract, counts, times and peak memory.

    A file whose only change is its transfer syntax UID must give the original's pixels, or
    an error: never other pixels.
    """
    import warnings

    from vertex_jax.data.io import ImageReadError, LoadedImage, read_image

    warnings.simplefilter("ignore")  # pydicom's UserWarnings on broken files are expected
    signal.signal(signal.SIGALRM, _alarm)
    bad, counts, slowest, digests = [], {"image": 0, "error": 0}, 0.0, {}
    for path in sorted(folder.iterdir()):
        start = time.perf_counter()
        signal.setitimer(signal.ITIMER_REAL, FILE_TIME_LIMIT_S)
        try:
            image = read_image(path)
            ok = (isinstance(image, LoadedImage) and image.pixels.ndim == 2 and image.path == str(path)
                  and image.pixels.dtype in (np.uint8, np.uint16) and image.pixels.max() <= image.max_value)
            counts["image"] += 1
            if not ok:
                bad.append(f"{path.name}: wrong result {image.pixels.dtype} {image.pixels.shape} "
                           f"max {image.pixels.max()} of {image.max_value}")
            digests[path.name] = hash(image.pixels.tobytes())
        except ImageReadError as e:
            counts["error"] += 1
            if e.path != str(path) or path.name not in str(e) or not e.reason:
                bad.append(f"{path.name}: error does not name the file: {e}")
        except _Timeout:
            bad.append(f"{path.name}: no answer within {FILE_TIME_LIMIT_S} s")
        except BaseException as e:  # noqa: BLE001 - the contract under test
            bad.append(f"{path.name}: {type(e).__name__}: {e}")
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        slowest = max(slowest, time.perf_counter() - start)
    originals = {n.split("-")[0]: d for n, d in digests.items() if "-orig" in n}
    for name, digest in digests.items():
        if name.split(".")[0].endswith("-swap") and digest != originals[name.split("-")[0]]:
            bad.append(f"{name}: other pixels than the file before its transfer syntax was swapped")
    peak_mb = _peak_rss_mb()
    return {"bad": bad, "counts": counts, "slowest_s": slowest, "peak_mb": peak_mb}


def _run_reader(folder: Path, result: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, __file__, str(folder), str(result)], env=env,
                          capture_output=True, text=True, timeout=PROCESS_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {**json.loads(result.read_text()), "stderr": proc.stderr}


# ----------------------------------------------------------------------------------- tests


def test_fuzzed_files_give_an_image_or_a_read_error(tmp_path):
    folder = tmp_path / "fuzz"
    folder.mkdir()
    files = mutants(fixtures(tmp_path))
    assert len(files) >= 1000
    for name, data in files.items():
        (folder / name).write_bytes(data)
    report = _run_reader(folder, tmp_path / "result.json")
    assert report["bad"] == [], "\n".join(report["bad"][:20])
    assert sum(report["counts"].values()) == len(files)
    assert report["counts"]["image"] > 50 and report["counts"]["error"] > 300  # both outcomes exercised
    assert report["peak_mb"] < PEAK_RSS_LIMIT_MB, report["peak_mb"]
    assert report["stderr"] == ""  # decoder messages go into the reasons, not onto the console


def _unknown_sop_class_cut_before_pixels(data: bytes) -> bytes:
    """A damaged SOP Class UID and no pixel data: was reported as "not an image" (SOP class
    ``1.2.840.10008.5.1.4.1.1.7`` with digits flipped), though it is a broken image file."""
    sop = str(SecondaryCaptureImageStorage).encode()
    at = data.rfind(sop)  # the data set's own, after the file meta's copy
    data = data[:at] + sop.replace(b"10008", b"19008") + data[at + len(sop):]
    return data[:data.find(b"\xe0\x7f\x10\x00")]


def _png_with_bad_ihdr_crc(data: bytes) -> bytes:
    """libpng printed "libpng error: IHDR: CRC error" on stderr instead of into the reason."""
    return data[:29] + bytes([data[29] ^ 0xFF]) + data[30:]


def _jpeg2000_labelled_baseline(data: bytes) -> bytes:
    """A JPEG 2000 codestream under the JPEG Baseline UID: decoded (by content) to pixels 16
    times too bright, above what Bits Stored allows."""
    return data.replace(b"1.2.840.10008.1.2.4.90", b"1.2.840.10008.1.2.4.50")


def _bits_stored_1_on_12_bit_jpeg2000(data: bytes) -> bytes:
    """Bits Stored forged to 1 over a 12-bit codestream: returned as decoded, max_value 1."""
    at = data.find(struct.pack("<HH", 0x0028, 0x0101) + b"US\x02\x00")
    return data[:at + 8] + struct.pack("<H", 1) + data[at + 10:]


# Failures the fuzzer found, as fixed cases: (fixture, mutation, what the reason must say).
REGRESSIONS = [("dcm", _unknown_sop_class_cut_before_pixels, "truncated"),
               ("png16", _png_with_bad_ihdr_crc, "CRC error"),
               ("dcm_j2k", _jpeg2000_labelled_baseline, "says JPEG Baseline .* JPEG 2000 codestream"),
               ("dcm_j2k", _bits_stored_1_on_12_bit_jpeg2000,
                "values up to 4095, more than the 1 that Bits Stored 1")]


@pytest.mark.parametrize("fixture,mutate,says", REGRESSIONS, ids=[m.__name__ for _, m, _ in REGRESSIONS])
def test_fuzz_regressions(tmp_path, capfd, fixture, mutate, says):
    from vertex_jax.data.io import ImageReadError, NotAnImageError, read_image

    path = tmp_path / f"case-{fixture}"
    path.write_bytes(mutate(fixtures(tmp_path)[fixture]))
    with pytest.raises(ImageReadError, match=says) as info:
        read_image(path)
    assert not isinstance(info.value, NotAnImageError) and info.value.path == str(path)
    assert capfd.readouterr().err == ""


if __name__ == "__main__":
    Path(sys.argv[2]).write_text(json.dumps(read_folder(Path(sys.argv[1]))))
