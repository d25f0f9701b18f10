"""Runs on disk: the run directory (rundir.py), the one place that writes and reads runs."""
