"""A training manifest from a folder of DICOMs: ``python -m vertex_jax.manifest FOLDER --out CSV``
(:mod:`vertex_jax.manifest.build`; the manifest's schema is :mod:`vertex_jax.data.manifest`)."""
