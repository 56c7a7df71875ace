"""Training: on-device augmentation, optimizer state, jitted steps, Orbax checkpoints, the epoch loop."""
