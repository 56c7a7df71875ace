"""``python -m vertex_jax.synthetic``: write a synthetic cohort (see :mod:`vertex_jax.synthetic.cohort`)."""

from vertex_jax.synthetic.cohort import main

if __name__ == "__main__":
    main()
