"""Training: the loop, an experiment's members, the embedded BYOL pre-training."""
