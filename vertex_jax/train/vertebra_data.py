"""The training split's vertebra slots: annotations joined to the cached images' geometry.

Where the annotations come from: ``config.data.annotations`` (a JSON or CSV file,
:func:`vertex_jax.vertebrae.annotations.read_annotations`), else, for the built-in synthetic
cohort (no manifest configured), its ``annotations.json``. Images without an entry stay
unannotated (``vertebra_annotated`` 0): they train the image-level tasks and add nothing to
the vertebra losses, so a manifest may mix annotated and unannotated images.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from vertex_jax.data.cache import Cache
from vertex_jax.data.prepare import PreparedData
from vertex_jax.data.preprocess import Geometry
from vertex_jax.errors import MissingInputError
from vertex_jax.models.build import vertebra_spec
from vertex_jax.vertebrae.annotations import Vertebra, read_annotations
from vertex_jax.vertebrae.slots import empty_slots, fill
from vertex_jax.vertebrae.targets import HeadSpec

SYNTHETIC_ANNOTATIONS = "annotations.json"  # beside the synthetic cohort's manifest


def annotations_path(data: Any, manifest: Path) -> Path | None:
    """The annotations file of a run's ``config.data`` (None: no image is annotated)."""
    if data.annotations:
        path = Path(data.annotations)
        if not path.is_file():
            raise MissingInputError(f"vertebra annotations {path} not found (config.data.annotations)")
        return path
    synthetic = Path(manifest).parent / SYNTHETIC_ANNOTATIONS
    return synthetic if not data.manifest and synthetic.is_file() else None


def vertebra_tables(frame: pd.DataFrame, cache: Cache, annotations: Mapping[str, Sequence[Vertebra]],
                    spec: HeadSpec, *, complete: bool = True) -> dict[str, np.ndarray]:
    """The slots (:mod:`vertex_jax.vertebrae.slots`) of each row of ``frame``, its vertebrae
    placed on the canvas by the geometry the cache recorded for the image."""
    geometries = dict(zip(cache.index["image_id"], cache.index["geometry"]))
    out = empty_slots(len(frame))
    for row, image_id in enumerate(frame["image_id"]):
        vertebrae = annotations.get(image_id)
        if vertebrae is not None:
            fill(out, row, vertebrae, Geometry.from_dict(geometries[image_id]), spec,
                 complete=complete, name=image_id)
    return out


def training_tables(config: Any, data: PreparedData) -> tuple[dict[str, np.ndarray] | None, str]:
    """The vertebra slots of the training split and a line that says how many images are
    annotated and from where; (None, "") with ``model.vertebrae`` off."""
    if not config.model.vertebrae:
        return None, ""
    path = annotations_path(config.data, data.manifest)
    annotations = read_annotations(path) if path is not None else {}
    frame = data.split(config.data.train_split)
    tables = vertebra_tables(frame, data.cache, annotations, vertebra_spec(config),
                             complete=config.data.annotations_complete)
    annotated = int(tables["vertebra_annotated"].sum())
    line = (f"vertebra head: {annotated} of {len(frame)} training images annotated "
            f"({path if path is not None else 'no annotations file: set config.data.annotations'})")
    if annotated == 0:
        logging.warning("%s; its losses stay 0", line)
    return tables, line
