"""Seeds: every random stream of the repo is seeded from a tuple of integers (seed, member, epoch, ...).

One function, so that streams are independent (numpy's SeedSequence mixes the tuple) and reproducible: a resumed
member draws exactly what an uninterrupted one would.
"""
import numpy as np


def seed_for(*parts):
    """A 32-bit seed derived from integers (seed, member, epoch, ...): independent streams, reproducible."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])
