"""The coded concepts of the outputs: standard codes (DCM, SCT, UCUM) where one fits, local
ones in the private scheme ``99VERTEX`` (declared in the SR's Coding Scheme Identification)
for the model's own scores."""

from __future__ import annotations

from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

SCHEME = "99VERTEX"
TASK_MEANINGS = {"pvf": "Prevalent vertebral fracture", "osteo": "Osteoporosis"}

PROCEDURE = CodedConcept("XR-SPINE-LAT-AI", SCHEME, "Lateral spine radiograph, model scores")
NOT_FOR_CLINICAL_USE = CodedConcept("NOT-CLINICAL", SCHEME, "Not for clinical use")
PROBABILITY_UNIT = codes.UCUM.NoUnits
SALIENCY = codes.DCM.Saliency
THRESHOLD = codes.DCM.ThresholdValue
POSITIVE, NEGATIVE = codes.SCT.Positive, codes.SCT.Negative
COMMENT = codes.DCM.Comment
QUALITATIVE_EVALUATIONS = CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")


def task_finding(task: str) -> CodedConcept:
    """The finding a task scores."""
    return CodedConcept(task, SCHEME, TASK_MEANINGS.get(task, task))


def probability(task: str, *, raw: bool) -> CodedConcept:
    """Concept name of ``<task>_prob`` (``raw``: ``<task>_prob_raw``, before calibration)."""
    label = TASK_MEANINGS.get(task, task)
    return (CodedConcept(f"{task}_prob_raw", SCHEME, f"{label} probability, uncalibrated") if raw
            else CodedConcept(f"{task}_prob", SCHEME, f"{label} probability"))


def calibration(method: str) -> CodedConcept:
    """The calibration that made ``<task>_prob`` (the measurement's method)."""
    return CodedConcept(f"cal-{method}"[:16], SCHEME, f"Calibrated ({method})")


def call(task: str) -> CodedConcept:
    """Concept name of the call at the operating point (Youden)."""
    return CodedConcept(f"{task}_call", SCHEME, f"{TASK_MEANINGS.get(task, task)} at operating point")


def vertebra(level: str) -> CodedConcept:
    """The SNOMED CT vertebra of a level name (``T4``, ``L1``); a local code for other names."""
    try:
        return CodedConcept.from_code(getattr(codes.SCT, f"{level.strip().upper()}Vertebra"))
    except AttributeError:
        return CodedConcept(f"level-{level}", SCHEME, f"Vertebra {level}")


VERTEBRA = codes.SCT.Vertebra  # the finding of a per-vertebra group; its site names the level
PERCENT = codes.UCUM.Percent
FRACTURE_PROBABILITY = CodedConcept("vfx_prob", SCHEME, "Vertebral fracture probability")
HEIGHT_LOSS = CodedConcept("height_loss", SCHEME, "Vertebral height loss, 1 - min/max height")
DETECTION_SCORE = CodedConcept("vert_score", SCHEME, "Vertebra detection score")
GENANT_GRADE = CodedConcept("genant_grade", SCHEME, "Genant grade, model")
GENANT_MEASURED = CodedConcept("genant_measured", SCHEME, "Genant grade, by measurement")
GENANT_NAMES = ("normal", "mild", "moderate", "severe")


def genant(grade: int) -> CodedConcept:
    """A Genant semi-quantitative grade, 0-3, as a coded value."""
    return CodedConcept(f"genant-{grade}", SCHEME, f"Genant grade {grade} ({GENANT_NAMES[grade]})")


def scheme_identification() -> Dataset:
    """Coding Scheme Identification Sequence item of the private scheme."""
    item = Dataset()
    item.CodingSchemeDesignator = SCHEME
    item.CodingSchemeName = "VERTE-X local codes"
    item.CodingSchemeResponsibleOrganization = "vertex_jax"
    return item
