"""Scripts end to end: bad input gives one clear line and a non-zero exit, and nothing saved is touched."""
import hashlib
import os

import numpy as np
import pytest
import torch
from conftest import run_script, run_scripts

from lib.infra.files import load_json
from lib.models.backbones import build_model
from lib.models.checkpoints import read_checkpoint
from lib.training.pretrain import default_checkpoint


def _one_error_line(r, pattern):
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and pattern in lines[0], r.stderr


def _digest(folder):
    h = hashlib.sha256()
    for name in sorted(os.listdir(folder)):
        h.update(name.encode())
        with open(os.path.join(folder, name), "rb") as f:
            h.update(f.read())
    return h.hexdigest()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("finished") / "run"
    r = run_script("finetune.py", "--cpu", "--quiet", "--epochs", "2", "--cache_dir", cache_dir, "--output_dir", out)
    assert r.returncode == 0, r.stderr
    return out


def test_bad_inputs(tmp_path, cache_dir, finished_run):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(64))
    foreign = tmp_path / "foreign.pt"
    torch.save({"encoder.weight": torch.zeros(3), "head.bias": torch.zeros(2)}, foreign)
    base = ["--cpu", "--quiet", "--cache_dir", cache_dir]
    cases = [
        (["--pretrained", tmp_path / "missing.pt"], "checkpoint not found"),
        (["--pretrained", garbage], "could not be read"),
        (["--pretrained", foreign], "unknown key layout"),
        (["--arch", "resnet51"], "unknown arch 'resnet51'"),
        (["--dataset", "cifar100", "--data_dir", tmp_path / "no_cifar", "--pretrained", foreign], "data directory not found"),
        (["--epochs", "0"], "--epochs must be positive"),
        (["--members", "-1"], "--members must be positive"),
        (["--lr", "nan"], "--lr must be a non-negative number"),
    ]
    outs = [tmp_path / f"out{i}" for i in range(len(cases))]
    results = run_scripts([("starsse.py", *base, *flags, "--output_dir", out) for (flags, _), out in zip(cases, outs)])
    for (_, pattern), out, r in zip(cases, outs, results):
        _one_error_line(r, pattern)
        assert not out.exists()  # nothing was written


def test_output_dir_holding_a_different_run_is_refused_untouched(finished_run, cache_dir):
    before = _digest(finished_run)
    r = run_script("finetune.py", "--cpu", "--quiet", "--epochs", "3", "--cache_dir", cache_dir,
                   "--output_dir", finished_run)
    _one_error_line(r, "holds a different run (epochs: 2 -> 3)")
    assert _digest(finished_run) == before


def test_rerunning_a_finished_run_trains_nothing_and_keeps_its_result(finished_run, cache_dir):
    before = _digest(finished_run)
    r = run_script("finetune.py", "--cpu", "--quiet", "--epochs", "2", "--cache_dir", cache_dir,
                   "--output_dir", finished_run)
    assert r.returncode == 0, r.stderr
    assert _digest(finished_run) == before  # metrics.json rewritten with identical content


def test_pretrain_writes_an_independent_checkpoint_in_the_real_layout(tmp_path, cache_dir):
    out = tmp_path / "p.safetensors"
    r = run_script("pretrain.py", "--seed", "5", "--epochs", "1", "--output", out)
    assert r.returncode == 0, r.stderr
    state = read_checkpoint(str(out))
    model = build_model("resnet_mini", 10)
    assert set(state) == {k for k in model.state_dict() if not k.startswith("fc.")}  # torchvision keys, no fc
    seed0, seed1 = (read_checkpoint(default_checkpoint(cache_dir, s)) for s in (0, 1))
    assert not torch.equal(seed0["layer4.0.conv1.weight"], seed1["layer4.0.conv1.weight"])  # independent seeds
    _one_error_line(run_script("pretrain.py", "--epochs", "0"), "--epochs must be positive")


def test_evaluate_and_report(tmp_path, finished_run):
    r = run_script("evaluate.py", finished_run)
    assert r.returncode == 0, r.stderr
    m = load_json(finished_run / "metrics.json")
    probs = np.load(finished_run / "member_1_probs.npy")
    labels = np.load(finished_run / "labels.npy")
    assert m["member_accuracy"][0] == pytest.approx(100 * np.mean(probs.argmax(1) == labels))
    r = run_script("report.py", finished_run.parent, "--out", tmp_path / "rep")
    assert r.returncode == 0, r.stderr
    assert "| Fine-tune | 1 | 1 |" in r.stdout
    for name in ("report.md", "runs.csv", "ensemble_by_size.png", "member_accuracy.png"):
        assert (tmp_path / "rep" / name).stat().st_size > 0
    _one_error_line(run_script("evaluate.py", tmp_path), "not a run directory")
    _one_error_line(run_script("report.py", tmp_path / "rep"), "no finished run")


def test_config_diff_tolerates_arguments_added_later_at_their_neutral_value():
    from lib.runs.rundir import config_diff
    old = {"lr": 0.1, "seed": 0, "output_dir": "a"}
    assert config_diff(old, {**old, "freeze": "none", "output_dir": "b"}) == []
    assert config_diff(old, {**old, "freeze": "stage4"}) == ["freeze: None -> 'stage4'"]
    assert config_diff(old, {**old, "lr": 0.2}) == ["lr: 0.1 -> 0.2"]
