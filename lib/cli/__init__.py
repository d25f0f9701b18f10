"""The command line: flags derived from the settings schema, --config, and the checks before a run."""
