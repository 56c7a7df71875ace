"""JPEG DICOM pixel data decoded by libjpeg-turbo through ``imagecodecs`` (BSD-3), as a pydicom
decoder plugin named ``imagecodecs``.

It decodes JPEG Baseline (8-bit), Extended (12-bit) and Lossless (Process 14, any predictor,
2–16 bits; SV1 included), so the package needs no GPL-licensed decoder (pydicom's other JPEG
plugins are pylibjpeg-libjpeg, GPL-3.0, and GDCM). Lossless data decodes to the same values
with any decoder; lossy data may differ from another decoder's by one grey level per pixel,
the accuracy ITU-T T.83 asks of a conforming decoder. Greyscale is what :mod:`vertex_jax.data.io`
reads; colour frames are left to pydicom's other plugins.
"""

from __future__ import annotations

import contextlib

from pydicom import uid
from pydicom.pixels.decoders import (JPEGBaseline8BitDecoder, JPEGExtended12BitDecoder,
                                     JPEGLosslessDecoder, JPEGLosslessSV1Decoder)

PLUGIN = "imagecodecs"
SYNTAXES = (uid.JPEGBaseline8Bit, uid.JPEGExtended12Bit, uid.JPEGLossless, uid.JPEGLosslessSV1)
DECODER_DEPENDENCIES = dict.fromkeys(SYNTAXES, ("imagecodecs>=2024.1",))  # pydicom's plugin contract


def is_available(syntax: str) -> bool:
    """Whether ``imagecodecs`` with its libjpeg-turbo codec is installed (pydicom's contract)."""
    try:
        import imagecodecs
    except ImportError:
        return False
    return syntax in SYNTAXES and bool(imagecodecs.JPEG8.available)


def decode_frame(src: bytes, runner) -> bytes:
    """One frame's stored values (pydicom's ``DecodeRunner`` contract)."""
    import imagecodecs

    if runner.samples_per_pixel != 1:
        raise ValueError("the imagecodecs plugin decodes greyscale frames only")
    frame = imagecodecs.jpeg8_decode(src)
    runner.set_option("bits_allocated", 8 if frame.dtype.itemsize == 1 else 16)
    return frame.tobytes()


def register() -> None:
    """Add the plugin to pydicom's JPEG decoders (once)."""
    for decoder in (JPEGBaseline8BitDecoder, JPEGExtended12BitDecoder, JPEGLosslessDecoder,
                    JPEGLosslessSV1Decoder):
        if PLUGIN not in decoder.available_plugins:
            with contextlib.suppress(ValueError):  # already listed as unavailable
                decoder.add_plugin(PLUGIN, (__name__, "decode_frame"))
