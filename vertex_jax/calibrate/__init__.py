"""Post-hoc calibration: probabilities a clinician can read as risks.

A trained network ranks cases well, but its sigmoid outputs are shifted by class
imbalance, clinical-value dropout and early stopping. A calibration map per task is fitted
on the validation split's logits (never on the test split) and stored in the checkpoint's
``card``, so every consumer (``predict``, ``evaluate``, ``prognosis``, ``export``) serves
the same calibrated ``<task>_prob`` and keeps the raw one as ``<task>_prob_raw``.

Methods (:mod:`vertex_jax.calibrate.maps`): ``temperature`` (p = sigmoid(z / T)),
``platt`` (p = sigmoid(a z + b)) and ``isotonic`` (a monotone piecewise-linear table on the
logit). ``python -m vertex_jax.calibrate --workdir RUN`` refits a finished run.
"""

from vertex_jax.calibrate.maps import (METHODS, Calibration, CalibrationError, TaskMap, fit_calibration,
                                     fit_map)

__all__ = ["METHODS", "Calibration", "CalibrationError", "TaskMap", "fit_calibration", "fit_map"]
