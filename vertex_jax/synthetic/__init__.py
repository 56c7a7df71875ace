"""The synthetic VERTE-X cohort: everything that makes data with a known truth.

- :mod:`.phantom`: one lateral spine image (radiograph or DXA VFA) and its per-vertebra
  annotations, from a patient's anatomy and an exam's acquisition.
- :mod:`.cohort`: patients, labels, follow-up and their images on disk
  (``python -m vertex_jax.synthetic --out DIR --num-patients N``).
- :mod:`.dicom_write`: single-frame greyscale DICOM files in the common lossless codecs.

The real input path (:mod:`vertex_jax.data`) only reads what this writes.
"""
