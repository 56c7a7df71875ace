"""``python -m vertex_jax.synthetic``: write a synthetic cohort (see :mod:`vertex_jax.synthetic.cohort`)."""

import sys

from vertex_jax.cli import user_errors
from vertex_jax.synthetic.cohort import main

if __name__ == "__main__":
    sys.exit(user_errors(main)())
