"""JPEG Lossless DICOM decode time: libjpeg-turbo through imagecodecs (the reader's plugin,
vertex_jax/data/jpeg_codec.py) against pylibjpeg-libjpeg (GPL-3.0; the `test` extra), on one
2800 x 2000 12-bit radiograph-sized image, best and worst of --repeats.

    python benchmarks/jpeg_decoders.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from pydicom.pixels import pixel_array

from vertex_jax.data import io  # noqa: F401 - registers the imagecodecs plugin
from vertex_jax.synthetic.dicom_write import write_dicom


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:2800, 0:2000]
    image = ((np.sin(yy / 50) + np.cos(xx / 70) + 2) / 4 * 4000 + rng.normal(0, 20, yy.shape))
    image = image.clip(0, 4095).astype(np.uint16)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "lossless.dcm"
        write_dicom(path, image, bits_stored=12, compression="jpeg-lossless")
        print(f"{platform.processor() or platform.machine()}, JPEG Lossless SV1, 2800x2000, 12 bits stored")
        for plugin in ("imagecodecs", "pylibjpeg"):
            try:
                times = []
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    decoded = pixel_array(str(path), decoding_plugin=plugin)
                    times.append(time.perf_counter() - start)
            except (RuntimeError, ValueError) as e:
                print(f"{plugin:12s} unavailable: {e}")
                continue
            same = "same values" if np.array_equal(decoded, image) else "DIFFERENT values"
            print(f"{plugin:12s} {min(times) * 1e3:7.1f} ms best, {max(times) * 1e3:7.1f} ms worst "
                  f"of {args.repeats}; {same}")


if __name__ == "__main__":
    main()
