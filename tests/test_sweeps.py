"""Sweep files: every command they would launch parses with the scripts' flags (dry run with LAUNCH=echo)."""
import os
import shlex
import subprocess

import pytest

from conftest import REPO, parse

SWEEPS = ["cifar100_core.sh", "cifar100_cycle_grid.sh", "cifar100_similarity.sh", "cifar100_peft.sh",
          "cifar100_diversity.sh"]


@pytest.mark.parametrize("sweep", SWEEPS)
def test_sweep_commands_parse(tmp_path, sweep):
    for i in range(1, 6):
        (tmp_path / f"byol-1000ep-{i}.pt").write_bytes(b"")
    env = dict(os.environ, LAUNCH="echo", PY="echo", DATA=str(tmp_path), CKPT_DIR=str(tmp_path), OUT=str(tmp_path / "o"))
    r = subprocess.run(["bash", os.path.join(REPO, "sweeps", sweep)], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    commands = [shlex.split(line) for line in r.stdout.splitlines() if line.startswith("scripts/")]
    assert commands
    scripts = set()
    for cmd in commands:
        script, flags = cmd[0], cmd[1:]
        scripts.add(os.path.basename(script))
        if script.endswith("report.py"):
            continue
        args = parse(flags, script)
        assert args.dataset == "cifar100" and args.epochs == 25 and args.lr == 0.05 and args.batch_size == 256
        assert args.weight_decay == 1e-4
    if sweep == "cifar100_core.sh":
        assert scripts == {"sse.py", "starsse.py", "finetune.py", "report.py"}
        assert sum("--members" in c and "5" in c for c in commands) >= 12 + 6
        assert len([c for c in commands if c[0].endswith("finetune.py") and c.count("--pretrained") == 1
                    and len(c) - c.index("--pretrained") > 5 and c[c.index("--pretrained") + 5].endswith("5.pt")]) == 3
    elif sweep == "cifar100_cycle_grid.sh":
        assert len(commands) == 2 * 2 * 5 * 4 * 2 + 1
    elif sweep == "cifar100_similarity.sh":
        alphas = sorted({float(c[c.index("--alpha") + 1]) for c in commands if "--similarity" in c and "rtd" in c
                         and "--star" not in c})
        assert alphas == [0.0316, 0.1, 0.316, 1, 3.16, 10]
        alphas = sorted({float(c[c.index("--alpha") + 1]) for c in commands if "mse" in c and "--star" not in c})
        assert alphas == [0.1, 1, 10, 20, 40]
    elif sweep == "cifar100_diversity.sh":
        ce = {(c[c.index("--mode") + 1], float(c[c.index("--alpha") + 1])) for c in commands if c[0].endswith("_ce.py")}
        assert ce == {(m, a) for m in ("all", "incorrect") for a in (0.00316, 0.01, 0.0316, 0.1, 0.316)}
        wo = sorted(float(c[c.index("--alpha") + 1]) for c in commands if c[0].endswith("_wo.py"))
        assert sorted(set(wo)) == [-31.6, -10, -3.16, 1, 3.16, 10, 31.6]
    elif sweep == "cifar100_peft.sh":
        grid = {(c[c.index("--freeze") + 1], float(c[c.index("--cycle_lr_mult") + 1])) for c in commands
                if c[0].endswith("starsse.py")}
        assert grid == {(f, float(m)) for f in ("stage4", "stage5", "head") for m in range(1, 7)}
        assert {c[c.index("--freeze") + 1] for c in commands if c[0].endswith("peft_freeze.py")} == {"stage4", "stage5", "head"}
