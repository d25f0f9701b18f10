"""Data: the fine-tuning tasks, image sources, the device pipeline, evaluation sets."""
