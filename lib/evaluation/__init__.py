"""Evaluation: ensemble metrics, uncertainty, model soups, evaluating a saved run."""
