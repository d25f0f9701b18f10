"""Model soups (lib/evaluation/soups.py, scripts/soup.py): the uniform soup of identical members is the member, the
greedy soup follows Wortsman et al.'s recipe on a constructed case, BatchNorm statistics are re-estimated as computed by
hand, incompatible members are refused naming the first mismatched tensor, and the script on a real frozen run."""
import os
import shutil

import numpy as np
import pytest
import torch
import torch.nn as nn
from conftest import run_script

from lib.evaluation import soups
from lib.infra.errors import UserError
from lib.infra.files import load_json, load_weights
from lib.models.backbones import build_model, stage_map


def _state(seed, num_classes=10, arch="resnet_mini"):
    torch.manual_seed(seed)
    return build_model(arch, num_classes).state_dict()


def test_uniform_soup_of_identical_members_is_the_member_and_of_two_the_mean():
    a, b = _state(0), _state(1)
    same = soups.uniform_soup([a, {k: v.clone() for k, v in a.items()}, {k: v.clone() for k, v in a.items()}])
    assert all(torch.equal(same[k], a[k]) for k in a)  # bit-identical
    mix = soups.uniform_soup([a, b])
    k = "layer2.0.conv1.weight"
    assert torch.allclose(mix[k], (a[k] + b[k]) / 2, atol=1e-7) and mix[k].dtype == a[k].dtype
    assert torch.equal(mix["bn1.num_batches_tracked"], a["bn1.num_batches_tracked"])  # integer counters: member 1's


def test_greedy_soup_follows_the_recipe_on_a_constructed_case():
    # one-tensor "networks" w; validation score of a soup: -|mean w - 1| (best at 1)
    ws = [0.5, 1.2, 3.0, 0.9, 1.1]
    states = [{"w": torch.tensor([w], dtype=torch.float64)} for w in ws]
    score = lambda s: -abs(float(s["w"]) - 1.0)
    own = [score(s) for s in states]  # -.5 -.2 -2 -.1 -.1
    calls = []
    soup, kept, steps = soups.greedy_soup(states, lambda s: calls.append(float(s["w"])) or score(s), own)
    # order by own score: members 4 and 5 (tie: member order), 2, 1, 3.
    # start {4}: 0.9 (-.1); +5: mean 1.0 (0) kept; +2: mean 1.0667 (-.067) < 0 left out; +1: mean .8333 left out;
    # +3: mean 1.6667 left out
    assert kept == [4, 5] and float(soup["w"]) == pytest.approx(1.0)
    assert [m for m, _s, _k in steps] == [4, 5, 2, 1, 3]
    assert [k for *_x, k in steps] == [True, True, False, False, False]
    assert calls == pytest.approx([1.0, (0.9 + 1.1 + 1.2) / 3, (0.9 + 1.1 + 0.5) / 3, (0.9 + 1.1 + 3.0) / 3])
    # "does not drop": a candidate scoring the same as the soup joins
    flat = [{"w": torch.tensor([w], dtype=torch.float64)} for w in (1.0, 1.0)]
    assert soups.greedy_soup(flat, score, [0.0, 0.0])[1] == [1, 2]


def test_bn_recalibration_equals_the_statistics_by_hand():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1), nn.BatchNorm2d(2))
    model[1].running_mean.fill_(5.0)   # stale statistics that must be replaced
    model[4].running_var.fill_(7.0)
    kept_mean = model[4].running_mean.clone()
    batches = [(torch.randn(n, 3, 5, 5) * 2 + 1, torch.zeros(n)) for n in (8, 8, 6)]
    model.eval()
    soups.recalibrate_bn(model, iter(batches), keep={"4"})
    # by hand: the conv's outputs of each batch; the mean over batches of each batch's per-channel mean and unbiased
    # variance (momentum None = cumulative average over batches)
    conv = model[0]
    with torch.no_grad():
        outs = [conv(x).double() for x, _ in batches]
    means = torch.stack([o.mean(dim=(0, 2, 3)) for o in outs]).mean(0)
    vars_ = torch.stack([o.permute(1, 0, 2, 3).reshape(4, -1).var(dim=1, unbiased=True) for o in outs]).mean(0)
    assert torch.allclose(model[1].running_mean.double(), means, atol=1e-5)
    assert torch.allclose(model[1].running_var.double(), vars_, atol=1e-4)
    assert int(model[1].num_batches_tracked) == 3 and model[1].momentum == 0.1  # momentum restored
    assert not model.training  # mode restored
    assert torch.equal(model[4].running_mean, kept_mean) and float(model[4].running_var[0]) == 7.0  # kept layer
    assert soups.has_batchnorm(model) and not soups.has_batchnorm(nn.Linear(2, 2))
    # take_batches goes through as many epochs as it needs
    assert len(list(soups.take_batches(batches, 7, set_epoch=False))) == 7


def test_incompatible_members_are_refused_naming_the_first_mismatched_tensor():
    a = _state(0)
    with pytest.raises(UserError, match=r"tensor fc.weight: shape \(10, 128\) vs \(5, 128\)"):
        soups.check_compatible([a, _state(1, num_classes=5)])  # another head
    with pytest.raises(UserError, match=r"tensor conv1.weight: shape \(16, 3, 3, 3\) vs \(64, 3, 7, 7\)"):
        soups.check_compatible([a, _state(1, arch="resnet18")])  # another architecture
    with pytest.raises(UserError, match=r"different tensors \(first: layer4.0.bn2.bias, only in member 1"):
        soups.check_compatible([a, {k: v for k, v in a.items() if k != "layer4.0.bn2.bias"}])
    with pytest.raises(UserError, match=r"different tensors \(first: extra, only in member 2"):
        soups.check_compatible([a, {**a, "extra": torch.zeros(1)}])
    half = {k: (v.half() if k == "layer1.0.bn1.weight" else v) for k, v in _state(1).items()}
    with pytest.raises(UserError, match="layer1.0.bn1.weight: dtype"):
        soups.check_compatible([a, half])

    # frozen masks: member 2 froze stages 1-3 (stage4), member 1 trained them (frozen StarSSE)
    rec = [{"freeze": "none", "frozen_bn": "eval"}, {"freeze": "stage4", "frozen_bn": "eval"}]
    smap = stage_map(build_model("resnet_mini", 10))
    b = {k: v.clone() for k, v in a.items()}
    b["layer4.0.conv1.weight"] += 1  # trained in both: may differ
    soups.check_compatible([a, b], rec, smap)
    b["layer2.0.conv2.weight"] += 1  # frozen in member 2 but not equal to member 1's: refused
    b["layer1.0.bn2.running_mean"] += 1
    with pytest.raises(UserError, match="different frozen masks: tensor layer1.0.bn2.running_mean"):
        soups.check_compatible([a, b], rec, smap)
    # with --frozen_bn train the statistics of frozen stages moved legitimately: the weights are checked
    rec_train = [rec[0], {"freeze": "stage4", "frozen_bn": "train"}]
    with pytest.raises(UserError, match="tensor layer2.0.conv2.weight"):
        soups.check_compatible([a, b], rec_train, smap)
    # the same mask in every member (Local/Global DE frozen from the start): the frozen tensors may differ
    soups.check_compatible([a, b], [rec[1], rec[1]], smap)


@pytest.fixture(scope="module")
def frozen_run(tmp_path_factory):
    """A frozen StarSSE run (--freeze stage4; model 1 fully trained, members 2 and 3 with stages 1-3 frozen) with a
    validation split (60 training, 20 validation images)."""
    root = tmp_path_factory.mktemp("soup")
    out = root / "run"
    r = run_script("starsse.py", "--cpu", "--quiet", "--epochs", "2", "--cycle_epochs", "1", "--members", "3",
                   "--freeze", "stage4", "--pretrained", "scratch", "--val_split", "0.25", "--labels_per_class", "8",
                   "--cache_dir", root / "cache", "--output_dir", out)
    assert r.returncode == 0, r.stderr
    return out


def test_soup_script_on_a_frozen_starsse_run(frozen_run, script_here, tmp_path):
    from lib.data.tasks import load_task
    from lib.settings.schema import Settings
    r = run_script("soup.py", frozen_run, "--bn_recalibrate", "0", "--cpu")
    assert r.returncode == 0, r.stderr
    m = load_json(frozen_run / "metrics.json")
    assert "ensemble_accuracy" in m and {"soup/uniform/acc", "soup/uniform/nll", "soup/uniform/ece"} <= set(m)
    assert "| uniform soup (3 members) |" in r.stdout and "| best member" in r.stdout
    # independently: the mean of the three weight files, in a fresh model, on the test set
    states = [load_weights(str(frozen_run / f"member_{i}.safetensors")) for i in (1, 2, 3)]
    model = build_model("resnet_mini", 10)
    model.load_state_dict({k: (sum(s[k].double() for s in states) / 3).float() if v.is_floating_point() else v
                           for k, v in states[0].items()})
    data = load_task(Settings(load_json(frozen_run / "config.json")))
    x = torch.stack([data.test[i][0] for i in range(len(data.test))])
    with torch.no_grad():
        acc = 100 * float((model.eval()(x).argmax(1).numpy() == data.test_labels).mean())
    assert m["soup/uniform/acc"] == pytest.approx(acc)
    # the frozen stages are identical in every member, so their BatchNorm layers keep their statistics
    assert {"bn1", "layer1.0.bn1", "layer2.0.bn2"} <= soups.identical_bn_layers(states)
    assert "layer4.0.bn1" not in soups.identical_bn_layers(states)

    # greedy, with recalibration (the default for BN models): members in order of validation accuracy
    r = script_here("soup.py", frozen_run, "--mode", "uniform", "greedy", "--cpu")
    assert r.returncode == 0, r.stderr
    assert "re-estimated on 4 training batches" in r.stdout  # one epoch: 60 images in batches of 16
    m2 = load_json(frozen_run / "metrics.json")
    assert m2["ensemble_accuracy"] == m["ensemble_accuracy"] and 0 <= m2["soup/uniform/acc"] <= 100
    y_val = np.load(frozen_run / "val_labels.npy")
    val_acc = [np.mean(np.load(frozen_run / f"member_{i}_val_probs.npy").argmax(1) == y_val) for i in (1, 2, 3)]
    kept = m2["soup/greedy/members"]
    assert kept[0] == 1 + int(np.argmax(val_acc)) and len(set(kept)) == len(kept) and set(kept) <= {1, 2, 3}
    assert f"greedy: start from member {kept[0]}" in r.stdout
    if len(kept) == 1:  # the best member alone, as it is
        test_probs = np.load(frozen_run / f"member_{kept[0]}_probs.npy")
        assert m2["soup/greedy/acc"] == pytest.approx(100 * np.mean(test_probs.argmax(1) == data.test_labels))

    # bad input: greedy without a validation split, in one line, nothing written
    os.remove(frozen_run / "val_labels.npy")
    before = open(frozen_run / "metrics.json").read()
    r = script_here("soup.py", frozen_run, "--mode", "greedy")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "needs a validation split" in r.stderr
    assert open(frozen_run / "metrics.json").read() == before
    # asked with the uniform soup, greedy is skipped with a note and the uniform soup is still made
    r = script_here("soup.py", frozen_run, "--mode", "uniform", "greedy", "--bn_recalibrate", "0", "--cpu")
    assert r.returncode == 0, r.stderr
    assert "note: greedy soup skipped: it needs a validation split" in r.stdout
    assert "| uniform soup (3 members) |" in r.stdout
    m3 = load_json(frozen_run / "metrics.json")
    assert m3["soup/uniform/acc"] == pytest.approx(acc)  # the mean of the weights, as computed above
    assert m3["soup/greedy/members"] == kept  # the greedy soup of the same members, made earlier, stays


def test_soup_of_members_with_another_head_is_one_line(frozen_run, script_here, tmp_path):
    from lib.infra.files import save_array, save_weights
    from lib.runs.rundir import RunDir
    run = tmp_path / "run"
    shutil.copytree(frozen_run, run)
    # member 2 replaced by a network with a 5-class head, its files and record consistent (digests renewed)
    save_weights(str(run / "member_2.safetensors"), _state(2, num_classes=5))
    n = len(np.load(run / "labels.npy"))
    for kind in ("probs", "logits"):
        save_array(str(run / f"member_2_{kind}.npy"), np.full((n, 5), 0.2, np.float32))
    for kind in ("val_probs", "val_logits"):
        os.remove(run / f"member_2_{kind}.npy")
    rd = RunDir(str(run), load_json(run / "config.json"), is_main=False)
    rd.seal_member(2, {k: v for k, v in load_json(run / "member_2.json").items() if k != "sha256"})
    r = script_here("soup.py", run, "--cpu")
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.strip().count("\n") == 0, r.stderr
    assert "members 1 and 2 differ in tensor fc.bias: shape (10,) vs (5,)" in r.stderr  # the first in file order
