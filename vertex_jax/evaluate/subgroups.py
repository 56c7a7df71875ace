"""Subgroups of the evaluated cases: sex, age bands, and domain when the table mixes domains."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import pandas as pd

from vertex_jax.errors import ConfigError

AGE_BANDS = (60, 70, 80)  # -> <60, 60-69, 70-79, >=80
MIN_PER_CLASS = 10  # fewer positives or negatives than this: a note that estimates are unstable


@dataclasses.dataclass(frozen=True)
class Subgroup:
    variable: str
    group: str
    mask: np.ndarray


def _num(x: float) -> str:
    return f"{x:g}"


def age_band_labels(edges: Sequence[float]) -> list[str]:
    """Labels for the bands cut at ``edges``: [lo, hi) ranges, '60-69' when both ends are whole numbers."""
    labels = [f"<{_num(edges[0])}"]
    for lo, hi in zip(edges[:-1], edges[1:]):
        whole = float(lo).is_integer() and float(hi).is_integer()
        labels.append(f"{_num(lo)}-{_num(hi - 1)}" if whole else f"{_num(lo)}-<{_num(hi)}")
    return labels + [f">={_num(edges[-1])}"]


def define_subgroups(cases: pd.DataFrame, age_bands: Sequence[float] = AGE_BANDS) -> list[Subgroup]:
    """Subgroup masks over ``cases`` (columns sex, age, domain as typed by ``table.parse_scores``).

    Every configured sex and age band is listed, empty or not; 'unknown' groups only when
    values are missing; domain only when more than one domain is present.
    """
    edges = sorted(float(e) for e in age_bands)
    if len(set(edges)) != len(edges) or not edges:
        raise ConfigError(f"age bands must be distinct cut points, got {list(age_bands)}")
    out = []
    sex = cases["sex"].to_numpy()
    for code, name in (("F", "female"), ("M", "male"), ("", "unknown")):
        if code or (sex == "").any():
            out.append(Subgroup("sex", name, sex == code))
    age = cases["age"].to_numpy(float)
    band = np.searchsorted(edges, age, side="right")  # NaN sorts past the end
    for i, label in enumerate(age_band_labels(edges)):
        out.append(Subgroup("age", label, (band == i) & ~np.isnan(age)))
    if np.isnan(age).any():
        out.append(Subgroup("age", "unknown", np.isnan(age)))
    domains = cases["domain"].to_numpy()
    if len(set(domains)) > 1:
        for d in sorted(set(domains)):
            out.append(Subgroup("domain", d or "unknown", domains == d))
    return out


def size_notes(n_pos: int, n_neg: int) -> list[str]:
    """Notes for a group too small for stable estimates."""
    if n_pos + n_neg == 0:
        return ["no cases"]
    if min(n_pos, n_neg) < MIN_PER_CLASS:
        return [f"small group ({n_pos} positive, {n_neg} negative; fewer than {MIN_PER_CLASS} of a class): "
                "estimates are unstable"]
    return []
