"""Clinical evaluation of per-case scores: AUROC with DeLong and bootstrap CIs, operating points,
calibration, subgroups, paired model comparison, and an HTML/JSON report. No JAX needed."""

from vertex_jax.evaluate.report import build_report, format_summary
from vertex_jax.evaluate.table import ScoresError, read_scores

__all__ = ["ScoresError", "build_report", "format_summary", "read_scores"]
