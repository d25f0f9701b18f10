"""Models: backbones and their stages, pre-trained checkpoints."""
