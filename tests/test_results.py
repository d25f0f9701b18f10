"""metrics.json (lib/evaluation/registry.py, lib/evaluation/results.py): every key is registered and documented, derived
results follow the members they were computed from (a soup or OOD score of other members is dropped, the partial mark
is right), every OOD and shift number can be recomputed from the run folder, and the readers (report.py, the
analyses) check the members they rely on."""
import glob
import os
import shutil

import numpy as np
import pytest
from conftest import REPO, run_script
from scipy.special import softmax
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from lib.evaluation import registry as R
from lib.evaluation.results import load_set, member_digests, write_metrics
from lib.infra.errors import UserError
from lib.infra.files import load_json
from lib.runs.rundir import RunDir, open_run


def test_docs_metrics_page_is_the_registry():
    with open(os.path.join(REPO, "docs", "metrics.md")) as f:
        assert f.read() == R.markdown(), "docs/metrics.md is stale: python -m lib.evaluation.registry > docs/metrics.md"


def test_registry_lookup_groups_and_columns():
    assert R.lookup("ood/svhn/energy/fpr95_id").key == "ood/{set}/{score}/fpr95_id"
    assert R.lookup("shift/cifar-c/fog/3/acc").key == "shift/{set}/{part}/acc"  # a part's name holds a slash
    assert R.lookup("shift/cifar-c/severity_3/acc").key == "shift/{set}/severity_{severity}/acc"
    assert R.lookup("shift/cifar-c/acc").key == "shift/{set}/acc" and R.lookup("val_nll").unit == "nats"
    assert [R.group(k) for k in ("nll", "sel/acc@90", "cal/ts/nll", "soup/greedy/members", "ood/a/msp/auroc",
                                 "shift/b/fog/1/acc")] == ["run", "run", "run", "soup/greedy", "ood/a", "shift/b"]
    with pytest.raises(KeyError, match="not a registered"):
        R.lookup("ood/a/msp/auroc_typo")
    # the results table: the five columns in the thesis' order; optional soups only when present, in FIELDS order
    assert [k for k, _h, _d in R.columns(R.COLUMN)] == ["avg_member_accuracy", "diversity", "ensemble_accuracy", "nll",
                                                        "ece"]
    assert R.columns(R.OPTIONAL, {"soup/greedy/acc", "soup/uniform/acc"}) == [
        ("soup/uniform/acc", "uniform soup", 2), ("soup/greedy/acc", "greedy soup", 2)]
    assert R.header("ood/noise/entropy/auroc") == "AUROC noise/entropy" and R.show("nll", 0.12345) == "NLL 0.123"
    # every FPR95 and AUPR says which class is positive; diversity says why it can exceed 100
    for m in R.METRICS:
        if m.key.startswith("ood/") and ("fpr95" in m.key or "aupr" in m.key):
            assert "positive class" in m.definition, m.key
    assert "at most 200" in R.DIVERSITY.definition


@pytest.fixture(scope="module")
def run3(tmp_path_factory):
    """A finished 3-member StarSSE run with a validation split, and the command that trained it."""
    root = tmp_path_factory.mktemp("results")
    flags = ["--cpu", "--quiet", "--epochs", "2", "--cycle_epochs", "1", "--members", "3", "--pretrained", "scratch",
             "--val_split", "0.25", "--labels_per_class", "8", "--cache_dir", root / "cache"]
    r = run_script("starsse.py", *flags, "--output_dir", root / "run")
    assert r.returncode == 0, r.stderr
    return root / "run", flags


def _copy(run, tmp_path, name):
    shutil.copytree(run, tmp_path / name)
    return tmp_path / name


def _flip(path, offset=-7):
    data = bytearray(open(path, "rb").read())
    data[offset] ^= 0xFF
    open(path, "wb").write(bytes(data))


def test_derived_results_follow_their_members(run3, tmp_path, script_here):
    src, flags = run3
    run = _copy(src, tmp_path, "run")
    # the finished run: its 3-member soup and OOD score
    assert script_here("soup.py", run, "--cpu").returncode == 0
    assert script_here("evaluate.py", run, "--ood_dataset", "noise").returncode == 0
    full = load_json(run / "metrics.json")
    assert full["members"] == 3 and "partial" not in full and len(full["member_sha256"]) == 3
    assert full["member_sha256"] == member_digests(open_run(str(run)), 3)
    assert all(R.known(k) for k in full)  # every key written is registered
    weights_3 = (run / "member_3.safetensors").read_bytes()

    # member 3 and metrics.json deleted: the soup of the 2 members left, marked partial
    for f in glob.glob(str(run / "member_3*")) + [str(run / "metrics.json")]:
        os.remove(f)
    r = script_here("soup.py", run, "--cpu")
    assert r.returncode == 0 and "unfinished (2 of 3 members)" in r.stdout, r.stderr
    m = load_json(run / "metrics.json")
    assert m["partial"] is True and m["planned_members"] == 3 and m["members"] == 2
    assert m["soup/uniform/acc"] != full["soup/uniform/acc"]
    # an OOD set of the partial run: 2 members' scores, the soup of the same 2 members kept, still partial
    r = script_here("evaluate.py", run, "--partial", "--ood_dataset", "noise")
    assert r.returncode == 0 and "PARTIAL: 2 of 3" in r.stdout, r.stderr
    m2 = load_json(run / "metrics.json")
    assert m2["partial"] is True and m2["soup/uniform/acc"] == m["soup/uniform/acc"]
    assert m2["ood/noise/msp/auroc"] != full["ood/noise/msp/auroc"]
    assert len(load_json(run / "ood" / "noise" / "set.json")["member_sha256"]) == 2

    # the training command again: member 3 trained again; nothing computed from 2 members stays
    r = run_script("starsse.py", *flags, "--output_dir", run)
    assert r.returncode == 0, r.stderr
    m3 = load_json(run / "metrics.json")
    assert m3["members"] == 3 and "partial" not in m3 and "planned_members" not in m3
    assert not any(k.startswith(("soup/", "ood/")) for k in m3) and not (run / "ood").exists()
    assert "dropped ood/noise, soup/uniform" in r.stdout and f"scripts/soup.py {run} --mode uniform" in r.stdout
    assert f"scripts/evaluate.py {run} --ood_dataset noise" in r.stdout
    # member 3 is the same network as before (CPU training is deterministic): the recomputed results are the first ones
    assert (run / "member_3.safetensors").read_bytes() == weights_3
    assert m3["ensemble_accuracy"] == full["ensemble_accuracy"] and m3["member_sha256"] != full["member_sha256"]
    assert script_here("soup.py", run, "--cpu").returncode == 0
    assert script_here("evaluate.py", run, "--ood_dataset", "noise").returncode == 0
    m4 = load_json(run / "metrics.json")
    assert m4["soup/uniform/acc"] == full["soup/uniform/acc"]
    assert m4["ood/noise/msp/auroc"] == pytest.approx(full["ood/noise/msp/auroc"], abs=1e-12)

    # the one writer refuses a key the registry does not know, and members that changed under it
    live = open_run(str(run))
    with pytest.raises(ValueError, match="unregistered"):
        write_metrics(live, {**m4, "ensemble_acc": 1.0}, m4["member_sha256"])
    with pytest.raises(UserError, match="changed while it was evaluated"):
        write_metrics(live, m4, full["member_sha256"])


def test_ood_and_shift_numbers_recomputed_from_the_run_folder(run3, tmp_path, script_here):
    run = _copy(run3[0], tmp_path, "run")
    r = script_here("evaluate.py", run, "--ood_dataset", "noise", "--shift_dataset", "flipped")
    assert r.returncode == 0, r.stderr
    m = load_json(run / "metrics.json")
    # from the files alone: the members' test logits, the saved OOD logits, scikit-learn's metrics
    info, parts = load_set(open_run(str(run)), "ood", "noise")
    assert info["spec"] == "noise" and info["member_sha256"] == m["member_sha256"] and list(parts) == ["all"]
    test_logits = np.stack([np.load(run / f"member_{i}_logits.npy") for i in (1, 2, 3)])
    ood_logits = parts["all"][0]
    assert ood_logits.shape == (3, m["ood/noise/samples"], 10)
    y = np.r_[np.zeros(test_logits.shape[1]), np.ones(ood_logits.shape[1])]  # OOD positive
    scores = {"msp": lambda z: -softmax(z, -1).mean(0).max(-1),
              "energy": lambda z: -np.log(np.exp(z.mean(0)).sum(-1))}
    for name, score in scores.items():
        s = np.r_[score(test_logits.astype(np.float64)), score(ood_logits.astype(np.float64))]
        assert m[f"ood/noise/{name}/auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-9)
        assert m[f"ood/noise/{name}/aupr"] == pytest.approx(average_precision_score(y, s), abs=1e-9)
        fpr, tpr, _t = roc_curve(1 - y, -s, drop_intermediate=False)  # in-distribution positive (OpenOOD)
        assert m[f"ood/noise/{name}/fpr95_id"] == pytest.approx(fpr[np.argmax(tpr >= 0.95 - 1e-12)], abs=1e-12)
    info, parts = load_set(open_run(str(run)), "shift", "flipped")
    logits, labels = parts["all"]
    assert info["spec"] == "flipped" and (labels == np.load(run / "labels.npy")).all()
    acc = 100 * np.mean(softmax(logits.astype(np.float64), -1).mean(0).argmax(-1) == labels)
    assert m["shift/flipped/acc"] == pytest.approx(acc)
    # a damaged saved array is named
    _flip(run / "shift" / "flipped" / "all" / "logits.npy")
    with pytest.raises(UserError, match="logits.npy is missing or damaged"):
        load_set(open_run(str(run)), "shift", "flipped")


def _one_error_line(r, *patterns):
    assert r.returncode == 2, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.stderr, r.stderr
    for p in patterns:
        assert p in lines[0], lines[0]


def test_readers_check_the_members_they_rely_on(run3, tmp_path, script_here):
    root = tmp_path / "runs"
    good = _copy(run3[0], root, "good")
    part = _copy(run3[0], root, "part")
    for f in glob.glob(str(part / "member_3*")):
        os.remove(f)
    assert script_here("evaluate.py", part, "--partial").returncode == 0
    bad = _copy(run3[0], root, "bad")
    _flip(bad / "member_2.safetensors", 5000)  # bytes inside the weights: same size, another content
    stale = _copy(run3[0], root, "stale")  # member 3's record changed after metrics.json was written
    run = RunDir(str(stale), load_json(stale / "config.json"), is_main=False)
    run.write_member_record(3, dict(load_json(stale / "member_3.json"), seconds=1.0))
    r = script_here("report.py", root, "--out", tmp_path / "rep")
    assert r.returncode == 0, r.stderr
    assert "| StarSSE | 1 | 3 |" in r.stdout and "members=None" not in r.stdout
    assert "3 run(s) left out:" in r.stdout and f"{part} (partial: 2 of 3 members)" in r.stdout
    assert f"{bad}/member_2.safetensors is damaged" in r.stdout
    assert f"{stale} (member(s) 3 changed after its metrics.json was written" in r.stdout
    assert str(good) not in r.stdout.split("left out:")[1]
    # nothing left to show: one line
    _one_error_line(script_here("report.py", bad, "--out", tmp_path / "rep2"), "no run to show", "is damaged")
    # the analyses and the soup read member files: each checked, one line naming the damaged one
    _one_error_line(script_here("diversity_structure.py", bad, "--out", tmp_path / "div"),
                    "member_2.safetensors is damaged")
    _one_error_line(script_here("soup.py", bad, "--cpu"), "member_2.safetensors is damaged")
    probs = _copy(run3[0], tmp_path, "probs")
    _flip(probs / "member_2_probs.npy")
    _one_error_line(script_here("subsets.py", probs, "--size", "2", "--out", tmp_path / "sub"),
                    "member_2_probs.npy is damaged")
