"""The Structured Report of one scored image: a Comprehensive SR holding a TID 1500
Measurement Report.

Comprehensive SR (not Comprehensive 3D SR): every coordinate is a 2-D SCOORD on the source
image's pixels, which Comprehensive SR carries; it is the older, more widely accepted SOP
class (archives and viewers that store TID 1500 reports take it), and SCOORD3D would need a
patient frame of reference a projection radiograph does not have.

The tree (:func:`structured_report`):

- Imaging Measurement Report (TID 1500): language, device observer (the model), procedure
  reported, Image Library (the source image);
- per task, a Measurement Group (TID 1501): tracking identifier, finding (the task),
  algorithm (model, step, calibration), source image, ``<task>_prob`` (its method: the
  calibration), ``<task>_prob_raw``, and with an operating point its threshold and the call
  (Positive/Negative, positive when ``<task>_prob`` >= the threshold);
- per task with a saliency map, a Planar ROI group (TID 1410): the map's peak as an SCOORD
  POINT on the source image (finding: Saliency, site: the vertebra it names when known) and,
  when given, its region as a closed POLYLINE;
- per vertebra the vertebra head found (a model with ``model.vertebrae``), a Planar ROI group
  (TID 1410): its box as a closed POLYLINE (finding: Vertebra, site: its level's SNOMED CT
  code when named), the model's Genant grade and the grade its heights measure (coded
  values), the fracture probability, the height loss (%) and the detection score;
- Qualitative Evaluations: "Not for clinical use" and a comment saying so.

SCOORD values are DICOM image coordinates: (0, 0) is the top-left corner of the top-left
pixel, so a pixel's centre is at its index + 0.5.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes as pcodes

from vertex_jax.dicom_out import MANUFACTURER, NOT_FOR_CLINICAL_USE
from vertex_jax.dicom_out import codes
from vertex_jax.dicom_out.source import completed, missing_identifiers
from vertex_jax.dicom_out.uids import (METHOD_KEY, derived_uid, model_identity, model_name, output_uids,
                                       text)

SERIES_NUMBER = 9901  # high, apart from the modality's own series
SERIES_DESCRIPTION = f"VERTE-X scores - {NOT_FOR_CLINICAL_USE}"
PROJECTION = ("CR", "DX", "IO", "MG", "PX", "RF", "RG", "XA")  # highdicom's TID 1603 modalities
WARNING_TEXT = (f"{NOT_FOR_CLINICAL_USE}: research model output (VERTE-X), not a diagnosis; "
                "not verified by a clinician.")


def _number(row: Mapping[str, Any], key: str) -> float | None:
    """A finite number from the row, or None (blank, NaN, absent). A NumPy value is taken as
    its shortest decimal (a float32 score as scores.csv writes it, not its float64 widening)."""
    value = row.get(key)
    try:
        number = float(str(value)) if isinstance(value, np.floating) else float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


def algorithm(row: Mapping[str, Any], *, saliency: bool = False) -> hd.sr.AlgorithmIdentification:
    """The model (checkpoint name), its step and calibration; with ``saliency`` the map's method."""
    step = text(row.get("model_step"))
    parameters = [f"calibration={text(row.get('calibration')) or 'none'}"]
    if saliency:
        parameters.append(f"saliency={text(row.get(METHOD_KEY)) or 'unknown'}")
    return hd.sr.AlgorithmIdentification(name=f"VERTE-X {model_name(row) or 'model'}"[:64],
                                         version=f"step {step}" if step else "unknown",
                                         parameters=parameters)


def _tracking(source: pydicom.Dataset, row: Mapping[str, Any], label: str) -> hd.sr.TrackingIdentifier:
    return hd.sr.TrackingIdentifier(
        uid=derived_uid("tracking", label, str(source.SOPInstanceUID), *model_identity(row)),
        identifier=label)


def score_group(source: pydicom.Dataset, row: Mapping[str, Any], task: str,
                threshold: float | None) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """TID 1501: the task's probabilities and, with a threshold, the call."""
    calibration = text(row.get("calibration")) or "none"
    measurements = []
    if (p := _number(row, f"{task}_prob")) is not None:
        measurements.append(hd.sr.Measurement(
            name=codes.probability(task, raw=False), value=p, unit=codes.PROBABILITY_UNIT,
            method=codes.calibration(calibration) if calibration != "none" else None))
    if (raw := _number(row, f"{task}_prob_raw")) is not None:
        measurements.append(hd.sr.Measurement(name=codes.probability(task, raw=True), value=raw,
                                              unit=codes.PROBABILITY_UNIT))
    evaluations = []
    if threshold is not None and p is not None:
        measurements.append(hd.sr.Measurement(name=codes.THRESHOLD, value=float(threshold),
                                              unit=codes.PROBABILITY_UNIT))
        evaluations.append(hd.sr.QualitativeEvaluation(
            name=codes.call(task), value=codes.POSITIVE if p >= threshold else codes.NEGATIVE))
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(source, row, f"{task} score"),
        finding_type=codes.task_finding(task), algorithm_id=algorithm(row),
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
        measurements=measurements, qualitative_evaluations=evaluations or None)


def saliency_groups(source: pydicom.Dataset, row: Mapping[str, Any], task: str
                    ) -> list[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations]:
    """TID 1410: the map's peak (POINT) and region (closed POLYLINE), when the row has them."""
    x, y = _number(row, f"{task}_peak_x"), _number(row, f"{task}_peak_y")
    if x is None or y is None:
        return []
    level = text(row.get(f"{task}_level"))
    sites = [hd.sr.FindingSite(anatomic_location=codes.vertebra(level))] if level else None
    common = dict(finding_type=codes.SALIENCY, algorithm_id=algorithm(row, saliency=True),
                  finding_sites=sites, finding_category=codes.task_finding(task))
    groups = [hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(source, row, f"{task} saliency peak"),
        referenced_region=hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POINT, graphic_data=np.array([[x + 0.5, y + 0.5]]),
            source_image=hd.sr.SourceImageForRegion.from_source_image(source)),
        geometric_purpose=pcodes.DCM.Center, **common)]
    box = [_number(row, f"{task}_region_{k}") for k in ("x0", "y0", "x1", "y1")]
    if all(v is not None for v in box):
        groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=_tracking(source, row, f"{task} saliency region"),
            referenced_region=_polyline(source, box), **common))
    return groups


def _polyline(source: pydicom.Dataset, box: Sequence[float]) -> hd.sr.ImageRegion:
    """A box (x0, y0, x1, y1) in image coordinates as a closed POLYLINE on ``source``."""
    x0, y0, x1, y1 = box
    return hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                             graphic_data=np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]),
                             source_image=hd.sr.SourceImageForRegion.from_source_image(source))


def vertebra_group(source: pydicom.Dataset, row: Mapping[str, Any], vertebra: Mapping[str, Any]
                   ) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """TID 1410 of one found vertebra: a row of ``<out>_vertebrae.csv`` (``order``, ``level``,
    ``x0``..``y1``, ``grade``, ``measured_grade``, ``fracture_prob``, ``height_loss``,
    ``score``)."""
    level, loss = text(vertebra.get("level")), _number(vertebra, "height_loss")
    measured = [(codes.FRACTURE_PROBABILITY, _number(vertebra, "fracture_prob"), codes.PROBABILITY_UNIT),
                (codes.HEIGHT_LOSS, None if loss is None else 100.0 * loss, codes.PERCENT),
                (codes.DETECTION_SCORE, _number(vertebra, "score"), codes.PROBABILITY_UNIT)]
    graded = [(codes.GENANT_GRADE, _number(vertebra, "grade")),
              (codes.GENANT_MEASURED, _number(vertebra, "measured_grade"))]
    label = f"vertebra {text(vertebra.get('order'))} {level}".strip()
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(source, row, label),
        referenced_region=_polyline(source, [float(vertebra[k]) for k in ("x0", "y0", "x1", "y1")]),
        finding_type=codes.VERTEBRA, algorithm_id=algorithm(row),
        finding_sites=[hd.sr.FindingSite(anatomic_location=codes.vertebra(level))] if level else None,
        measurements=[hd.sr.Measurement(name=name, value=value, unit=unit)
                      for name, value, unit in measured if value is not None],
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=name, value=codes.genant(int(g)))
                                 for name, g in graded if g is not None])


def _library_entry(source: pydicom.Dataset) -> pydicom.Dataset:
    """The header the Image Library describes: a projection radiograph's orientation and
    spacing descriptors (TID 1603) only when the header has both, else the basic ones."""
    orientation, spacing = source.get("PatientOrientation"), source.get("ImagerPixelSpacing")
    if (source.get("Modality") not in PROJECTION or (orientation and spacing
                                                       and len(orientation) == 2 and len(spacing) == 2)):
        return source
    basic = pydicom.Dataset()
    basic.update(source)
    basic.Modality = "OT"  # only steers the descriptors; the coded modality is the SOP class's
    return basic


def _not_for_clinical_use() -> hd.sr.ContainerContentItem:
    """TID 1500's Qualitative Evaluations container: the coded warning and its text."""
    container = hd.sr.ContainerContentItem(name=codes.QUALITATIVE_EVALUATIONS,
                                           relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
    container.ContentSequence = [
        hd.sr.CodeContentItem(name=codes.COMMENT, value=codes.NOT_FOR_CLINICAL_USE,
                              relationship_type=hd.sr.RelationshipTypeValues.CONTAINS),
        hd.sr.TextContentItem(name=codes.COMMENT, value=WARNING_TEXT,
                              relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)]
    return container


def structured_report(source: pydicom.Dataset, row: Mapping[str, Any], *, tasks: Sequence[str],
                      thresholds: Mapping[str, float] | None = None,
                      vertebrae: Sequence[Mapping[str, Any]] = ()) -> pydicom.Dataset:
    """The SR of one scored image: ``source`` is its header (``stop_before_pixels`` is enough),
    ``row`` its scores.csv row (``<task>_prob``, ``<task>_prob_raw``, ``model``,
    ``model_step``, ``calibration``, the map's ``<task>_peak_x``/``_y``, ``<task>_region_*``,
    ``<task>_level`` when made, ``saliency_method`` for the map's method), ``thresholds`` the
    operating point per task, ``vertebrae`` the image's rows of ``<out>_vertebrae.csv``. Its
    UIDs are deterministic (:mod:`vertex_jax.dicom_out.uids`). Raises ValueError/AttributeError when the header lacks what a reference needs."""
    thresholds = thresholds or {}
    if missing := missing_identifiers(source):
        raise ValueError(f"the source header has no {', '.join(missing)}")
    source = completed(source)
    groups: list = [score_group(source, row, task, thresholds.get(task)) for task in tasks]
    for task in tasks:
        groups += saliency_groups(source, row, task)
    groups += [vertebra_group(source, row, v) for v in vertebrae]
    step = text(row.get("model_step"))
    observer = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=derived_uid("device", *model_identity(row)), name="VERTE-X",
        manufacturer_name=MANUFACTURER, model_name=(model_name(row) or "model")[:64])
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
            observer_type=pcodes.DCM.Device, observer_identifying_attributes=observer)),
        procedure_reported=codes.PROCEDURE, imaging_measurements=groups,
        language_of_content_item_and_descendants=hd.sr.LanguageOfContentItemAndDescendants(
            language=hd.sr.CodedConcept("en-US", "RFC5646", "English (United States)")),
        referenced_images=[_library_entry(source)])
    report[0].ContentSequence.append(_not_for_clinical_use())
    uids = output_uids(source, row, "sr")
    with warnings.catch_warnings():  # highdicom's remarks on the source's own person names
        warnings.simplefilter("ignore", UserWarning)
        sr = hd.sr.ComprehensiveSR(
            evidence=[source], content=report[0], series_instance_uid=uids.series,
            series_number=SERIES_NUMBER, sop_instance_uid=uids.instance,
            instance_number=int(text(source.get("InstanceNumber")) or 1), manufacturer=MANUFACTURER,
            is_complete=True, is_final=False, is_verified=False, series_description=SERIES_DESCRIPTION,
            software_versions=f"step {step}" if step else None)
    sr.CodingSchemeIdentificationSequence = [codes.scheme_identification()]
    return sr
