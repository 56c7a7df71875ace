"""Synthetic VERTE-X cohort: patients, labels, follow-up and lateral spine images on disk.

Real patient data cannot ship, so this makes every part of the product runnable. Labels
come from a latent clinical model; images show them only through what a reader sees
(:mod:`vertex_jax.synthetic.phantom`: vertebral height loss, bone density, cortex).

Latent model (per patient; ``male`` is 0/1, ``N`` a standard normal draw)::

    age ~ N(68, 9) clipped to [50, 90];  P(female) = 0.6;  BMI ~ N(24, 3.5) clipped to [15, 40]
    T-score = -2.2 - 0.035 (age - 65) + 0.8 male + 0.09 (BMI - 24) + 1.1 N
    osteoporosis = T-score <= -2.5                                   (prevalence ~34%)
    logit P(pVF) = -1.0 + 0.6 (-T-score - 2) + 0.3 (age - 70) / 10  (prevalence ~27%)

Age, sex and BMI alone predict osteoporosis with an AUROC of about 0.72. A prevalent
fracture involves 1-3 vertebrae (a second with chance ``multiple_fractures`` at T-score
-2.5, more when lower), mostly T11-L2 and T6-T8; Genant type wedge/biconcave/crush with
probabilities 0.6/0.25/0.15 and grade 1/2/3 with ``grade_probs`` from ``min_grade`` up.
The defaults (moderate and severe fractures only, ``min_grade=2``) let a small CNN learn
from a few hundred images on a CPU; ``min_grade=1`` adds the mild fractures that make
real cohorts hard.

Incident fracture follows a proportional-hazards model with constant baseline hazard
``h0 = 0.014`` per year and **true log-hazard coefficients**::

    log h(t) = log h0 - 0.5 (T-score + 2) + 0.9 pVF + 0.3 (age - 70) / 10

i.e. a hazard ratio of 1.65 per T-score unit lost, 2.46 for a prevalent fracture and 1.35
per decade. Follow-up ends at the event, at administrative censoring (10 years minus a
uniform 0-2 year staggered entry) or at drop-out (exponential, 0.04 per year),
whichever comes first. These numbers are written to ``truth.json``.

Output folder::

    images/<image_id>.dcm|png   bone-bright pixels; DICOM MONOCHROME1/2, several lossless codecs
    manifest.csv                one row per image: vertex_jax.data.manifest schema + truth
    annotations.json            image_id -> one record per vertebra (level, box, fracture, endplate points)
    followup.csv                patient_id, followup_years, incident_fracture
    truth.json                  seed, version, settings, model coefficients, observed rates

Every patient draws from its own streams, ``SeedSequence(seed, spawn_key=(index, stream))``,
so a cohort does not depend on the worker count, and patient ``i`` is the same in every
cohort size. Run ``python -m vertex_jax.synthetic --help``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import dataclasses
import io
import json
import math
import multiprocessing
import os
import time
from pathlib import Path

import cv2
import numpy as np

from vertex_jax.cli import add_verbosity
from vertex_jax.files import write_bytes
from vertex_jax.processes import worker_initializer
from vertex_jax.synthetic import phantom
from vertex_jax.synthetic.dicom_write import write_dicom
from vertex_jax.errors import ConfigError

VERSION = "1.0"
T_SCORE_MODEL = {"intercept": -2.2, "age_minus_65": -0.035, "male": 0.8, "bmi_minus_24": 0.09,
                 "noise_sd": 1.1, "osteoporosis_threshold": -2.5}
PVF_MODEL = {"intercept": -1.0, "minus_t_score_minus_2": 0.6, "age_minus_70_per_decade": 0.3}
HAZARD = {"baseline_per_year": 0.014,
          "log_hazard": {"t_score_plus_2": -0.5, "pvf": 0.9, "age_minus_70_per_decade": 0.3},
          "administrative_years": 10.0, "staggered_entry_years": 2.0, "dropout_per_year": 0.04}
LEVEL_WEIGHTS = dict(zip(phantom.LEVELS, (2, 3, 7, 10, 9, 6, 5, 10, 16, 15, 8, 5, 4)))
TYPE_PROBS = {"wedge": 0.6, "biconcave": 0.25, "crush": 0.15}
# File format tokens: PNG, or DICOM with one of the writer's lossless encodings.
FORMATS = {"png": None, "dcm": "none", "rle": "rle", "jpegls": "jpegls", "jpeg2000": "jpeg2000",
           "jpeg-lossless": "jpeg-lossless"}
MIX = {"png": 0.2, "dcm": 0.35, "rle": 0.05, "jpegls": 0.15, "jpeg2000": 0.1, "jpeg-lossless": 0.15}
MANIFEST_COLUMNS = (
    "image_id", "patient_id", "path", "domain", "pvf", "osteo", "age", "sex", "bmi",
    "exam", "t_score", "fracture_levels", "fracture_type", "fracture_grades", "genant_grade",
    "vendor", "format", "bits_stored", "photometric", "compression", "height", "width",
    "pixel_spacing_mm")
_CLINICAL, _ANATOMY, _FORMAT, _EXAM = 0, 1, 2, 3  # per-patient RNG streams
_MONTAGE = 1 << 30  # first spawn key of the figure's streams, beyond any patient index


@dataclasses.dataclass(frozen=True)
class CohortConfig:
    """Difficulty and data-quality knobs (``generate_cohort(**difficulty)``, CLI flags).

    osteo_effect: change of the image's relative trabecular density per T-score unit.
    density_noise: log-normal scatter of image density not explained by the T-score.
    compaction: density of a collapsed body ~ (normal / actual height) ** compaction:
      1 keeps its bone mass in the smaller volume, 1.5 adds the sclerosis of healing, 0 none.
    multiple_fractures: chance of a second fractured level at T-score -2.5 (higher when
      lower); a third follows with half that chance.
    cleft_fraction: share of fractured bodies with an intravertebral cleft (vacuum sign).
    min_grade: smallest Genant grade drawn for a prevalent fracture (1-3).
    grade_probs: relative frequency of grades 1, 2, 3 (restricted to >= min_grade).
    repeat_fraction: share of patients with a second exam.
    missing_clinical: share of blank values, independently for age, sex and BMI.
    missing_label: share of blank values, independently for pvf and osteo.
    monochrome1_fraction: share of DICOM files stored as MONOCHROME1.
    age_mean: mean age of the population (years; drawn N(age_mean, age_sd), clipped to [50, 90]).
    age_sd: spread of the population's age (years).
    female_fraction: share of women.
    t_score_offset: added to every T-score (negative: a more osteoporotic population).
    pvf_offset: added to the logit of a prevalent fracture (another fracture prevalence).
    vendors: "train" (the training cohort's vendors) or "other" (vendors it never shows).
    dose: relative exposure; quantum noise grows as 1 / sqrt(dose).
    tilt_sd_deg: spread of the spine's in-plane rotation (degrees).
    field_scale: magnification of the spine in the frame; above 1 its ends may be cut off.
    id_prefix: put before every patient and image id (tells one cohort's cases from another's).
    """

    osteo_effect: float = 0.13
    density_noise: float = 0.03
    compaction: float = 1.5
    multiple_fractures: float = 0.6
    cleft_fraction: float = 0.3
    min_grade: int = 2
    grade_probs: tuple[float, float, float] = (0.3, 0.4, 0.3)
    repeat_fraction: float = 0.1
    missing_clinical: float = 0.03
    missing_label: float = 0.02
    monochrome1_fraction: float = 0.3
    age_mean: float = 68.0
    age_sd: float = 9.0
    female_fraction: float = 0.6
    t_score_offset: float = 0.0
    pvf_offset: float = 0.0
    vendors: str = "train"
    dose: float = 1.0
    tilt_sd_deg: float = 2.5
    field_scale: float = 1.0
    id_prefix: str = ""

    def __post_init__(self) -> None:
        if self.min_grade not in (1, 2, 3):
            raise ConfigError(f"min_grade must be 1, 2 or 3, got {self.min_grade}")
        probs = tuple(float(p) for p in self.grade_probs)
        if len(probs) != 3 or min(probs) < 0 or sum(probs[self.min_grade - 1:]) <= 0:
            raise ConfigError(f"grade_probs must be 3 non-negative weights with some mass at "
                             f">= min_grade, got {self.grade_probs}")
        object.__setattr__(self, "grade_probs", probs)
        for name in ("multiple_fractures", "cleft_fraction", "repeat_fraction",
                     "missing_clinical", "missing_label", "monochrome1_fraction", "female_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("osteo_effect", "density_noise", "compaction", "age_sd", "tilt_sd_deg"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.vendors not in phantom.VENDOR_SETS:
            raise ConfigError(f"vendors must be one of {phantom.VENDOR_SETS}, got {self.vendors!r}")
        if not (self.dose > 0 and 0.5 <= self.field_scale <= 1.5):
            raise ConfigError(f"dose must be > 0 and field_scale in [0.5, 1.5], got {self.dose}, "
                              f"{self.field_scale}")

    @classmethod
    def from_kwargs(cls, **difficulty) -> "CohortConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        if unknown := sorted(set(difficulty) - names):
            raise TypeError(f"unknown cohort option(s) {unknown}; expected some of {sorted(names)}")
        return cls(**difficulty)


@dataclasses.dataclass(frozen=True)
class Patient:
    """Ground truth of one patient and what the records show (None = blank)."""

    index: int
    patient_id: str
    age: float
    female: bool
    bmi: float
    t_score: float
    fractures: tuple[phantom.Fracture, ...]
    followup_years: float
    incident_fracture: bool
    exams: int
    recorded_age: float | None
    recorded_sex: str | None
    recorded_bmi: float | None
    pvf_label: int | None
    osteo_label: int | None

    @property
    def pvf(self) -> bool:
        return bool(self.fractures)

    @property
    def osteo(self) -> bool:
        return self.t_score <= T_SCORE_MODEL["osteoporosis_threshold"]


def _rng(seed: int, *key: int) -> np.random.Generator:
    """Stream ``key`` (patient index, stream[, exam]) of ``SeedSequence(seed)``: the same as
    ``SeedSequence(seed).spawn(...)[index].spawn(...)[stream]...``."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def simulate_patient(index: int, seed: int = 0, config: CohortConfig = CohortConfig()) -> Patient:
    """Draw patient ``index``'s clinical values, labels, fractures and follow-up."""
    rng = _rng(seed, index, _CLINICAL)
    age = float(np.clip(rng.normal(config.age_mean, config.age_sd), 50.0, 90.0))
    female = bool(rng.random() < config.female_fraction)
    bmi = float(np.clip(rng.normal(24.0, 3.5), 15.0, 40.0))
    m = T_SCORE_MODEL
    t_score = float(m["intercept"] + m["age_minus_65"] * (age - 65.0) + m["male"] * (not female)
                    + m["bmi_minus_24"] * (bmi - 24.0) + m["noise_sd"] * rng.standard_normal()
                    + config.t_score_offset)
    p = PVF_MODEL
    logit = (config.pvf_offset + p["intercept"] + p["minus_t_score_minus_2"] * (-t_score - 2.0)
             + p["age_minus_70_per_decade"] * (age - 70.0) / 10.0)
    fractures: tuple[phantom.Fracture, ...] = ()
    if rng.random() < _sigmoid(logit):
        fractures = _draw_fractures(rng, t_score, config)

    hz = HAZARD
    coef = hz["log_hazard"]
    rate = hz["baseline_per_year"] * math.exp(
        coef["t_score_plus_2"] * (t_score + 2.0) + coef["pvf"] * bool(fractures)
        + coef["age_minus_70_per_decade"] * (age - 70.0) / 10.0)
    event = float(rng.exponential(1.0 / rate))
    censor = min(hz["administrative_years"] - rng.uniform(0.0, hz["staggered_entry_years"]),
                 float(rng.exponential(1.0 / hz["dropout_per_year"])))
    blank = rng.random(5)
    osteo = t_score <= m["osteoporosis_threshold"]
    return Patient(
        index=index, patient_id=f"{config.id_prefix}P{index:06d}", age=age, female=female, bmi=bmi, t_score=t_score,
        fractures=fractures, followup_years=min(event, censor), incident_fracture=event <= censor,
        exams=1 + int(rng.random() < config.repeat_fraction),
        recorded_age=None if blank[0] < config.missing_clinical else round(age, 1),
        recorded_sex=None if blank[1] < config.missing_clinical else ("F" if female else "M"),
        recorded_bmi=None if blank[2] < config.missing_clinical else round(bmi, 1),
        pvf_label=None if blank[3] < config.missing_label else int(bool(fractures)),
        osteo_label=None if blank[4] < config.missing_label else int(osteo))


def _draw_fractures(rng: np.random.Generator, t_score: float, config: CohortConfig
                    ) -> tuple[phantom.Fracture, ...]:
    """1-3 fractured levels (more with lower T-score) with Genant type and grade."""
    base = config.multiple_fractures
    extra = base  # chance of each further fracture, rising as the T-score falls
    if 0.0 < base < 1.0:
        extra = _sigmoid(math.log(base / (1.0 - base)) - 0.5 * (t_score + 2.5))
    count = 1 + int(rng.random() < extra) + int(rng.random() < extra * 0.5)
    weights = np.array(list(LEVEL_WEIGHTS.values()), np.float64)
    levels = rng.choice(phantom.LEVELS, size=count, replace=False, p=weights / weights.sum())
    grades = np.array(config.grade_probs)
    grades[: config.min_grade - 1] = 0.0
    out = []
    for level in sorted(levels, key=phantom.LEVELS.index):
        kind = str(rng.choice(list(TYPE_PROBS), p=list(TYPE_PROBS.values())))
        grade = int(rng.choice([1, 2, 3], p=grades / grades.sum()))
        cleft = bool(rng.random() < config.cleft_fraction)
        out.append(phantom.make_fracture(rng, str(level), kind, grade, cleft))
    return tuple(out)


def simulate_patients(num_patients: int, *, seed: int = 0, **difficulty) -> list[Patient]:
    """The tabular part of a cohort (no images): patients ``0 .. num_patients-1``."""
    config = CohortConfig.from_kwargs(**difficulty)
    return [simulate_patient(i, seed, config) for i in range(num_patients)]


def render_exam(patient: Patient, exam: int, *, domain: str = "xray", scale: float = 0.25,
                seed: int = 0, config: CohortConfig = CohortConfig()) -> phantom.Phantom:
    """Render exam ``exam`` of ``patient``; the spine is the same in every exam."""
    anatomy = phantom.sample_anatomy(
        _rng(seed, patient.index, _ANATOMY), age=patient.age, bmi=patient.bmi,
        t_score=patient.t_score, fractures=patient.fractures, osteo_effect=config.osteo_effect,
        density_noise=config.density_noise, compaction=config.compaction)
    rng = _rng(seed, patient.index, _EXAM, exam)
    acquisition = phantom.sample_acquisition(
        rng, domain, scale=scale, vendors=config.vendors, dose=config.dose,
        tilt_sd_deg=config.tilt_sd_deg, field_scale=config.field_scale)
    return phantom.render(anatomy, acquisition, rng)


def parse_formats(formats: str) -> dict[str, float]:
    """``"mix"`` or a comma-separated list of FORMATS tokens -> {token: weight}."""
    if formats == "mix":
        return dict(MIX)
    tokens = [t.strip() for t in formats.split(",") if t.strip()]
    if not tokens or any(t not in FORMATS for t in tokens):
        raise ConfigError(f"formats must be 'mix' or a comma-separated list of {list(FORMATS)}, "
                         f"got {formats!r}")
    return {t: 1.0 for t in dict.fromkeys(tokens)}


@dataclasses.dataclass(frozen=True)
class _Job:
    patient: Patient
    exam: int
    out_dir: str
    domain: str
    scale: float
    seed: int
    formats: tuple[tuple[str, float], ...]
    config: CohortConfig


def _write_exam(job: _Job) -> tuple[dict, list[dict]]:
    """Render and write one image; returns its manifest row and annotations."""
    patient, config = job.patient, job.config
    ph = render_exam(patient, job.exam, domain=job.domain, scale=job.scale, seed=job.seed,
                     config=config)
    rng = _rng(job.seed, patient.index, _FORMAT, job.exam)
    names, weights = zip(*job.formats)
    token = str(rng.choice(names, p=np.array(weights) / sum(weights)))
    mono1 = rng.random() < config.monochrome1_fraction
    image_id = f"{patient.patient_id}_{job.exam}"
    compression = FORMATS[token]
    rel = f"images/{image_id}.{'png' if compression is None else 'dcm'}"
    path = Path(job.out_dir) / rel
    photometric = ""
    if compression is None:
        dtype = np.uint8 if ph.bits_stored <= 8 else np.uint16
        ok, data = cv2.imencode(".png", ph.pixels.astype(dtype))
        if not ok:
            raise RuntimeError(f"PNG encoding failed for {path}")
        write_bytes(path, data.tobytes())
    else:
        photometric = "MONOCHROME1" if mono1 else "MONOCHROME2"
        top = 2**ph.bits_stored - 1
        write_dicom(path, ph.pixels, bits_stored=ph.bits_stored, photometric=photometric,
                    compression=compression, pixel_spacing_mm=(ph.pixel_spacing_mm,) * 2,
                    pixel_spacing_tag=ph.spacing_tag, patient_id=patient.patient_id,
                    patient_sex=patient.recorded_sex, patient_age_years=patient.recorded_age,
                    modality="DX" if job.domain == "xray" else "BMD", manufacturer=ph.vendor,
                    window=(top / 2, top) if rng.random() < 0.5 else None)
    fr = patient.fractures
    row = {
        "image_id": image_id, "patient_id": patient.patient_id, "path": rel, "domain": job.domain,
        "pvf": patient.pvf_label, "osteo": patient.osteo_label, "age": patient.recorded_age,
        "sex": patient.recorded_sex, "bmi": patient.recorded_bmi, "exam": job.exam,
        "t_score": round(patient.t_score, 3), "fracture_levels": ";".join(f.level for f in fr),
        "fracture_type": ";".join(f.kind for f in fr),
        "fracture_grades": ";".join(str(f.grade) for f in fr),
        "genant_grade": max((f.grade for f in fr), default=0), "vendor": ph.vendor,
        "format": "png" if compression is None else "dicom", "bits_stored": ph.bits_stored,
        "photometric": photometric, "compression": compression or "",
        "height": ph.pixels.shape[0], "width": ph.pixels.shape[1],
        "pixel_spacing_mm": round(ph.pixel_spacing_mm, 5)}
    return row, [v.to_dict() for v in ph.vertebrae]


def _csv_text(columns: tuple[str, ...], rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if r[k] is None else r[k] for k in columns} for r in rows)
    return buf.getvalue()


def _worker_init() -> None:
    cv2.setNumThreads(1)


def generate_cohort(out_dir: str | os.PathLike, *, num_patients: int, domain: str = "xray",
                    scale: float = 0.25, seed: int = 0, workers: int | None = None,
                    formats: str = "mix", **difficulty) -> Path:
    """Write a synthetic cohort to ``out_dir`` and return the path of its ``manifest.csv``.

    ``difficulty`` takes the fields of :class:`CohortConfig`. ``formats`` is ``"mix"`` or a
    comma-separated list of ``png, dcm, rle, jpegls, jpeg2000, jpeg-lossless``.
    """
    if domain not in phantom.DOMAINS:
        raise ConfigError(f"domain must be one of {phantom.DOMAINS}, got {domain!r}")
    if num_patients < 1:
        raise ConfigError(f"num_patients must be >= 1, got {num_patients}")
    config = CohortConfig.from_kwargs(**difficulty)
    mix = tuple(parse_formats(formats).items())
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    patients = [simulate_patient(i, seed, config) for i in range(num_patients)]
    jobs = [_Job(p, k, str(out), domain, scale, seed, mix, config)
            for p in patients for k in range(p.exams)]
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    if workers == 1:
        results = [_write_exam(j) for j in jobs]
    else:
        with concurrent.futures.ProcessPoolExecutor(
                workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=worker_initializer(_worker_init)) as pool:
            chunk = max(1, len(jobs) // (8 * workers))
            results = list(pool.map(_write_exam, jobs, chunksize=chunk))
    rows = [r for r, _ in results]
    write_bytes(out / "manifest.csv", _csv_text(MANIFEST_COLUMNS, rows).encode())
    annotations = {r["image_id"]: a for r, a in results}
    write_bytes(out / "annotations.json", json.dumps(annotations).encode())
    follow = [{"patient_id": p.patient_id, "followup_years": round(p.followup_years, 4),
               "incident_fracture": int(p.incident_fracture)} for p in patients]
    write_bytes(out / "followup.csv",
                 _csv_text(("patient_id", "followup_years", "incident_fracture"), follow).encode())
    truth = {
        "version": VERSION, "seed": seed, "domain": domain, "scale": scale, "formats": dict(mix),
        "num_patients": num_patients, "num_images": len(rows),
        "config": dataclasses.asdict(config), "t_score_model": T_SCORE_MODEL,
        "pvf_model": PVF_MODEL, "hazard": HAZARD, "level_weights": LEVEL_WEIGHTS,
        "fracture_type_probs": TYPE_PROBS, "genant_loss": phantom.GENANT_LOSS,
        "observed": {"pvf": float(np.mean([p.pvf for p in patients])),
                     "osteo": float(np.mean([p.osteo for p in patients])),
                     "incident_fracture": float(np.mean([p.incident_fracture for p in patients])),
                     "mean_followup_years": float(np.mean([p.followup_years for p in patients]))}}
    write_bytes(out / "truth.json", json.dumps(truth, indent=2).encode())
    return out / "manifest.csv"


def make_montage(path: str | os.PathLike, *, seed: int = 0, tile_height: int = 400) -> Path:
    """Figure: normal, osteoporotic and fractured spines as radiograph then VFA, shown after
    histogram equalisation, fractured bodies boxed in red with level and Genant grade."""
    cases = (("normal", 0.5, ()), ("osteoporosis", -3.6, ()),
             ("fracture", -2.0, (("L1", "wedge", 2), ("T8", "biconcave", 3))))
    tiles = []
    for domain, scale in (("xray", 0.25), ("vfa", 0.5)):
        for k, (name, t_score, spec) in enumerate(cases):
            rng = _rng(seed, _MONTAGE, k)
            fractures = tuple(phantom.make_fracture(rng, *s) for s in spec)
            anatomy = phantom.sample_anatomy(rng, age=70.0, bmi=24.0, t_score=t_score,
                                             fractures=fractures)
            ph = phantom.render(anatomy, phantom.sample_acquisition(rng, domain, scale=scale), rng)
            tiles.append(_montage_tile(ph, f"{domain}: {name}", tile_height))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), np.concatenate(tiles, axis=1), [cv2.IMWRITE_PNG_COMPRESSION, 9]):
        raise OSError(f"cannot write {path}")
    return path


def _montage_tile(ph: phantom.Phantom, title: str, height: int) -> np.ndarray:
    img = cv2.normalize(ph.pixels, None, 0, 255, cv2.NORM_MINMAX, cv2.CV_8U)
    s = height / img.shape[0]
    img = cv2.resize(cv2.equalizeHist(img), (round(img.shape[1] * s), height),
                     interpolation=cv2.INTER_AREA)
    tile = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    font, red = cv2.FONT_HERSHEY_SIMPLEX, (0, 0, 255)
    for v in ph.vertebrae:
        if v.fractured:
            x0, y0, x1, y1 = (round(c * s) for c in v.box)
            cv2.rectangle(tile, (x0 - 2, y0 - 2), (x1 + 2, y1 + 2), red, 2)
            label = f"{v.level} g{v.grade}"
            width = cv2.getTextSize(label, font, 0.4, 1)[0][0]
            x = x1 + 5 if x1 + 5 + width < tile.shape[1] else x0 - 5 - width
            cv2.putText(tile, label, (x, (y0 + y1) // 2 + 4), font, 0.4, red, 1, cv2.LINE_AA)
    cv2.putText(tile, title, (6, 18), font, 0.45, (0, 255, 255), 1, cv2.LINE_AA)
    return cv2.copyMakeBorder(tile, 0, 0, 0, 4, cv2.BORDER_CONSTANT, value=0)


def _knob_help() -> dict[str, str]:
    """The field descriptions of CohortConfig's docstring, by field name."""
    names = {f.name for f in dataclasses.fields(CohortConfig)}
    helps: dict[str, str] = {}
    name = None
    for line in (CohortConfig.__doc__ or "").splitlines():
        head, _, rest = line.strip().partition(": ")
        if head in names:
            name, helps[head] = head, rest
        elif name and line.startswith("      "):
            helps[name] += " " + line.strip()
    return helps


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vertex_jax.synthetic",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="output folder")
    parser.add_argument("--num-patients", type=int, default=100)
    parser.add_argument("--domain", choices=phantom.DOMAINS, default="xray")
    parser.add_argument("--scale", type=float, default=0.25, help="image size relative to full")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all CPUs)")
    parser.add_argument("--formats", default="mix",
                        help=f"'mix' or comma-separated from {','.join(FORMATS)}")
    parser.add_argument("--montage", metavar="PNG", help="also (or only) write the example figure")
    knobs = parser.add_argument_group("difficulty and data quality (CohortConfig)")
    helps = _knob_help()
    for f in dataclasses.fields(CohortConfig):
        default = f.default
        tuple_arg = isinstance(default, tuple)
        kind = (lambda s: tuple(float(x) for x in s.split(","))) if tuple_arg else type(default)
        shown = ",".join(map(str, default)) if tuple_arg else default
        knobs.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=kind, default=default,
                           help=f"{helps.get(f.name, '')} (default {shown})")
    add_verbosity(parser)
    args = parser.parse_args(argv)
    if args.montage:
        print(f"wrote {make_montage(args.montage, seed=args.seed)}")
    if not args.out:
        if not args.montage:
            parser.error("--out is required (unless only --montage is given)")
        return
    start = time.perf_counter()
    difficulty = {f.name: getattr(args, f.name) for f in dataclasses.fields(CohortConfig)}
    manifest = generate_cohort(args.out, num_patients=args.num_patients, domain=args.domain,
                               scale=args.scale, seed=args.seed, workers=args.workers,
                               formats=args.formats, **difficulty)
    seconds = time.perf_counter() - start
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    rate = {k: np.mean([r[k] == "1" for r in rows if r[k] != ""]) for k in ("pvf", "osteo")}
    print(f"{len(rows)} images of {args.num_patients} patients ({args.domain}, scale {args.scale}) "
          f"in {args.out}: pvf {rate['pvf']:.1%}, osteoporosis {rate['osteo']:.1%}, "
          f"{seconds:.1f} s")


if __name__ == "__main__":
    main()
