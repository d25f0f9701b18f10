"""Run directories: a run's member files, their records with digests, verification, finding runs."""
