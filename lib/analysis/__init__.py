"""Analyses of saved runs: results tables, representations, diversity structure, subsets."""
