"""External validation: score a second, independent cohort and report how the model holds.

``python -m vertex_jax.validate --workdir RUN --out DIR [--shift NAME] [--n N] [--manifest CSV]
[--recalibrate N]``: a cohort generated with its own seed (the training distribution, or a
declared shift of it: :mod:`vertex_jax.synthetic.shifts`) or a real external set given as a
manifest is scored by the run's best checkpoint; the evaluation report for it is written
beside the run's internal one, with the differences and their intervals
(:mod:`vertex_jax.validate.differences`), and optionally a site recalibration on a small
local sample, judged on the rest (:mod:`vertex_jax.validate.site`).
"""
