"""Training: device mesh, jitted steps, Orbax checkpoints, the epoch loop."""
