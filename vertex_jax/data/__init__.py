"""Data side: image I/O, the paper's preprocessing, synthetic cohort, manifest, cache and pipeline."""
