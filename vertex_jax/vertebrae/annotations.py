"""Per-vertebra annotations: one dataclass, read from ``annotations.json`` or from a CSV.

**JSON** (the synthetic cohort's ``annotations.json``)::

    {"<image_id>": [{"level": "T12", "box": [x0, y0, x1, y1], "grade": 2, "fractured": true,
                     "fracture_type": "wedge",
                     "points": {"superior_anterior": [x, y], ..., "inferior_posterior": [x, y]}},
                    ...], ...}

``grade``, ``fractured``, ``fracture_type`` and ``points`` may be left out (or null);
``points`` may also be a list of the six (x, y) pairs in :data:`POINTS` order.

**CSV**, one row per vertebra::

    image_id,level,x0,y0,x1,y1,grade,fractured,fracture_type,superior_anterior_x,superior_anterior_y,...

Required: ``image_id, x0, y0, x1, y1`` and at least one of ``grade`` and ``fractured``;
optional: ``level``, ``fractured`` (0/1), ``fracture_type`` and the twelve point columns
``<point>_x, <point>_y`` for the six :data:`POINTS` (all twelve or none). An empty cell is
unknown. (The ``image_id, level, x0, y0, x1, y1, fractured`` CSV of
:func:`vertex_jax.explain.localization.load_boxes` is one such file.)

Boxes and points are in original-image pixels, (x, y), x to the right and y down; a box is
``x0, y0, x1, y1`` with ``x0 < x1`` and ``y0 < y1``. ``grade`` is Genant's 0-3; ``fractured``
follows from it (grade >= 1) when not given, and must agree with it when both are.

**Lesion-box data sets** (VinDr-SpineXR-style CSVs: ``image_id, lesion_type, xmin, ymin,
xmax, ymax`` per finding, boxes only around abnormal findings, one of them "Vertebral
collapse"): a collapse box becomes a row ``image_id, x0=xmin, y0=ymin, x1=xmax, y1=ymax,
fractured=1`` with ``level`` and ``grade`` empty; other lesion types are left out. Such
images are *partial*: their intact vertebrae carry no box, so the head's targets are built
with ``complete=False`` (:func:`vertex_jax.vertebrae.targets.encode`), which teaches where
the boxed vertebrae are but never that a place holds no vertebra.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

from vertex_jax.errors import InputDataError

POINTS: tuple[str, ...] = ("superior_anterior", "superior_middle", "superior_posterior",
                           "inferior_anterior", "inferior_middle", "inferior_posterior")
GRADES: tuple[int, ...] = (0, 1, 2, 3)
FRACTURE_TYPES: tuple[str, ...] = ("wedge", "biconcave", "crush")
_LEVEL = re.compile(r"^[CTLS][0-9]{1,2}$")
BOX_COLUMNS = ("x0", "y0", "x1", "y1")
POINT_COLUMNS: tuple[str, ...] = tuple(f"{p}_{a}" for p in POINTS for a in "xy")
CSV_COLUMNS: tuple[str, ...] = ("image_id", "level", *BOX_COLUMNS, "grade", "fractured",
                                "fracture_type", *POINT_COLUMNS)


@dataclasses.dataclass(frozen=True)
class Vertebra:
    """One annotated vertebra (original-image pixels).

    ``level``: "T4".."L4" (any of C/T/L/S1-99 is read), None if not named; ``grade``: Genant
    0-3 or None; ``fractured``: from the grade when None; ``points``: the six :data:`POINTS`
    as (x, y) pairs, or None.
    """

    level: str | None
    box: tuple[float, float, float, float]
    grade: int | None = None
    fractured: bool | None = None
    fracture_type: str | None = None
    points: tuple[tuple[float, float], ...] | None = None

    def __post_init__(self) -> None:
        x0, y0, x1, y1 = self.box
        if not (all(math.isfinite(v) for v in self.box) and x0 < x1 and y0 < y1):
            raise ValueError(f"box must be finite with x0 < x1 and y0 < y1, got {self.box}")
        if self.level is not None and not _LEVEL.match(self.level):
            raise ValueError(f"level must look like T12 or L1, got {self.level!r}")
        if self.grade is not None and self.grade not in GRADES:
            raise ValueError(f"Genant grade must be 0, 1, 2 or 3, got {self.grade!r}")
        if self.grade is not None and self.fractured is not None and self.fractured != (self.grade >= 1):
            raise ValueError(f"fractured={self.fractured} disagrees with Genant grade {self.grade}")
        if self.fracture_type is not None and self.fracture_type not in FRACTURE_TYPES:
            raise ValueError(f"fracture_type must be one of {FRACTURE_TYPES}, got {self.fracture_type!r}")
        if self.points is not None and (len(self.points) != len(POINTS)
                                        or any(len(p) != 2 for p in self.points)):
            raise ValueError(f"points must be {len(POINTS)} (x, y) pairs, got {self.points}")
        if self.fractured is None and self.grade is not None:
            object.__setattr__(self, "fractured", self.grade >= 1)

    @property
    def centre(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        return (x0 + x1) / 2.0, (y0 + y1) / 2.0


def _points_from_json(value: Any) -> tuple[tuple[float, float], ...] | None:
    if value is None:
        return None
    if isinstance(value, Mapping):
        if missing := [p for p in POINTS if p not in value]:
            raise ValueError(f"points lack {missing}")
        value = [value[p] for p in POINTS]
    return tuple((float(x), float(y)) for x, y in value)


def _optional_int(value: Any) -> int | None:
    if value is None or value == "":
        return None
    number = float(value)
    if number != int(number):
        raise ValueError(f"expected a whole number, got {value!r}")
    return int(number)


def _optional_bool(value: Any) -> bool | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes"):
        return True
    if text in ("0", "false", "no"):
        return False
    raise ValueError(f"fractured must be 0/1 or true/false, got {value!r}")


def _level(value: Any) -> str | None:
    return None if value is None or str(value).strip() == "" else str(value).strip().upper()


def vertebra_from_dict(record: Mapping[str, Any]) -> Vertebra:
    """One JSON record (see the module) as a :class:`Vertebra`."""
    box = tuple(float(v) for v in record["box"])
    if len(box) != 4:
        raise ValueError(f"box must be [x0, y0, x1, y1], got {record['box']}")
    return Vertebra(_level(record.get("level")), box, _optional_int(record.get("grade")),
                    _optional_bool(record.get("fractured")), record.get("fracture_type") or None,
                    _points_from_json(record.get("points")))


def read_json(path: str | Path) -> dict[str, list[Vertebra]]:
    """``{image_id: [record, ...]}`` (see the module) -> vertebrae per image id."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputDataError(f"{path}: {e}") from None
    if not isinstance(data, Mapping):
        raise InputDataError(f"{path}: expected an object image_id -> list of vertebrae")
    out: dict[str, list[Vertebra]] = {}
    for image_id, records in data.items():
        try:
            out[str(image_id)] = [vertebra_from_dict(r) for r in records]
        except (KeyError, TypeError, ValueError) as e:
            raise InputDataError(f"{path}: image {image_id}: {e!r}") from None
    return out


def read_csv(path: str | Path) -> dict[str, list[Vertebra]]:
    """One row per vertebra (see the module) -> vertebrae per image id, in file order."""
    path = Path(path)
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header = set(reader.fieldnames or ())
        if missing := {"image_id", *BOX_COLUMNS} - header:
            raise InputDataError(f"{path}: vertebra CSV lacks column(s) {sorted(missing)}")
        if not header & {"grade", "fractured"}:
            raise InputDataError(f"{path}: vertebra CSV needs a grade or a fractured column")
        point_cols = header & set(POINT_COLUMNS)
        if point_cols and point_cols != set(POINT_COLUMNS):
            raise InputDataError(f"{path}: point columns must be all of {list(POINT_COLUMNS)}; "
                                 f"missing {sorted(set(POINT_COLUMNS) - point_cols)}")
        out: dict[str, list[Vertebra]] = {}
        for line, row in enumerate(reader, start=2):
            try:
                points = None
                if point_cols:
                    cells = [row[c] for c in POINT_COLUMNS]
                    if any(c.strip() for c in cells):
                        values = [float(c) for c in cells]
                        points = tuple(zip(values[0::2], values[1::2]))
                vertebra = Vertebra(
                    _level(row.get("level")), tuple(float(row[c]) for c in BOX_COLUMNS),
                    _optional_int(row.get("grade")), _optional_bool(row.get("fractured")),
                    (row.get("fracture_type") or "").strip() or None, points)
            except ValueError as e:
                raise InputDataError(f"{path}:{line}: {e}") from None
            out.setdefault(row["image_id"], []).append(vertebra)
    return out


def read_annotations(path: str | Path) -> dict[str, list[Vertebra]]:
    """Vertebrae per image id from a ``.csv`` (:func:`read_csv`) or JSON (:func:`read_json`)."""
    return read_csv(path) if Path(path).suffix.lower() == ".csv" else read_json(path)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(int(value))
    return repr(value) if isinstance(value, float) else str(value)


def write_csv(annotations: Mapping[str, Iterable[Vertebra]], path: str | Path) -> Path:
    """Write vertebrae per image id as the CSV :func:`read_csv` reads (all columns)."""
    path = Path(path)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for image_id, vertebrae in annotations.items():
            for v in vertebrae:
                pts = [c for p in v.points for c in p] if v.points is not None else [None] * 12
                writer.writerow([_cell(c) for c in (image_id, v.level, *v.box, v.grade, v.fractured,
                                                    v.fracture_type, *pts)])
    return path
