"""Runs say what they do: the first line names the run folder (absolute) and what will be trained, the one-off
pre-training of the embedded checkpoint says so, the last line names where the results are."""
import os

from conftest import settings


def test_first_line_names_the_folder_and_the_plan_and_the_last_line_the_results(tmp_path, tiny, script_here):
    out = tmp_path / "rel"
    r = script_here("sse.py", *tiny, "--standard", "--output_dir", os.path.relpath(out))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0] == (f"[Standard SSE] {out}: member 1 (a cycle of 1 epochs restarted at lr 0.02), then 2 cycle(s) "
                        f"of 1 epochs restarted at lr 0.02; digits, resnet_mini at 16 px, batch 16, on cpu")
    assert lines[-1] == f"results: {out / 'metrics.json'} (members and their predictions in {out})"


def test_the_plan_of_each_kind_of_method():
    from lib.training.experiment import plan
    base = ["--cpu", "--epochs", "6", "--members", "3", "--lr", "0.05"]
    star = settings(base + ["--output_dir", "x"], "StarSSE (freeze stage4)")
    assert plan(star, "cpu").startswith(f"[StarSSE (freeze stage4)] {os.path.abspath('x')}: member 1 (phase I: 6 "
                                        f"epochs at lr 0.05), then 2 cycle(s) of 3 epochs restarted at lr 0.1, "
                                        f"training the stages from stage4 on;")  # the paper's ratios: 0.5x, 2x
    de = settings(base, "Local DE")
    assert ": 3 fine-tune(s) of 6 epochs at lr 0.05;" in plan(de, "cpu")


def test_the_one_off_pretraining_says_so(tmp_path, fresh_cache, monkeypatch, capsys):
    """A cache without the embedded checkpoint: the run says it pre-trains it once, and where it goes."""
    import shutil

    from lib.training import experiment
    calls, made = [], fresh_cache()

    def fake_pretrain(path, **kw):  # a copy of the fixture's checkpoint: the run goes on as after a real one
        calls.append((path, kw))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        shutil.copy(os.path.join(made, "pretrained", os.path.basename(path)), path)
    monkeypatch.setattr(experiment, "pretrain_digits", fake_pretrain)
    cache = tmp_path / "empty_cache"
    cfg = settings(["--cpu", "--quiet", "--cache_dir", cache, "--output_dir", tmp_path / "run"], "StarSSE")
    experiment.Experiment(cfg)
    out = capsys.readouterr().out
    assert "pre-training it once (BYOL on the unlabelled digits" in out and str(cache.resolve()) in out
    assert calls and calls[0][1] == {"seed": 0, "verbose": False}
