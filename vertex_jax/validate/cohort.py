"""The external cohort: generated like the run's training cohort, with its own seed and
ids, one exam per patient, and a declared shift when asked; reused when already there."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

from ml_collections import ConfigDict

from vertex_jax.errors import ConfigError
from vertex_jax.synthetic.cohort import CohortConfig, generate_cohort, parse_formats
from vertex_jax.synthetic.shifts import apply_shift


def cohort_settings(config: ConfigDict, *, n: int, seed: int, shift: str | None) -> dict:
    """generate_cohort's arguments for an external cohort of the run configured by ``config``."""
    data = config.data
    if data.manifest:
        raise ConfigError(f"the run trained on {data.manifest}, not on the synthetic cohort, so there is "
                          "nothing to generate an external cohort from", todo="give the external set as --manifest CSV")
    syn = data.synthetic
    if seed == syn.seed:
        raise ConfigError(f"--seed {seed} is the training cohort's seed: its patients would be the training "
                          "patients (patient i is the same in every cohort of a seed)", todo="choose another --seed")
    if n < 10:
        raise ConfigError(f"--n must be at least 10, got {n}")
    # One exam per patient, so cases are independent; ids that cannot be mistaken for the run's.
    base = {**dict(syn.options), "repeat_fraction": 0.0, "id_prefix": f"{shift or 'internal'}{seed}-"}
    options, formats = apply_shift(base, "mix", shift)
    return {"num_patients": n, "domain": data.domain, "scale": syn.scale, "seed": seed, "formats": formats,
            **options}


def _same(truth: dict, settings: dict) -> bool:
    """Whether a cohort's truth.json records exactly these settings."""
    options = {k: v for k, v in settings.items() if k not in ("num_patients", "domain", "scale", "seed", "formats")}
    wanted = {"num_patients": settings["num_patients"], "domain": settings["domain"], "scale": settings["scale"],
              "seed": settings["seed"], "formats": parse_formats(settings["formats"]),
              "config": dataclasses.asdict(CohortConfig.from_kwargs(**options))}
    return json.loads(json.dumps(wanted)) == {k: truth.get(k) for k in wanted}


def external_cohort(out_dir: str | Path, settings: dict, *, workers: int | None = None,
                    log: Callable[[str], None] = print) -> Path:
    """The manifest of the cohort ``settings`` describe, generated into ``out_dir`` unless a
    complete one with the same settings is there (``truth.json`` is written last)."""
    out = Path(out_dir)
    truth = out / "truth.json"
    if truth.is_file() and _same(json.loads(truth.read_text()), settings):
        log(f"reusing the external cohort in {out}")
        return out / "manifest.csv"
    log(f"generating {settings['num_patients']} external case(s) in {out}")
    return generate_cohort(out, workers=workers, **settings)
