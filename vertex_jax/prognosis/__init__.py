"""Incident-fracture prognosis: do deep-learning scores add to clinical risk factors?

Pure statistics (pandas, lifelines, matplotlib; no JAX). ``python -m vertex_jax.prognosis --help``.
Modules: ``data`` (inputs and checks), ``thresholds`` (DL-positive cut-offs), ``cox``,
``horizon`` (IPCW weights), ``discrimination``, ``reclassification``, ``km``, ``bootstrap``,
``analysis`` (all of it), ``plots`` and ``report`` (outputs).
"""
