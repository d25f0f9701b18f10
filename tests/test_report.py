"""Grouping and mean +- std (ddof=1) of the results table, against a hand computation."""
import os

import numpy as np

from lib.analysis.report import load_runs, markdown_table, summarize_groups
from lib.infra.files import save_json


def _fake_run(root, name, method, avg, div, ens, by_size, seed=0):
    d = os.path.join(root, name)
    save_json(os.path.join(d, "config.json"), {"method": method, "seed": seed, "cycle_lr": 0.1})
    save_json(os.path.join(d, "metrics.json"), {
        "members": len(by_size), "avg_member_accuracy": avg, "diversity": div, "ensemble_accuracy": ens,
        "nll": 0.5, "ece": 0.1, "ensemble_accuracy_by_size": by_size, "member_accuracy": by_size,
        "member_seconds": [1.0] * len(by_size)})


def test_groups_mean_and_sample_std(tmp_path):
    _fake_run(tmp_path, "a", "StarSSE", 85.0, 60.0, 87.0, [85.0, 86.0])
    _fake_run(tmp_path, "b", "StarSSE", 86.0, 70.0, 88.0, [86.0, 88.0], seed=1)  # another seed: another run
    _fake_run(tmp_path, "c", "Local DE", 80.0, 50.0, 82.0, [80.0, 82.0])
    summary = summarize_groups(load_runs([str(tmp_path)]))
    assert list(summary) == ["Local DE", "StarSSE"]  # thesis order
    star = summary["StarSSE"]
    assert star["runs"] == 2
    assert star["ensemble_accuracy"][0] == 87.5
    assert np.isclose(star["ensemble_accuracy"][1], np.sqrt(0.5))  # ddof=1: sqrt(((.5)^2 + (.5)^2) / 1)
    assert np.isclose(star["diversity"][1], np.sqrt(50.0))
    assert star["by_size"] == [85.5, 87.0]
    table = markdown_table(summary)
    assert "| StarSSE | 2 | 2 | 85.50 ± 0.71 | 65.00 ± 7.07 | 87.50 ± 0.71 |" in table
    assert "| Local DE | 1 | 2 | 80.00 | 50.00 | 82.00 |" in table
    grouped = summarize_groups(load_runs([str(tmp_path)], ("method", "cycle_lr")))
    assert "StarSSE cycle_lr=0.1" in grouped
