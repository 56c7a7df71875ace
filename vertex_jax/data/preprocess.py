"""The paper's preprocessing, step by step, in NumPy/OpenCV.

VERTE-X (J Bone Miner Res 2023; 2025) and the authors' code:

1. *"5% of the image size was cropped for areas not related to analysis"* —
   ``border_crop`` of each dimension is removed from **each edge** (default 0.05 for
   radiographs; VFA images are tight already and use 0).
2. *"Histogram equalization was applied to all images"* — on the full bit depth
   (the authors' ``cv2.equalizeHist`` only handles 8 bit; radiographs are 10-16 bit).
   The mapping is OpenCV's: ``lut[v] = (cdf[v] - cdf[min]) / (N - cdf[min])``.
3. *"Min-max scaling was used to normalize the intensity values"* — to [0, 1].
4. *"the width was resized to 512 pixels for spine radiographs ... for DXA VFA images
   ... the height was resized to 1024 pixels"*, aspect preserved and never exceeding
   the 1024×512 (H×W) canvas. Both rules reduce to one scale ``s = min(H/h, W/w)``:
   radiographs (taller than 2:1 rarely) hit the width, VFA images (narrow) the height.
5. *"Images smaller than the target size (1024 × 512) were centered, with
   zero-padding applied to fill the remaining areas."*

The result is stored as ``uint8`` (or ``uint16``) and scaled to float on the
accelerator. :class:`Geometry` records the crop box, scale and offsets so a heat-map
on the canvas maps back onto the original image.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import cv2
import numpy as np

from vertex_jax.errors import ConfigError

CANVAS: tuple[int, int] = (1024, 512)


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
    """Every parameter of the pipeline; its ``fingerprint`` keys the cache."""

    canvas: tuple[int, int] = CANVAS  # (height, width)
    border_crop: float = 0.05  # fraction of each dimension removed at each edge
    equalize: bool = True
    out_dtype: str = "uint8"  # or "uint16"

    def __post_init__(self) -> None:
        if not 0.0 <= self.border_crop < 0.5:
            raise ConfigError(f"border_crop must be in [0, 0.5), got {self.border_crop}")
        if self.out_dtype not in ("uint8", "uint16"):
            raise ConfigError(f"out_dtype must be 'uint8' or 'uint16', got {self.out_dtype!r}")
        if len(self.canvas) != 2 or min(self.canvas) < 8:
            raise ConfigError(f"canvas must be (height, width) >= 8, got {self.canvas}")

    def to_dict(self) -> dict[str, Any]:
        return {"canvas": list(self.canvas), "border_crop": self.border_crop,
                "equalize": self.equalize, "out_dtype": self.out_dtype}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PreprocessConfig":
        return cls(canvas=tuple(d["canvas"]), border_crop=float(d["border_crop"]),
                   equalize=bool(d["equalize"]), out_dtype=str(d["out_dtype"]))


@dataclasses.dataclass(frozen=True)
class Geometry:
    """Where the original image landed on the canvas.

    ``crop`` is (y0, x0, y1, x1) in original pixels; the cropped region of size
    (y1-y0, x1-x0) was resized to ``resized`` (h, w) and pasted at ``offset`` (top, left)
    of a canvas of shape ``canvas``.
    """

    original: tuple[int, int]
    crop: tuple[int, int, int, int]
    resized: tuple[int, int]
    offset: tuple[int, int]
    canvas: tuple[int, int]

    @property
    def scale(self) -> tuple[float, float]:
        """(sy, sx): canvas pixels per original pixel."""
        y0, x0, y1, x1 = self.crop
        return self.resized[0] / (y1 - y0), self.resized[1] / (x1 - x0)

    def to_canvas(self, xy: np.ndarray) -> np.ndarray:
        """Map (..., 2) points (x, y) in original pixel coordinates onto the canvas."""
        xy = np.asarray(xy, np.float64)
        sy, sx = self.scale
        return np.stack([(xy[..., 0] - self.crop[1]) * sx + self.offset[1],
                         (xy[..., 1] - self.crop[0]) * sy + self.offset[0]], axis=-1)

    def to_original(self, xy: np.ndarray) -> np.ndarray:
        """Map (..., 2) points (x, y) on the canvas back to original pixel coordinates."""
        xy = np.asarray(xy, np.float64)
        sy, sx = self.scale
        return np.stack([(xy[..., 0] - self.offset[1]) / sx + self.crop[1],
                         (xy[..., 1] - self.offset[0]) / sy + self.crop[0]], axis=-1)

    def heatmap_to_original(self, heatmap: np.ndarray) -> np.ndarray:
        """Resample a heat-map covering the canvas (any resolution) onto the original image.

        Pixels outside the crop box get 0.
        """
        canvas_map = cv2.resize(np.asarray(heatmap, np.float32), self.canvas[::-1],
                                interpolation=cv2.INTER_LINEAR)
        top, left = self.offset
        content = canvas_map[top:top + self.resized[0], left:left + self.resized[1]]
        y0, x0, y1, x1 = self.crop
        out = np.zeros(self.original, np.float32)
        out[y0:y1, x0:x1] = cv2.resize(content, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
        return out

    def to_dict(self) -> dict[str, list[int]]:
        return {f.name: list(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Geometry":
        return cls(**{f.name: tuple(int(v) for v in d[f.name]) for f in dataclasses.fields(cls)})


def crop_box(shape: tuple[int, int], border_crop: float) -> tuple[int, int, int, int]:
    """Step 1: the (y0, x0, y1, x1) box left after removing ``border_crop`` at each edge."""
    h, w = shape
    dy, dx = int(h * border_crop), int(w * border_crop)
    return dy, dx, h - dy, w - dx


UNIT = 65535  # intermediate images hold [0, 1] as 16-bit fixed point


def histogram(pixels: np.ndarray) -> np.ndarray:
    """Exact per-level counts of a uint8/uint16 image (OpenCV when counts fit float32)."""
    levels = 256 if pixels.dtype == np.uint8 else 65536
    if pixels.size < 2**24:  # calcHist counts in float32: exact below 2**24 per bin
        return cv2.calcHist([pixels], [0], None, [levels], [0, levels]).ravel().astype(np.int64)
    return np.bincount(pixels.ravel(), minlength=levels)


def equalize_minmax(pixels: np.ndarray) -> np.ndarray:
    """Steps 2-3: histogram equalisation on the full bit depth, then min-max to [0, 1].

    Uses OpenCV's equalisation mapping at every integer level of ``pixels`` (uint8 or
    uint16), so for 8-bit input it equals ``cv2.equalizeHist``. Min-max is applied to
    the look-up table: the mapped image's extremes are the table's values at the image's
    extreme levels, so this is exact and cheap. Returns uint16 with [0, 1] ↦ [0, 65535].
    """
    if pixels.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"expected a uint8 or uint16 image, got {pixels.dtype}")
    hist = histogram(pixels)
    levels = np.flatnonzero(hist)
    lo, hi = levels[0], levels[-1]
    cdf = np.cumsum(hist)
    denom = cdf[-1] - hist[lo]
    if denom == 0:  # constant image: nothing to equalise or scale
        return np.zeros(pixels.shape, np.uint16)
    lut = (cdf - hist[lo]) / denom
    lut = (lut - lut[lo]) / (lut[hi] - lut[lo])
    return np.take(np.rint(lut * UNIT).astype(np.uint16), pixels)


def minmax(pixels: np.ndarray) -> np.ndarray:
    """Step 3 alone (when equalisation is off): min-max to [0, 1] as uint16 fixed point."""
    lo, hi = float(pixels.min()), float(pixels.max())
    if hi <= lo:
        return np.zeros(pixels.shape, np.uint16)
    return np.rint((pixels.astype(np.float32) - lo) * (UNIT / (hi - lo))).astype(np.uint16)


def fit_size(shape: tuple[int, int], canvas: tuple[int, int]) -> tuple[int, int]:
    """Step 4: (h, w) after the aspect-preserving resize that fits the canvas."""
    h, w = shape
    s = min(canvas[0] / h, canvas[1] / w)
    return min(canvas[0], max(1, round(h * s))), min(canvas[1], max(1, round(w * s)))


def preprocess(pixels: np.ndarray, config: PreprocessConfig = PreprocessConfig()
               ) -> tuple[np.ndarray, Geometry]:
    """Run steps 1-5 on a 2-D bone-bright uint8/uint16 image.

    Returns the canvas (``config.out_dtype``, shape ``config.canvas``) and its geometry.
    """
    if pixels.ndim != 2:
        raise ValueError(f"expected a 2-D grey image, got shape {pixels.shape}")
    box = crop_box(pixels.shape, config.border_crop)
    y0, x0, y1, x1 = box
    cropped = pixels[y0:y1, x0:x1]
    scaled = equalize_minmax(cropped) if config.equalize else minmax(cropped)
    new_h, new_w = fit_size(cropped.shape, config.canvas)
    shrinking = new_h < cropped.shape[0]
    resized = cv2.resize(scaled, (new_w, new_h),
                         interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    top, left = (config.canvas[0] - new_h) // 2, (config.canvas[1] - new_w) // 2
    canvas = np.zeros(config.canvas, config.out_dtype)
    if config.out_dtype == "uint8":
        resized = cv2.convertScaleAbs(resized, alpha=255.0 / UNIT)  # rounds and saturates
    canvas[top:top + new_h, left:left + new_w] = resized
    geometry = Geometry(original=tuple(pixels.shape), crop=box, resized=(new_h, new_w),
                        offset=(top, left), canvas=tuple(config.canvas))
    return canvas, geometry
