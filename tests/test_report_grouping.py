"""The results table cannot mislead (issue 14, issue 13's --select_by, issue 16's columns): constructed run
directories whose right table is known by hand -- settings are rows, seeds and checkpoints are not; sizes are never
pooled; a run found twice counts once; PEFT times against the thesis' matching figures; one setting per method
chosen on validation; soup and OOD columns."""
import hashlib
import importlib
import os
import sys

import numpy as np
import pytest
import torch
from conftest import REPO

from lib.analysis import report as R
from lib.infra.errors import UserError
from lib.infra.files import save_json, save_weights

BASE = {"method": "StarSSE", "seed": 0, "pretrained": ["ckpt1.pt"], "dataset": "digits", "arch": "resnet_mini",
        "epochs": 25, "lr": 0.05, "cycle_lr": 0.1, "cycle_epochs": 12, "members": 5, "batch_size": 256,
        "weight_decay": 1e-4, "momentum": 0.9, "freeze": "none", "frozen_bn": "eval", "cache_dir": "runs/cache",
        "data_dir": None, "quiet": True, "with_tracking": False}


def make_run(root, name, config=None, metrics=None, weights=None, record_digest=False):
    """A finished run: config.json (BASE + config), metrics.json (defaults + metrics); with `weights` (an int), member
    files whose weights are made from it (the same int: the same weights), their records holding the weights' sha256
    when record_digest."""
    d = os.path.join(root, name)
    cfg = dict(BASE, output_dir=d, **(config or {}))
    m = cfg["members"]
    met = {"members": m, "avg_member_accuracy": 85.0, "diversity": 60.0, "ensemble_accuracy": 87.0, "nll": 0.5,
           "ece": 0.05, "member_accuracy": [85.0] * m, "ensemble_accuracy_by_size": [86.0] * m,
           "method": cfg["method"], "seed": cfg["seed"], "member_seconds": [25.0] + [12.0] * (m - 1),
           "member_seconds_per_epoch": [1.0] * m, "member_trainable_fraction": [1.0] * m}
    met.update(metrics or {})
    save_json(os.path.join(d, "config.json"), cfg)
    save_json(os.path.join(d, "metrics.json"), met)
    if weights is not None:
        for i in range(1, m + 1):
            path = os.path.join(d, f"member_{i}.safetensors")
            save_weights(path, {"w": torch.full((4,), float(100 * weights + i))})
            record = {"seconds": met["member_seconds"][i - 1]}
            if record_digest:
                record["sha256"] = {"weights": hashlib.sha256(open(path, "rb").read()).hexdigest()}
            save_json(os.path.join(d, f"member_{i}.json"), record)
    return d


def _script(name):
    if os.path.join(REPO, "scripts") not in sys.path:
        sys.path.insert(0, os.path.join(REPO, "scripts"))
    return importlib.import_module(name)


def _main(script, monkeypatch, *args):
    monkeypatch.setattr(sys, "argv", [script, *map(str, args)])
    _script(script).main()


def _row(table, label):
    return next(line for line in table.splitlines() if line.startswith(f"| {label} |"))


def test_rows_are_settings_not_seeds_or_checkpoints(tmp_path):
    make_run(tmp_path, "star/a", metrics={"ensemble_accuracy": 87.0})
    # another seed and checkpoint, other paths and logging: the same setting
    make_run(tmp_path, "star/b", {"seed": 1, "pretrained": ["ckpt2.pt"], "cache_dir": "/c", "data_dir": "/d",
                                  "quiet": False, "with_tracking": True}, {"ensemble_accuracy": 88.0})
    make_run(tmp_path, "star/c", {"cycle_lr": 0.2}, {"ensemble_accuracy": 86.0})
    d = make_run(tmp_path, "star/d", {"cycle_lr": 0.2, "seed": 1}, {"ensemble_accuracy": 85.0})
    cfg = R.load_json(os.path.join(d, "config.json"))
    del cfg["frozen_bn"]  # a run older than --frozen_bn: it had today's default (lib.settings.schema.LEGACY), no new setting
    save_json(os.path.join(d, "config.json"), cfg)
    for s, acc in [(0, 86.0), (1, 87.0)]:
        make_run(tmp_path, f"lde/{s}", {"method": "Local DE", "seed": s, "pretrained": [f"ckpt{s}.pt"]},
                 {"ensemble_accuracy": acc})
    summary = R.summarize_groups(R.load_runs([str(tmp_path)]))
    assert list(summary) == ["Local DE", "StarSSE cycle_lr=0.1", "StarSSE cycle_lr=0.2"]
    assert [r["runs"] for r in summary.values()] == [2, 2, 2]
    assert [r["ensemble_accuracy"][0] for r in summary.values()] == [86.5, 87.5, 85.5]
    assert summary["StarSSE cycle_lr=0.2"]["ensemble_accuracy"][1] == pytest.approx(np.sqrt(0.5))
    # --group_by still decides: every StarSSE in one row
    pooled = R.summarize_groups(R.load_runs([str(tmp_path)], ("method",)))
    assert pooled["StarSSE"]["runs"] == 4 and pooled["StarSSE"]["ensemble_accuracy"][0] == 86.5


def test_ensemble_sizes_are_never_averaged_together(tmp_path, monkeypatch):
    make_run(tmp_path, "a", metrics={"ensemble_accuracy": 87.0})
    make_run(tmp_path, "b", {"seed": 1}, {"ensemble_accuracy": 87.4})
    make_run(tmp_path, "c", {"members": 15}, {"ensemble_accuracy": 88.0})
    for group_by in [None, ("method",), ("method", "cycle_lr")]:
        summary = R.summarize_groups(R.load_runs([str(tmp_path)], group_by))
        sizes = {lab: (r["members"], r["runs"], r["ensemble_accuracy"][0]) for lab, r in summary.items()}
        assert sorted(sizes.values()) == [([5], 2, pytest.approx(87.2)), ([15], 1, 88.0)], group_by
    out = tmp_path / "out"
    _main("report", monkeypatch, tmp_path, "--group_by", "method", "--out", out)
    table = (out / "report.md").read_text()
    assert "| StarSSE members=5 | 2 | 5 | " in table and "| StarSSE members=15 | 1 | 15 | " in table


def test_a_run_found_twice_counts_once(tmp_path, monkeypatch):
    # a grid point equal to a core run (cycle lr 0.1, 12 epochs): same settings and seed, same weights
    core = make_run(tmp_path, "core/starsse/ckpt1-seed0", weights=7, metrics={"ensemble_accuracy": 87.0})
    grid = make_run(tmp_path, "grid/starsse-lr2x-ep0.5x/ckpt1-seed0", weights=7, record_digest=True,
                    metrics={"ensemble_accuracy": 87.0})
    # seed 1 twice, trained again with other weights (GPU non-determinism): a pseudo-replicate, still one run
    core1 = make_run(tmp_path, "core/starsse/ckpt1-seed1", {"seed": 1}, {"ensemble_accuracy": 88.0}, weights=8)
    repeat = make_run(tmp_path, "grid/starsse-lr2x-ep0.5x/ckpt1-seed1", {"seed": 1},
                      {"ensemble_accuracy": 89.0}, weights=9)
    # seed 1 of another checkpoint: another run
    make_run(tmp_path, "core/starsse/ckpt2-seed1", {"seed": 1, "pretrained": ["ckpt2.pt"]}, {"ensemble_accuracy": 86.0},
             weights=10)
    col = R.collect([str(tmp_path)])
    # the grid run has the recorded digest, the core run's file is hashed; the run-directory order keeps the core runs
    assert col.dropped == [(grid, core), (repeat, core1)]
    assert [d for d, _o in col.repeats] == [repeat]  # the one with other weights
    summary, table = R.results_table(col)
    assert summary["StarSSE"]["runs"] == 3 and summary["StarSSE"]["ensemble_accuracy"][0] == 87.0  # 87, 88, 86
    assert "2 duplicate run(s) dropped" in table and grid in table
    assert "1 of them with other member weights" in table and repeat in table
    # the thesis report counts them once too, and says so
    out = tmp_path / "tr"
    _main("thesis_report", monkeypatch, tmp_path, "--skip", "representations", "diversity", "subsets", "--out", out)
    index = (out / "index.md").read_text()
    assert "(2 duplicate run(s) dropped)" in index and "| StarSSE | 3 | 5 |" in index
    assert len((out / "runs.csv").read_text().strip().splitlines()) == 1 + 3


def _timed(root, name, config, per_epoch, members=5):
    """A run whose phase I took 25 epochs of 1 s and whose cycles took cycle_epochs epochs of per_epoch s."""
    cfg = dict(config, members=members)
    epochs = cfg.get("cycle_epochs", 12)
    return make_run(root, name, cfg, {
        "member_seconds": [25.0] + [epochs * per_epoch] * (members - 1),
        "member_seconds_per_epoch": [1.0] + [per_epoch] * (members - 1),
        "member_trainable_fraction": [1.0] + [0.9] * (members - 1)})


def test_peft_time_columns_compare_like_with_like(tmp_path):
    # StarSSE at two cycle lrs (rows with key=value suffixes): 1 s per epoch, 25 + 4 x 12 = 73 s per ensemble
    _timed(tmp_path, "star/lr1", {"cycle_lr": 0.1}, 1.0)
    _timed(tmp_path, "star/lr2", {"cycle_lr": 0.2}, 1.0)
    # longer cycles, slower epochs: another cycle setting, never the baseline of 12-epoch cycles
    _timed(tmp_path, "star/long", {"cycle_lr": 0.1, "cycle_epochs": 24}, 3.0)
    # frozen stages with the thesis' epoch-time cuts: 1.66, 2.5, 3.125 times
    for freeze, cut in [("stage4", 1.66), ("stage5", 2.5), ("head", 3.125)]:
        for mult in (3, 4):
            _timed(tmp_path, f"{freeze}/x{mult}", {"method": f"StarSSE (freeze {freeze})", "freeze": freeze,
                                                   "cycle_lr": 0.05 * mult, "cycle_lr_mult": mult}, 1 / cut)
    for s in (0, 1):  # Local DE: 5 phase-I fine-tunes of 25 epochs of 1 s
        make_run(tmp_path, f"lde/{s}", {"method": "Local DE", "seed": s}, {"member_seconds": [25.0] * 5})
    summary = R.summarize_groups(R.load_runs([str(tmp_path)]))
    for freeze, cut in [("stage4", 1.66), ("stage5", 2.5), ("head", 3.125)]:
        row = summary[f"StarSSE (freeze {freeze}) cycle_lr=0.15 cycle_lr_mult=3"]
        assert row["epoch_time"] == pytest.approx(1 / cut)
        assert row["ensemble_time"] == pytest.approx((25 + 48 / cut) / 73)  # the thesis' (25 + 48 / 1.66) / 73
        assert row["thesis_time"] == pytest.approx((1 / cut, {"stage4": 0.74, "stage5": 0.60, "head": 0.55}[freeze]))
    assert summary["StarSSE cycle_epochs=24 cycle_lr=0.1"]["epoch_time"] == pytest.approx(1.0)  # its own baseline
    assert summary["StarSSE cycle_epochs=12 cycle_lr=0.2"]["ensemble_time"] == pytest.approx(1.0)
    table = R.markdown_table(summary)
    assert "epoch time vs StarSSE | ensemble time vs StarSSE |" in table.splitlines()[0]
    assert _row(table, "StarSSE (freeze stage4) cycle_lr=0.2 cycle_lr_mult=4").endswith(
        "| 90.0 % | x0.60 (thesis x0.60) | x0.74 (thesis x0.74) |")
    assert _row(table, "StarSSE (freeze stage5) cycle_lr=0.15 cycle_lr_mult=3").endswith(
        "| x0.40 (thesis x0.40) | x0.61 (thesis x0.60) |")
    assert _row(table, "StarSSE (freeze head) cycle_lr=0.2 cycle_lr_mult=4").endswith(
        "| x0.32 (thesis x0.32) | x0.55 (thesis x0.55) |")
    # Local DE: every member a 25-epoch fine-tune of 1 s epochs: x1.00 per epoch, 125 / 73 for the ensemble
    assert _row(table, "Local DE").endswith("| 100.0 % | x1.00 | x1.71 |")


def _selectable(root, missing_val=False):
    for k, (lr, val, test) in enumerate([(0.1, 88.0, 87.0), (0.1, 88.2, 87.2), (0.2, 87.0, 87.6), (0.2, 87.4, 87.8)]):
        make_run(root, f"star/{k}", {"cycle_lr": lr, "seed": k},
                 {"val_ensemble_accuracy": None if missing_val and k == 3 else val, "ensemble_accuracy": test})
    make_run(root, "lde", {"method": "Local DE"}, {"val_ensemble_accuracy": 86.0, "ensemble_accuracy": 86.5})


def test_select_by_validation_and_test(tmp_path, monkeypatch, capsys):
    _selectable(tmp_path)
    out = tmp_path / "out"
    _main("report", monkeypatch, tmp_path, "--select_by", "val", "--out", out)
    table = (out / "report.md").read_text()
    assert "| **StarSSE cycle_lr=0.1** (selected) | 2 | 5 |" in table  # val 88.1 against 87.2
    assert "| StarSSE cycle_lr=0.2 | 2 | 5 |" in table
    assert "selected by the validation ensemble accuracy (`val_ensemble_accuracy`, mean over runs)" in table
    assert "| StarSSE | cycle_lr=0.1 | val 88.10 (the other setting: 87.20) | 2 | 5 | 85.00 ± 0.00 | " \
           "60.00 ± 0.00 | 87.10 ± 0.14 |" in table
    assert "| Local DE | - | val 86.00 (the only setting) | 1 | 5 |" in table and "optimistic" not in table
    summary, table = R.results_table(R.collect([str(tmp_path)]), "test")  # the test set picks the other setting
    assert "| **StarSSE cycle_lr=0.2** (selected) |" in table and "optimistic" in table
    assert "| StarSSE | cycle_lr=0.2 | test 87.70 (the other setting: 87.10) |" in table
    assert "(selected)" not in R.results_table(R.collect([str(tmp_path)]))[1]  # default: none
    # a 15-member run validates best, but a larger ensemble is no better setting of the 5-member ones
    make_run(tmp_path, "star15", {"members": 15}, {"val_ensemble_accuracy": 90.0, "ensemble_accuracy": 89.0})
    _s, table = R.results_table(R.collect([str(tmp_path)]), "val")
    assert "| **StarSSE cycle_lr=0.1 members=5** (selected) |" in table
    assert "| StarSSE, M=5 | cycle_lr=0.1 members=5 | val 88.10 (the other setting: 87.20) |" in table
    assert "| StarSSE, M=15 | cycle_lr=0.1 members=15 | val 90.00 (the only setting) |" in table


def test_selected_settings_feed_the_final_retrain(tmp_path, monkeypatch):
    """--select_by writes each method's chosen setting as a --config file (the paper's protocol: select on validation,
    then retrain that setting on the full training set); the training scripts' parser reads it back."""
    import yaml
    from conftest import settings
    _selectable(tmp_path)
    out = tmp_path / "out"
    _main("report", monkeypatch, tmp_path, "--select_by", "val", "--out", out)
    chosen = {p.name: yaml.safe_load(p.read_text()) for p in sorted((out / "selected").iterdir())}
    assert chosen == {"local_de.yaml": {"method": "Local DE"}, "starsse.yaml": {"method": "StarSSE", "cycle_lr": 0.1}}
    final = settings(["--config", out / "selected" / "starsse.yaml", "--cycle_epochs", "3"], "StarSSE", "starsse.py")
    assert (final.cycle_lr, final.cycle_epochs, final.val_split) == (0.1, 3, None)  # the whole training set
    with pytest.raises(UserError, match="holds a Local DE run; this script runs StarSSE"):
        settings(["--config", out / "selected" / "local_de.yaml"], "StarSSE", "starsse.py")
    _main("report", monkeypatch, tmp_path, "--select_by", "test", "--out", out)  # another selection replaces it
    assert yaml.safe_load((out / "selected" / "starsse.yaml").read_text())["cycle_lr"] == 0.2
    _main("report", monkeypatch, tmp_path, "--out", out)  # none: no file a final stage could read by mistake
    assert list((out / "selected").iterdir()) == []


def test_select_by_val_without_validation_stops(tmp_path, monkeypatch, capsys):
    _selectable(tmp_path, missing_val=True)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        _main("report", monkeypatch, tmp_path, "--select_by", "val", "--out", out)
    lines = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: --select_by val needs the validation ensemble accuracy") and "1 of 5" in lines[0]
    assert not out.exists()  # nothing written


def test_soup_and_ood_columns(tmp_path):
    for k, (soup, auroc) in enumerate([(80.0, 0.9), (82.0, 0.8), (None, None)]):
        make_run(tmp_path, f"star/{k}", {"seed": k}, {"soup/uniform/acc": soup, "ood/noise/entropy/auroc": auroc,
                                                      "nll": None if k == 2 else 0.5})
    make_run(tmp_path, "lde", {"method": "Local DE"})
    col = R.collect([str(tmp_path)])
    _summary, table = R.results_table(col, ood=["noise/entropy"])
    head = table.splitlines()[0]
    assert head.startswith("| Algorithm | runs | M | avg. acc. | div. | ens. acc. | NLL | ECE | uniform soup | "
                           "AUROC noise/entropy |")
    assert _row(table, "StarSSE").startswith("| StarSSE | 3 | 5 | 85.00 ± 0.00 | 60.00 ± 0.00 | 87.00 ± 0.00 | "
                                             "0.500 ± 0.000 | 0.050 ± 0.000 | 81.00 ± 1.41 | 0.850 ± 0.071 |")
    assert _row(table, "Local DE").endswith("| 0.050 | - | - | 100.0 % | x1.00 | x1.00 |")
    # without the keys, the table is unchanged; an asked OOD column that no run has is named below it
    plain = tmp_path / "plain"
    for k in range(2):
        make_run(plain, f"star/{k}", {"seed": k})
    col = R.collect([str(plain)])
    _s, before = R.results_table(col)
    _s, after = R.results_table(col, ood=["noise/entropy"])
    assert after.startswith(before)
    assert after[len(before):].strip() == "--ood_column noise/entropy: no run has it (available: none)."
    assert "uniform soup" not in before and "AUROC" not in before
    with pytest.raises(UserError, match="must be SET/SCORE"):
        R.ood_key("noise")


def test_rows_and_legends_name_only_the_settings_that_differ_short_in_plots(tmp_path):
    """report.md rows leave unset settings out (no 'dataset_name=None'); the plots' legends abbreviate the settings
    that differ among a method's rows, shorten paths, sit beside the axes and carry a key under them."""
    runs = []
    for i, (method, clr, cep, folder) in enumerate([("StarSSE", 0.1, 12, "/data/a/cifar_train_folder"),
                                                    ("StarSSE", 0.2, 12, "/data/a/cifar_train_folder"),
                                                    ("StarSSE", 0.1, 24, None), ("SSE", 0.1, 12, None)]):
        cfg = {"method": method, "cycle_lr": clr, "cycle_epochs": cep, "train_dir": folder, "seed": 0}
        met = {"members": 2, "member_accuracy": [80.0 + i, 81.0], "ensemble_accuracy_by_size": [80.0 + i, 82.0]}
        runs.append((None, f"d{i}", cfg, met))
    keys = R.group_keys({d: c for _l, d, c, _m in runs})
    runs = [(R.label(c, keys[d]), d, c, m) for _l, d, c, m in runs]
    assert [r[0] for r in runs] == ["StarSSE cycle_epochs=12 cycle_lr=0.1 train_dir=/data/a/cifar_train_folder",
                                    "StarSSE cycle_epochs=12 cycle_lr=0.2 train_dir=/data/a/cifar_train_folder",
                                    "StarSSE cycle_epochs=24 cycle_lr=0.1", "SSE"]
    summary = R.summarize_groups(runs)
    short, key_table = R.legend_labels(summary)
    assert short[runs[0][0]] == "StarSSE ce=12 cl=0.1 td=cifar_train~" and short["SSE"] == "SSE"
    assert short[runs[2][0]] == "StarSSE ce=24 cl=0.1"
    assert key_table == [("ce", "cycle_epochs"), ("cl", "cycle_lr"), ("td", "train_dir")]
    assert R._abbreviation("cycle_lr", {"cl"}) == "cl2" and R._abbreviation("momentum", set()) == "mome"
    R.plot_curves(summary, "by_size", "ensemble test accuracy (%)", tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 10_000
