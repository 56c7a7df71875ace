"""Alias of ``python -m vertex_jax.synthetic`` (the cohort generator moved to :mod:`vertex_jax.synthetic`)."""

from vertex_jax.synthetic.cohort import main

if __name__ == "__main__":
    main()
