"""A lateral spine image phantom: T4-L4 radiograph or DXA VFA with per-vertebra annotations.

The patient (:class:`Anatomy`: vertebral sizes, spinal curves, bone density, fractures)
is separate from the exam (:class:`Acquisition`: image size, exposure, vendor look), so a
repeat exam shows the same spine differently. :func:`render` turns both into a bone-bright
``uint16`` image and one :class:`VertebraAnnotation` per body.

Geometry is built in millimetres in a *spine frame* (x anterior, y caudal), then mapped to
pixels by one affine (tilt, scale, optional mirror so anterior is on the left). Bodies
follow a chain: each body is a rounded quadrilateral whose anterior/middle/posterior
heights define its shape; kyphosis, lordosis and fracture wedging set the angles between
neighbours. The image is a log-attenuation map (soft tissue, lungs, bowel gas, ribs,
posterior elements, vertebral cortex and trabecular bone with filtered-noise texture)
passed through a detector model (anode heel, low-frequency scatter, quantum noise,
blur, vendor sharpening, windowing, gamma, automatic exposure control) and quantised.

What a reader can see, and only that, carries the labels:

- Fractures (Genant semi-quantitative): wedge (anterior), biconcave (middle) or crush
  (posterior and whole body) height loss of grade 1 (20-25%), 2 (25-40%) or 3 (>40%),
  the local kyphosis a wedge brings, compacted trabeculae (the body's bone in less height
  looks denser, most at the collapsed endplate) and, in some, an intravertebral cleft.
- Osteoporosis: lower trabecular density relative to cortex, posterior elements and soft
  tissue ("picture framing"), thinner cortex, coarser vertical trabecular striation.
- The automatic exposure control sets every image's mean to a random level, so global
  brightness carries no label signal.
"""

from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np

from vertex_jax.errors import ConfigError
from vertex_jax.tasks import DOMAINS

LEVELS: tuple[str, ...] = tuple([f"T{i}" for i in range(4, 13)] + [f"L{i}" for i in range(1, 5)])
THORACIC = 9  # T4..T12 are LEVELS[:9]
FRACTURE_TYPES: tuple[str, ...] = ("wedge", "biconcave", "crush")
GENANT_LOSS: dict[int, tuple[float, float]] = {1: (0.20, 0.25), 2: (0.25, 0.40), 3: (0.40, 0.60)}

# (name, bits stored choices, spacing tag, edge-enhancement range)
_XRAY_VENDORS = (
    ("GE Healthcare", (12, 14, 16), "ImagerPixelSpacing", (0.0, 0.6)),
    ("DRGEM", (12, 14), "ImagerPixelSpacing", (0.2, 0.9)),
    ("Dongkang", (10, 12, 14), "PixelSpacing", (0.0, 0.5)),
    ("Agfa", (12, 15), "ImagerPixelSpacing", (0.5, 1.2)),
    ("Carestream", (12, 16), "PixelSpacing", (0.1, 0.7)),
)
_VFA_VENDORS = (
    ("Hologic Discovery", (8, 10), "PixelSpacing", (0.0, 0.2)),
    ("Hologic Horizon", (8, 12), "PixelSpacing", (0.0, 0.3)),
)
# Vendors the training cohort never shows (the ``scanner`` shift): stronger edge enhancement
# and other bit depths. Each table has the same length and bit-depth choice counts as its
# training twin, so both consume the same random draws and nothing but the look changes.
_XRAY_OTHER_VENDORS = (
    ("Siemens Healthineers", (12, 14, 16), "ImagerPixelSpacing", (0.9, 1.5)),
    ("Fujifilm", (10, 12), "PixelSpacing", (1.0, 1.6)),
    ("Philips", (12, 14, 16), "ImagerPixelSpacing", (0.7, 1.3)),
    ("Canon", (12, 16), "ImagerPixelSpacing", (1.0, 1.6)),
    ("Shimadzu", (10, 16), "PixelSpacing", (0.8, 1.4)),
)
_VFA_OTHER_VENDORS = (
    ("GE Lunar iDXA", (8, 12), "PixelSpacing", (0.3, 0.6)),
    ("GE Lunar Prodigy", (10, 12), "PixelSpacing", (0.4, 0.7)),
)
VENDOR_SETS: tuple[str, ...] = ("train", "other")
_SHAPE_POINTS = 14  # points per endplate in a body outline
# The six-point morphometry of a body (Genant 1993; McCloskey 1993): the anterior, middle and
# posterior points of its superior and inferior endplates, in this order.
ENDPLATE_POINTS: tuple[str, ...] = ("superior_anterior", "superior_middle", "superior_posterior",
                                    "inferior_anterior", "inferior_middle", "inferior_posterior")
_WALL_POINTS = 5  # points inside each body wall


@dataclasses.dataclass(frozen=True)
class Fracture:
    """One fractured body: Genant type and grade, and its heights relative to normal.

    ``ratios`` are (anterior, middle, posterior) heights over the same body's normal
    heights; ``loss = 1 - min(ratios)`` is the Genant height reduction. ``top_share`` is
    the part of the collapse taken by the superior endplate. ``cleft``: an intravertebral
    cleft (vacuum phenomenon), a lucent line under the collapsed endplate.
    """

    level: str
    kind: str
    grade: int
    ratios: tuple[float, float, float]
    top_share: float
    cleft: bool = False

    @property
    def loss(self) -> float:
        return 1.0 - min(self.ratios)


def make_fracture(rng: np.random.Generator, level: str, kind: str, grade: int,
                  cleft: bool = False) -> Fracture:
    """Draw a ``kind`` fracture's shape at ``level`` with a loss inside the Genant ``grade``."""
    if level not in LEVELS:
        raise ValueError(f"unknown vertebral level {level!r}; expected one of {LEVELS}")
    if kind not in FRACTURE_TYPES:
        raise ValueError(f"unknown fracture type {kind!r}; expected one of {FRACTURE_TYPES}")
    if grade not in GENANT_LOSS:
        raise ValueError(f"Genant grade must be 1, 2 or 3, got {grade!r}")
    lo, hi = GENANT_LOSS[grade]
    loss = float(rng.uniform(lo + 0.005, hi - 0.005))
    u = rng.uniform(size=3)
    if kind == "wedge":
        ratios = (1 - loss, 1 - loss * (0.3 + 0.3 * u[0]), 1 - 0.05 * u[1])
        top = 0.6 + 0.4 * u[2]
    elif kind == "biconcave":
        ratios = (1 - 0.08 * u[0], 1 - loss, 1 - 0.08 * u[1])
        top = 0.4 + 0.2 * u[2]
    else:  # crush: posterior and whole-body collapse
        ratios = (1 - loss * (0.75 + 0.25 * u[0]), 1 - loss * (0.8 + 0.2 * u[1]), 1 - loss)
        top = 0.5 + 0.4 * u[2]
    return Fracture(level, kind, int(grade), tuple(float(r) for r in ratios), float(top),
                    bool(cleft))


@dataclasses.dataclass(frozen=True, eq=False)
class Anatomy:
    """A patient's spine, fixed across exams. Lengths in mm, angles in radians."""

    heights: np.ndarray  # (13,) normal posterior body height
    depths: np.ndarray  # (13,) antero-posterior body depth
    discs: np.ndarray  # (12,) disc heights
    wedge: np.ndarray  # (13,) normal anterior/posterior height ratio
    concavity: np.ndarray  # (13,) normal middle/rim height ratio
    jitter: np.ndarray  # (13,) per-level angle variation
    kyphosis: float  # T4-T12 angle
    lordosis: float  # L1-L4 angle
    density: float  # trabecular density relative to a young adult (1.0)
    cortex_mm: float
    bmi: float
    gas: int  # seed of the bowel-gas pattern
    fractures: tuple[Fracture, ...]
    compaction: float  # density of a collapsed body ~ (normal / actual height) ** compaction


def bone_density(t_score: float, osteo_effect: float = 0.13) -> float:
    """Relative trabecular density shown in the image for a BMD T-score."""
    return float(np.clip(1.0 + osteo_effect * t_score, 0.25, 1.6))


def sample_anatomy(rng: np.random.Generator, *, age: float, bmi: float, t_score: float,
                   fractures: tuple[Fracture, ...] = (), osteo_effect: float = 0.13,
                   density_noise: float = 0.03, compaction: float = 1.5) -> Anatomy:
    """Draw a spine for a patient.

    ``osteo_effect`` and ``density_noise`` set how visibly (per T-score unit) and how
    faithfully bone density follows the T-score; ``compaction`` how much denser a collapsed
    body looks: density ~ (normal / actual height) ** compaction (1 = its bone mass kept in
    the smaller volume, 1.5 = plus the sclerosis of healing, 0 = no change)."""
    levels = [f.level for f in fractures]
    if len(set(levels)) != len(levels):
        raise ValueError(f"more than one fracture at the same level: {levels}")
    n = len(LEVELS)
    t = np.linspace(0.0, 1.0, n)
    size = rng.normal(1.0, 0.06)
    heights = size * (17.0 + 10.5 * t**1.3) * rng.normal(1.0, 0.025, n)
    depths = size * (25.0 + 11.0 * t) * rng.normal(1.0, 0.025, n)
    degeneration = np.clip(1.0 - 0.006 * (age - 50.0), 0.7, 1.0)
    discs = (4.0 + 6.0 * np.linspace(0.0, 1.0, n - 1) ** 1.5) * degeneration
    discs *= rng.normal(1.0, 0.08, n - 1)
    wedge = np.where(np.arange(n) < THORACIC, rng.uniform(0.94, 1.0, n), rng.uniform(1.0, 1.06, n))
    density = bone_density(t_score, osteo_effect) * float(np.exp(rng.normal(0.0, density_noise)))
    return Anatomy(
        heights=heights, depths=depths, discs=np.clip(discs, 1.5, None), wedge=wedge,
        concavity=rng.uniform(0.95, 0.99, n), jitter=np.radians(rng.normal(0.0, 1.2, n)),
        kyphosis=math.radians(float(np.clip(rng.normal(34.0 + 0.3 * (age - 65.0), 7.0), 15, 65))),
        lordosis=math.radians(float(np.clip(rng.normal(28.0, 6.0), 12, 45))),
        density=density, cortex_mm=float(1.1 * (0.55 + 0.45 * density) * rng.uniform(0.9, 1.1)),
        bmi=float(bmi), gas=int(rng.integers(2**31)), fractures=tuple(fractures),
        compaction=float(compaction))


@dataclasses.dataclass(frozen=True)
class Acquisition:
    """One exam: image size and the detector/vendor chain."""

    domain: str
    height: int
    width: int
    bits_stored: int
    vendor: str
    spacing_tag: str
    mirror: bool  # anterior on the left
    tilt: float  # radians
    fill: float  # fraction of the height spanned by T4..L4
    center: tuple[float, float]  # (x, y) of the spine, fractions of (width, height)
    photons: float  # relative exposure (quantum noise)
    heel: float  # anode heel gradient, fraction over the height
    scatter: float
    blur_mm: float
    sharpen: float
    compression: float  # dynamic-range compression of large-scale contrast
    brightness: float  # mean display value (0-1) set by exposure control through the gamma
    offset: float  # stored-value pedestal, fraction of full scale


def sample_acquisition(rng: np.random.Generator, domain: str = "xray", *, scale: float = 0.25,
                       vendors: str = "train", dose: float = 1.0, tilt_sd_deg: float = 2.5,
                       field_scale: float = 1.0) -> Acquisition:
    """Draw an exam. Full-size images follow the paper's size ranges; ``scale`` shrinks them.

    The other arguments shift the acquisition without changing which random draws are made
    (so everything else about the exam stays the same): ``vendors`` "other" takes the
    vendors the training cohort never shows, ``dose`` scales the photon count (quantum
    noise ~ 1/sqrt(dose)), ``tilt_sd_deg`` is the spread of the spine's in-plane rotation, and
    ``field_scale`` > 1 magnifies the spine in the frame (tighter collimation: its ends
    may be cut off)."""
    if domain not in DOMAINS:
        raise ConfigError(f"domain must be one of {DOMAINS}, got {domain!r}")
    if not 0.01 <= scale <= 1.0:
        raise ConfigError(f"scale must be in [0.01, 1], got {scale}")
    if domain == "xray":
        h = float(np.clip(rng.normal(2700, 420), 1024, 8383))
        if rng.random() < 0.03:
            h = float(rng.uniform(3500, 8383))  # long-length / high-resolution detectors
        aspect = rng.normal(1.45, 0.1) if rng.random() > 0.08 else rng.uniform(0.85, 1.05)
        w = float(np.clip(h / aspect, 850, 3520))
        table, fill, cx = _XRAY_VENDORS, rng.uniform(0.76, 0.86), rng.uniform(0.42, 0.58)
        mirror, photons, blur = rng.random() < 0.5, rng.uniform(0.6, 1.6), rng.uniform(0.1, 0.25)
        heel, scatter = rng.uniform(-0.2, 0.2), rng.uniform(0.05, 0.2)
    else:
        h = float(np.clip(rng.normal(1080, 60), 912, 1656))
        if rng.random() < 0.05:
            h = float(rng.uniform(1200, 1656))
        w = 378.0 if rng.random() < 0.93 else float(rng.uniform(379, 567))
        table, fill, cx = _VFA_VENDORS, rng.uniform(0.84, 0.9), rng.uniform(0.47, 0.53)
        mirror, photons, blur = rng.random() < 0.9, rng.uniform(0.6, 1.4), rng.uniform(0.7, 1.1)
        heel, scatter = rng.uniform(-0.05, 0.05), rng.uniform(0.0, 0.05)
    if vendors not in VENDOR_SETS:
        raise ConfigError(f"vendors must be one of {VENDOR_SETS}, got {vendors!r}")
    if vendors == "other":
        table = _XRAY_OTHER_VENDORS if domain == "xray" else _VFA_OTHER_VENDORS
    name, bits, tag, sharpen = table[int(rng.integers(len(table)))]
    return Acquisition(
        domain=domain, height=max(32, round(h * scale)), width=max(16, round(w * scale)),
        bits_stored=int(rng.choice(bits)), vendor=name, spacing_tag=tag, mirror=bool(mirror),
        tilt=math.radians(rng.normal(0.0, tilt_sd_deg)), fill=float(fill * field_scale),
        center=(float(cx), float(rng.uniform(0.48, 0.52))), photons=float(photons * dose),
        heel=float(heel), scatter=float(scatter), blur_mm=float(blur),
        sharpen=float(rng.uniform(*sharpen)),
        compression=float(rng.uniform(0.55, 0.85) if domain == "xray" else rng.uniform(0.2, 0.5)),
        brightness=float(rng.uniform(0.25, 0.6)), offset=float(rng.uniform(0.0, 0.05)))


@dataclasses.dataclass(frozen=True, eq=False)
class Body:
    """A vertebral body laid out in the image: outline polygons in pixel (x, y)."""

    level: str
    center: np.ndarray  # (2,) pixels
    angle: float  # body axis from image vertical, radians, in the image's handedness
    outline: np.ndarray  # (N, 2) outer cortex
    inner: np.ndarray  # (N, 2) trabecular core
    posterior: tuple[np.ndarray, ...]  # pedicle, lamina, spinous process polygons
    fracture: Fracture | None
    impaction: np.ndarray | None  # (K, 2) the collapsed endplate of a fractured body
    endplates: np.ndarray | None = None  # (6, 2) the ENDPLATE_POINTS of the outline


@dataclasses.dataclass(frozen=True, eq=False)
class Layout:
    """Everything placed in the image, and the mm <-> pixel map of the spine frame."""

    bodies: tuple[Body, ...]
    ribs: tuple[np.ndarray, ...]  # (K, 2) pixel polylines
    rib_width_px: float
    px_per_mm: float
    affine: np.ndarray  # (2, 3): spine-frame mm -> pixels
    centers_mm: np.ndarray  # (13, 2) body centres in the spine frame


@dataclasses.dataclass(frozen=True)
class VertebraAnnotation:
    """Per-vertebra ground truth; ``box`` is (x0, y0, x1, y1) in image pixels; ``points`` the
    outline's :data:`ENDPLATE_POINTS` (x, y) in image pixels (0.01 px), from whose heights
    ``height_loss`` follows (``1 - min(ratios)`` of the actual over the body's normal heights)."""

    level: str
    box: tuple[int, int, int, int]
    fractured: bool
    fracture_type: str | None
    grade: int
    height_loss: float
    points: tuple[tuple[float, float], ...] = ()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"box": list(self.box), "points": {
            name: list(xy) for name, xy in zip(ENDPLATE_POINTS, self.points)}}


@dataclasses.dataclass(frozen=True, eq=False)
class Phantom:
    """A rendered exam: bone-bright pixels (< 2**bits_stored) and its annotations."""

    pixels: np.ndarray
    bits_stored: int
    pixel_spacing_mm: float
    vendor: str
    spacing_tag: str
    domain: str
    vertebrae: tuple[VertebraAnnotation, ...]


def _body_polygon(depth: float, normal: np.ndarray, actual: np.ndarray, top_share: float,
                  inset: float = 0.0) -> np.ndarray:
    """Outline (posterior->anterior top edge, anterior wall, bottom edge, posterior wall) of a
    body in its own frame (u anterior, v caudal), centred on the rims' mid-height.

    ``normal`` and ``actual`` are (anterior, middle, posterior) heights; ``inset`` shrinks
    the outline by a wall thickness (the trabecular core)."""
    s = np.linspace(-1.0, 1.0, _SHAPE_POINTS)

    def profile(h: np.ndarray) -> np.ndarray:  # quadratic through posterior, middle, anterior
        a, m, p = h
        return m + (a - p) / 2 * s + ((a + p) / 2 - m) * s**2

    h0, h = profile(normal), profile(actual)
    top = -h0 / 2 + top_share * (h0 - h) + inset
    bottom = h0 / 2 - (1.0 - top_share) * (h0 - h) - inset
    u = s * (depth / 2 - inset)
    wall = np.linspace(0.0, 1.0, _WALL_POINTS + 2)[1:-1]
    waist = 0.04 * depth * np.sin(np.pi * wall)
    anterior = np.stack([u[-1] - waist, top[-1] + (bottom[-1] - top[-1]) * wall], 1)
    posterior = np.stack([u[0] + 0.3 * waist, bottom[0] + (top[0] - bottom[0]) * wall], 1)
    pts = np.concatenate([np.stack([u, top], 1), anterior, np.stack([u[::-1], bottom[::-1]], 1),
                          posterior])
    pts[:, 1] -= (top[0] + top[-1] + bottom[0] + bottom[-1]) / 4
    return pts


def _endplate_points(depth: float, normal: np.ndarray, actual: np.ndarray, top_share: float
                     ) -> np.ndarray:
    """The :data:`ENDPLATE_POINTS` of :func:`_body_polygon`'s outline (no inset), body frame:
    its corners (u = +-depth/2) and the endplates' middle (u = 0), in the same centring."""
    s = np.array([1.0, 0.0, -1.0])  # anterior, middle, posterior

    def profile(h: np.ndarray) -> np.ndarray:
        a, m, p = h
        return m + (a - p) / 2 * s + ((a + p) / 2 - m) * s**2

    h0, h = profile(normal), profile(actual)
    top = -h0 / 2 + top_share * (h0 - h)
    bottom = h0 / 2 - (1.0 - top_share) * (h0 - h)
    shift = (top[0] + top[-1] + bottom[0] + bottom[-1]) / 4
    u = s * (depth / 2)
    return np.concatenate([np.stack([u, top - shift], 1), np.stack([u, bottom - shift], 1)])


def _posterior_elements(depth: float, height: float, lumbar: bool) -> tuple[np.ndarray, ...]:
    """Pedicle, lamina/articular pillar and spinous process in the body frame (mm)."""
    back = -depth / 2
    x0 = back - 0.36 * depth  # pedicle ends, lamina starts
    x1 = x0 - 0.22 * depth  # lamina ends, spinous process starts
    pedicle = np.array([[back + 1, -0.42 * height], [x0, -0.36 * height],
                        [x0, 0.02 * height], [back + 1, -0.02 * height]])
    lamina = np.array([[x0 + 1, -0.6 * height], [x0 - 3, -0.62 * height], [x1, -0.3 * height],
                       [x1, 0.45 * height], [x0 - 2, 0.62 * height], [x0 + 1, 0.5 * height]])
    if lumbar:  # broad, nearly horizontal
        spinous = np.array([[x1 + 1, -0.22 * height], [x1 - 0.8 * depth, -0.12 * height],
                            [x1 - 0.85 * depth, 0.18 * height], [x1 + 1, 0.3 * height]])
    else:  # long, sloping caudally
        tip = np.array([x1 - 0.7 * depth, 0.95 * height])
        spinous = np.array([[x1 + 1, -0.2 * height], tip + [-1.0, -0.08 * height],
                            tip + [1.0, 0.06 * height], [x1 + 1, 0.3 * height]])
    return pedicle, lamina, spinous


def _frame_points(pts: np.ndarray, center: np.ndarray, angle: float) -> np.ndarray:
    """Body-frame (u anterior, v caudal) points -> spine frame, body axis at ``angle``."""
    c, s = math.cos(angle), math.sin(angle)
    return np.stack([center[0] + pts[:, 0] * c + pts[:, 1] * s,
                     center[1] - pts[:, 0] * s + pts[:, 1] * c], 1)


def _apply(affine: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ affine[:, :2].T + affine[:, 2]


def layout(anatomy: Anatomy, acq: Acquisition) -> Layout:
    """Place the bodies, posterior elements and ribs in the image (pixel coordinates)."""
    n = len(LEVELS)
    fractures = {f.level: f for f in anatomy.fractures}
    i = np.arange(n, dtype=np.float64)
    thoracic = anatomy.kyphosis * ((i / (THORACIC - 1)) - 0.5)
    lumbar = anatomy.kyphosis / 2 - anatomy.lordosis * (i - (THORACIC - 1)) / (n - THORACIC)
    axis = np.where(i < THORACIC, thoracic, lumbar) + anatomy.jitter
    shapes, kink = [], 0.0
    for k, level in enumerate(LEVELS):
        d, hp = anatomy.depths[k], anatomy.heights[k]
        ha = hp * anatomy.wedge[k]
        normal = np.array([ha, min(ha, hp) * anatomy.concavity[k], hp])
        f = fractures.get(level)
        actual = normal * np.asarray(f.ratios) if f else normal
        share = f.top_share if f else 0.5
        extra = ((normal[0] - actual[0]) - (normal[2] - actual[2])) / d  # anterior - posterior
        axis[k] += kink + math.atan(share * extra)
        kink += math.atan(extra)
        shapes.append((normal, actual, share))
    centers = np.zeros((n, 2))
    rim = [0.5 * (a[0] + a[2]) for _, a, _ in shapes]
    for k in range(n - 1):
        step = rim[k] / 2 + anatomy.discs[k] + rim[k + 1] / 2
        mid = 0.5 * (axis[k] + axis[k + 1])
        centers[k + 1] = centers[k] + step * np.array([math.sin(mid), math.cos(mid)])

    outlines = [_frame_points(_body_polygon(anatomy.depths[k], *shapes[k]), centers[k], axis[k])
                for k in range(n)]
    # Spine frame -> pixels: rotate so T4-L4 is vertical plus tilt, scale to fill, place.
    chord = centers[-1] - centers[0]
    rot = -math.atan2(chord[0], chord[1]) + acq.tilt
    c, s = math.cos(rot), math.sin(rot)
    r = np.array([[c, s], [-s, c]])  # adds ``rot`` to every direction's angle from vertical
    allpts = np.concatenate(outlines) @ r.T
    extent = allpts[:, 1].max() - allpts[:, 1].min()
    ppm = acq.fill * acq.height / extent
    sign = -1.0 if acq.mirror else 1.0
    lin = np.diag([sign * ppm, ppm]) @ r
    mid_mm = 0.5 * (allpts.min(0) + allpts.max(0))  # in the rotated frame
    target = np.array([acq.center[0] * acq.width, acq.center[1] * acq.height])
    affine = np.concatenate([lin, (target - np.diag([sign * ppm, ppm]) @ mid_mm)[:, None]], 1)

    bodies = []
    for k, level in enumerate(LEVELS):
        d, (normal, actual, share) = anatomy.depths[k], shapes[k]
        inner = _body_polygon(d, normal, actual, share, inset=anatomy.cortex_mm)
        post = _posterior_elements(d, float(normal[2]), lumbar=k >= THORACIC)
        to_px = lambda p, k=k: _apply(affine, _frame_points(p, centers[k], axis[k]))  # noqa: E731
        angle = sign * (axis[k] + rot)
        impaction = None
        if (f := fractures.get(level)) is not None:  # the endplate taking most of the collapse
            m, bottom = _SHAPE_POINTS, _SHAPE_POINTS + _WALL_POINTS
            impaction = to_px(inner[:m] if f.top_share >= 0.5 else inner[bottom:bottom + m])
        endplates = to_px(_endplate_points(d, normal, actual, share))
        bodies.append(Body(level, _apply(affine, centers[k][None])[0], angle,
                           _apply(affine, outlines[k]), to_px(inner), tuple(to_px(p) for p in post),
                           f, impaction, endplates))
    ribs = []
    t = np.linspace(0.0, 1.0, 24)[:, None]
    for k in range(THORACIC):
        d, h = anatomy.depths[k], anatomy.heights[k]
        for side, (dx, dy, mag) in enumerate(((0.0, 0.0, 1.0), (5.0, 7.0, 1.07))):
            p = np.array([[-0.5 * d - 0.3 * d, -0.1 * h], [-0.5 * d - 55.0, 25.0],
                          [40.0, 95.0], [150.0 + 10 * side, 120.0]]) * mag + [dx, dy]
            bez = ((1 - t) ** 3 * p[0] + 3 * (1 - t) ** 2 * t * p[1] + 3 * (1 - t) * t**2 * p[2]
                   + t**3 * p[3])
            ribs.append(_apply(affine, _frame_points(bez, centers[k], axis[k] * 0.5)))
    return Layout(tuple(bodies), tuple(ribs), 9.0 * ppm, ppm, affine, centers)


def _mask(shape: tuple[int, int], polygons) -> np.ndarray:
    """Anti-aliased coverage (float32, 0-1) of the union of ``polygons`` (pixel x, y)."""
    canvas = np.zeros(shape, np.uint8)
    for p in polygons:  # one call each: a multi-contour fill would cut overlaps out
        cv2.fillPoly(canvas, [np.round(p * 16).astype(np.int32)], 255, lineType=cv2.LINE_AA,
                     shift=4)
    return canvas.astype(np.float32) * np.float32(1 / 255)


def _stroke(shape: tuple[int, int], lines, width_px: float) -> np.ndarray:
    """Anti-aliased coverage (float32, 0-1) of open polylines ``width_px`` wide."""
    canvas = np.zeros(shape, np.uint8)
    cv2.polylines(canvas, [np.round(p * 16).astype(np.int32) for p in lines], False, 255,
                  thickness=max(1, round(width_px)), lineType=cv2.LINE_AA, shift=4)
    return canvas.astype(np.float32) * np.float32(1 / 255)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: tuple[int, int]
                  ) -> np.ndarray:
    """Low-frequency random field (unit-ish amplitude), bicubic from a coarse grid."""
    grid = rng.standard_normal((cells[0] + 3, cells[1] + 3)).astype(np.float32)
    size = (shape[1] * (cells[1] + 3) // cells[1], shape[0] * (cells[0] + 3) // cells[0])
    big = cv2.resize(grid, size, interpolation=cv2.INTER_CUBIC)
    oy, ox = (big.shape[0] - shape[0]) // 2, (big.shape[1] - shape[1]) // 2
    return big[oy:oy + shape[0], ox:ox + shape[1]]


def _blur(img: np.ndarray, sigma_x: float, sigma_y: float | None = None) -> np.ndarray:
    sigma_y = sigma_x if sigma_y is None else sigma_y
    if max(sigma_x, sigma_y) < 0.2:
        return img
    return cv2.GaussianBlur(img, (0, 0), sigmaX=max(sigma_x, 0.01), sigmaY=max(sigma_y, 0.01),
                            borderType=cv2.BORDER_REFLECT)


def _soft_tissue(anatomy: Anatomy, acq: Acquisition, lay: Layout, rng: np.random.Generator
                 ) -> np.ndarray:
    """Low-resolution log-attenuation of soft tissue, lungs, heart, bowel gas and air."""
    f = 8
    lh, lw = max(8, acq.height // f), max(8, acq.width // f)
    ys, xs = (np.arange(lh) + 0.5) * acq.height / lh, (np.arange(lw) + 0.5) * acq.width / lw
    inv = np.linalg.inv(lay.affine[:, :2])
    px = np.stack(np.meshgrid(xs, ys), -1) - lay.affine[:, 2]
    mm = px @ inv.T  # spine frame: x anterior, y caudal
    ym = mm[..., 1]
    cy, cx = lay.centers_mm[:, 1], lay.centers_mm[:, 0]
    order = np.argsort(cy)
    a = mm[..., 0] - np.interp(ym, cy[order], cx[order])  # anterior distance from body centres
    depth = np.interp(ym, cy[order], anatomy.depths[order])
    fat = 1.0 + 0.05 * (anatomy.bmi - 24.0)
    y_t10, y_l1 = cy[6], cy[9]
    back = -(depth / 2 + 95.0 + 15.0 * fat)
    front = depth / 2 + np.where(ym < y_l1, 130.0, 170.0) + 25.0 * fat
    body = (a > back) & (a < front)
    diaphragm = y_l1 - (y_l1 - y_t10) * np.clip((a - back) / (front - back) * 1.6, 0.0, 1.0) ** 0.6
    lung = body & (ym < diaphragm) & (a > back + 15.0) & (a < front - 20.0)
    heart = body & (ym < diaphragm) & (ym > cy[3]) & (a > depth / 2 + 25.0)
    field = body * (1.6 + 0.05 * (anatomy.bmi - 24.0)) - 0.75 * lung + 0.2 * heart
    gas_rng = np.random.default_rng(anatomy.gas)
    gas = np.zeros_like(field)
    for _ in range(int(gas_rng.integers(2, 9))):
        gy = gas_rng.uniform(y_l1 - 10.0, cy[-1] + 40.0)
        ga = gas_rng.uniform(-10.0, 120.0)
        r = gas_rng.uniform(8.0, 25.0)
        gas += np.exp(-((a - ga) ** 2 + (ym - gy) ** 2) / (2 * r * r))
    field -= 0.35 * np.clip(gas, 0, 1) * body
    sigma = 6.0 * lay.px_per_mm * lh / acq.height
    field = _blur(field.astype(np.float32), sigma)
    field += 0.08 * _smooth_noise(rng, field.shape, (5, 4))
    return cv2.resize(field, (acq.width, acq.height), interpolation=cv2.INTER_LINEAR)


def render(anatomy: Anatomy, acq: Acquisition, rng: np.random.Generator) -> Phantom:
    """Render one exam of ``anatomy``; ``rng`` drives the noise and texture."""
    lay = layout(anatomy, acq)
    atten = _soft_tissue(anatomy, acq, lay, rng)
    if acq.domain == "vfa":  # dual energy suppresses soft-tissue contrast
        atten = 0.25 * atten + 1.0
    atten += _bone(anatomy, acq, lay, rng)
    log = _detector(atten, anatomy, acq, lay.px_per_mm, rng)
    pixels = _vendor_look(log, acq, lay.px_per_mm)
    annotations = tuple(_annotate(b, acq.height, acq.width) for b in lay.bodies)
    return Phantom(pixels, acq.bits_stored, 1.0 / lay.px_per_mm, acq.vendor, acq.spacing_tag,
                   acq.domain, annotations)


def _bone(anatomy: Anatomy, acq: Acquisition, lay: Layout, rng: np.random.Generator) -> np.ndarray:
    """Log-attenuation added by vertebral bodies (cortex, trabecular core), posterior
    elements and ribs, scaled by the patient's bone density."""
    h, w, ppm = acq.height, acq.width, lay.px_per_mm
    shell = _mask((h, w), [b.outline for b in lay.bodies])
    core = _mask((h, w), [b.inner for b in lay.bodies])
    post = _mask((h, w), [p for b in lay.bodies for p in b.posterior])
    ring = np.clip(shell - core, 0.0, None)
    ribs = _stroke((h, w), lay.ribs, lay.rib_width_px)
    ribs -= 0.6 * _blur(ribs, 0.25 * lay.rib_width_px) * ribs  # cortex brighter than medulla
    thick = _blur(core, 6.0 * ppm)  # longer path through the middle of the oval body
    thick *= 0.45
    thick += 0.65
    for b in lay.bodies:
        if b.fracture is None:
            continue
        # Collapsed trabeculae: the same bone in less height, densest at the broken endplate.
        denser = (3.0 / sum(b.fracture.ratios)) ** anatomy.compaction - 1.0
        body = _mask((h, w), [b.inner])
        band = _stroke((h, w), [b.impaction], 2.5 * ppm)
        thick *= 1.0 + denser * body * (1.0 + 1.75 * anatomy.compaction * band)
        if b.fracture.cleft:  # gas in the cleft, parallel to the broken endplate
            line = b.impaction[2:-2] + 0.4 * (b.center - b.impaction.mean(0))
            thick *= 1.0 - 0.8 * body * _stroke((h, w), [line], 1.8 * ppm)

    dens = anatomy.density
    loss = max(0.0, 1.0 - dens)
    sigma = max(0.35, 0.5 * ppm)  # ~0.5 mm trabeculae, at least a third of a pixel
    tex = _blur(rng.standard_normal((h, w), dtype=np.float32), sigma, sigma * (1.0 + 2.5 * loss))
    tex *= (0.12 + 0.1 * loss) / max(float(tex.std()), 1e-6)  # coarse vertical striation
    tex += 1.0
    bone = core * thick
    bone *= tex
    bone *= 0.55 * dens
    bone += (0.75 * (0.45 + 0.55 * dens) * (anatomy.cortex_mm / 1.1) ** 0.5) * ring
    bone += (0.35 * (0.6 + 0.4 * dens)) * post * (0.5 + 0.5 * tex)
    bone += ((0.3 if acq.domain == "vfa" else 0.15) * (0.6 + 0.4 * dens)) * ribs
    return bone


def _detector(atten: np.ndarray, anatomy: Anatomy, acq: Acquisition, ppm: float,
              rng: np.random.Generator) -> np.ndarray:
    """Transmitted intensity with anode heel, low-frequency scatter, quantum and electronic
    noise and blur; returns the log image (bone bright)."""
    h, w = atten.shape
    ramp = 1.0 + acq.heel * np.linspace(-0.5, 0.5, h, dtype=np.float32)[:, None]
    intensity = np.exp(-atten)
    intensity *= ramp
    small = cv2.resize(intensity, (max(4, w // 16), max(4, h // 16)), interpolation=cv2.INTER_AREA)
    scatter = acq.scatter * (1.0 + 0.03 * (anatomy.bmi - 24.0))
    intensity += scatter * cv2.resize(_blur(small, 2.0), (w, h), interpolation=cv2.INTER_LINEAR)
    quanta = (2.0e3 if acq.domain == "vfa" else 2.0e4) * acq.photons / ppm**2  # per pixel
    noise = np.sqrt(intensity * (1.0 / quanta) + 1e-6)
    noise *= rng.standard_normal((h, w), dtype=np.float32)
    intensity += noise
    np.clip(intensity, 1e-4, None, out=intensity)
    log = -np.log(intensity)
    return _blur(log, acq.blur_mm * ppm)


def _vendor_look(log: np.ndarray, acq: Acquisition, ppm: float) -> np.ndarray:
    """Vendor processing: dynamic-range compression, edge enhancement, windowing on robust
    percentiles, gamma, automatic exposure control and quantisation to ``bits_stored``."""
    h, w = log.shape
    f = 8
    small = cv2.resize(log, (max(4, w // f), max(4, h // f)), interpolation=cv2.INTER_AREA)
    background = cv2.resize(_blur(small, 20.0 * ppm / f), (w, h),
                            interpolation=cv2.INTER_LINEAR)
    log -= acq.compression * background
    if acq.sharpen > 0:
        detail = log - _blur(log, 0.004 * max(h, w))
        log += acq.sharpen * detail
    sample = log[:: max(1, h // 128), :: max(1, w // 128)]
    lo, hi = np.percentile(sample, (0.5, 99.8))
    lo, hi = lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo)
    v = log - lo
    v *= 1.0 / max(hi - lo, 1e-6)
    np.clip(v, 0.0, 1.0, out=v)
    v **= _gamma_for_mean(v[:: max(1, h // 160), :: max(1, w // 160)], acq.brightness)
    v = acq.offset + (1.0 - acq.offset) * v
    top = 2**acq.bits_stored - 1
    return np.rint(np.clip(v, 0.0, 1.0) * top).astype(np.uint16)


def _gamma_for_mean(v: np.ndarray, target: float) -> float:
    """The exponent g with mean(v**g) = target (bisection on log g), within [1/3, 3]."""
    lo, hi = math.log(1 / 3), math.log(3.0)
    v = v.astype(np.float64)
    for _ in range(20):
        mid = 0.5 * (lo + hi)
        if (v ** math.exp(mid)).mean() > target:
            lo = mid
        else:
            hi = mid
    return math.exp(0.5 * (lo + hi))


def _annotate(body: Body, h: int, w: int) -> VertebraAnnotation:
    lo, hi = body.outline.min(0), body.outline.max(0)
    box = (max(0, math.floor(lo[0])), max(0, math.floor(lo[1])),
           min(w - 1, math.ceil(hi[0])), min(h - 1, math.ceil(hi[1])))
    f = body.fracture
    points = () if body.endplates is None else tuple(
        (round(float(x), 2), round(float(y), 2)) for x, y in body.endplates)
    return VertebraAnnotation(body.level, box, f is not None, f.kind if f else None,
                              f.grade if f else 0, round(f.loss, 4) if f else 0.0, points)
