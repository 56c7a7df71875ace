"""DICOM outputs a PACS can take: a Structured Report of the scores and a Secondary Capture
of the saliency overlay, in the source image's study (``predict --dicom-out DIR``).

:mod:`~vertex_jax.dicom_out.report` builds the SR (TID 1500), :mod:`~vertex_jax.dicom_out.capture`
the SC, :mod:`~vertex_jax.dicom_out.uids` their deterministic UIDs and
:mod:`~vertex_jax.dicom_out.write` files a run's outputs. Imports no JAX: the ONNX backend
and the HTTP service use it too. Every output is marked not for clinical use.
"""

NOT_FOR_CLINICAL_USE = "NOT FOR CLINICAL USE"
MANUFACTURER = "vertex_jax"
