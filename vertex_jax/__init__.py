"""VERTE-X in JAX: vertebral fracture and osteoporosis scores from spine radiographs."""

__version__ = "0.1.0"
