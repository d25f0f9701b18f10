"""Runs on disk: the run directory, its members and their digests."""
