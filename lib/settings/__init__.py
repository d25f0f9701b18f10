"""Settings: the typed schema of every flag, and the methods as data."""
