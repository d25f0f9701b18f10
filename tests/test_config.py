"""The command line and --config go through the same parsing and the same checks (lib/cli/parser.py): a wrong type,
an unknown choice or an unknown key is one line and exit 2 before anything is written, a list flag takes a scalar or
a list, what config.json records is what ran, and every evaluation-set spec is checked and opened before training."""
import json
import os

import pytest
import yaml
from conftest import settings

from lib.infra.errors import UserError


def _yaml(tmp_path, **values):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.mark.parametrize("values, message", [
    ({"optimizer": "adam"}, "unknown --optimizer 'adam' (choose from sgd, adamw)"),
    ({"dataset": "foo"}, "unknown --dataset 'foo'"),
    ({"epochs": [1, 2]}, "epochs takes one value"),
    ({"epochs": 1.5}, "argument --epochs: invalid int value: '1.5'"),
    ({"compile": "yes"}, "compile must be true or false"),
    ({"learning_rate": 0.1}, "unknown setting(s) learning_rate"),
    ({"ood_dataset": "nosie"}, "unknown evaluation set 'nosie'"),
    ({"ood_dataset": ["noise", "bogus"]}, "unknown evaluation set 'bogus'"),
])
def test_a_bad_config_file_is_one_line_and_exit_2_before_anything_is_written(tmp_path, script_here, cache_dir,
                                                                              values, message):
    out = tmp_path / "run"
    r = script_here("sse.py", "--cpu", "--config", _yaml(tmp_path, **values), "--cache_dir", cache_dir,
                    "--output_dir", out)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and message in r.stderr, r.stderr
    assert r.stderr.startswith("error: --config ") or "unknown setting" in r.stderr or "evaluation set" in r.stderr
    assert not out.exists()


@pytest.mark.parametrize("flags, message", [
    (["--ood_dataset", "bogus"], "unknown evaluation set 'bogus'"),
    (["--ood_dataset", "noise", "--ood_dataset", "nosie"], "unknown evaluation set 'nosie'"),
    (["--shift_dataset", "imagefolder:/nonexistent"], "folder not found: /nonexistent"),
    (["--ood_dataset", "cifar-c:"], "the folder or name after 'cifar-c:' is missing"),
])
def test_bad_evaluation_sets_on_the_command_line_stop_before_training(tmp_path, script_here, cache_dir, flags,
                                                                      message):
    out = tmp_path / "run"
    r = script_here("starsse.py", "--cpu", *flags, "--cache_dir", cache_dir, "--output_dir", out)
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not out.exists()


def test_an_evaluation_set_that_cannot_be_opened_stops_the_run_before_its_folder_is_written(tmp_path, tiny):
    """A well-formed spec whose folder holds no image is opened (and refused) when the experiment starts, not after
    every member has trained."""
    from lib.training.experiment import Experiment
    (tmp_path / "empty").mkdir()
    cfg = settings(tiny + ["--ood_dataset", f"imagefolder:{tmp_path / 'empty'}", "--output_dir", tmp_path / "run"])
    with pytest.raises(UserError, match="no image"):
        Experiment(cfg)
    assert not (tmp_path / "run").exists()


def test_list_flags_take_a_scalar_or_a_list_and_the_command_line_overrides_the_file(tmp_path, tiny):
    ckpt = settings(tiny).pretrained[0]
    cfg = settings(tiny + ["--config", _yaml(tmp_path, pretrained=ckpt, ood_dataset="noise", layers="stage4")],
                   script="sse_rtd.py")
    assert cfg.pretrained == [ckpt] and cfg.ood_dataset == ["noise"] and cfg.layers == ["stage4"]
    cfg = settings(tiny + ["--config", _yaml(tmp_path, ood_dataset=["noise", "flipped"], lr=0.03, sync_bn=False),
                           "--ood_dataset", "permuted"])
    assert cfg.ood_dataset == ["permuted"] and cfg.lr == 0.03 and cfg.sync_bn is False  # the command line's list


def test_the_optimizer_a_config_file_names_is_the_one_that_trains(tmp_path, tiny, monkeypatch):
    """optimizer: adamw in the YAML gives an AdamW object in the training loop, and config.json records adamw."""
    import torch

    from lib.training import loop
    from lib.training.experiment import Experiment
    made = []
    real = loop.make_optimizer
    monkeypatch.setattr(loop, "make_optimizer", lambda *a, **k: made.append(real(*a, **k)) or made[-1])
    out = tmp_path / "run"
    cfg = settings(tiny + ["--config", _yaml(tmp_path, optimizer="adamw", weight_decay=0.05), "--members", "1",
                           "--epochs", "1", "--output_dir", out], "Fine-tune")
    exp = Experiment(cfg)
    exp.finetune(1)
    exp.finish()
    assert made and all(isinstance(o, torch.optim.AdamW) for o in made)
    assert {g["weight_decay"] for g in made[0].param_groups} == {0.0, 0.05}  # none on norms and biases
    recorded = json.loads((out / "config.json").read_text())
    assert recorded["optimizer"] == "adamw" and recorded["weight_decay"] == 0.05
    again = yaml.safe_load((out / "config.yaml").read_text())
    assert settings(["--config", out / "config.yaml"], "Fine-tune").as_dict() == \
        {**{k: v for k, v in recorded.items() if k != "processes"}, "config": str(out / "config.yaml")} and \
        again["optimizer"] == "adamw"
    assert os.path.exists(out / "metrics.json")


def test_cycle_settings_follow_phase_one_unless_set_and_a_multiple_must_agree(tiny):
    """Unless set, cycles follow phase I by the paper's ratios (2x lr, 0.5x epochs, rounded down); digits' and
    CIFAR-100's defaults give the numbers they always had; a value and a multiple that disagree are refused."""
    assert (settings(["--cpu"]).cycle_lr, settings(["--cpu"]).cycle_epochs) == (0.02, 20)
    assert (settings(["--cpu", "--epochs", "25", "--lr", "0.05"]).cycle_lr,
            settings(["--cpu", "--epochs", "25", "--lr", "0.05"]).cycle_epochs) == (0.1, 12)
    assert settings(["--cpu", "--epochs", "3", "--cycle_epochs_mult", "0.2"]).cycle_epochs == 1  # at least one
    assert settings(["--cpu", "--epochs", "10", "--cycle_epochs_mult", "2"]).cycle_epochs == 20
    assert settings(["--cpu", "--cycle_lr", "0.03", "--cycle_lr_mult", "3"]).cycle_lr == 0.03
    with pytest.raises(UserError, match=r"--cycle_lr 0.5 and --cycle_lr_mult 3.0 disagree \(3.0 x --lr 0.01 gives"):
        settings(["--cpu", "--cycle_lr", "0.5", "--cycle_lr_mult", "3"])
    with pytest.raises(UserError, match="--cycle_epochs_mult must be positive"):
        settings(["--cpu", "--cycle_epochs_mult", "0"])
