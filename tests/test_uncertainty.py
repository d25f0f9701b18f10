"""OOD detection, selective prediction, calibration and shift metrics (lib/evaluation/uncertainty.py) against
independent computations (scikit-learn, hand counts, brute force, a known temperature), then through a tiny real run
(lib/evaluation/evaluate.py, scripts/evaluate.py): OOD / shift sets, an unfinished run, a read-only run, damaged
weights."""
import hashlib
import itertools
import json
import math
import os
import shutil
import stat

import numpy as np
import pytest
import torch
from conftest import run_script
from scipy.special import softmax
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from lib.evaluation import metrics
from lib.evaluation import uncertainty as u
from lib.infra.files import load_json

# ----------------------------------------------------------------------------------------------------------------
# OOD metrics

def test_auroc_and_aupr_equal_scikit_learn_with_ties():
    rng = np.random.default_rng(0)
    for n_in, n_out, levels in [(200, 150, 10), (50, 400, 1000), (7, 3, 3), (1, 1, 2)]:
        a = rng.integers(0, levels, n_in).astype(float)  # integer scores: many ties within and across the sets
        b = rng.integers(levels // 3, levels + 3, n_out).astype(float)
        y, s = np.r_[np.zeros(n_in), np.ones(n_out)], np.r_[a, b]
        m = u.ood_metrics(a, b)
        assert m["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
        assert m["aupr"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    same = rng.normal(size=100)
    assert u.ood_metrics(same, same) == pytest.approx({"auroc": 0.5, "aupr": 0.5, "fpr95": 0.95,  # no separation
                                                       "fpr95_id": 0.95})


def test_fpr95_by_hand_count():
    ood = np.arange(1, 21, dtype=float)  # 20 OOD scores 1..20: flagging 19 of them (95 %) needs threshold 2
    ind = np.array([0.5, 1.5, 2.0, 2.5, 3, 10, 30, 0, -1, 1.9])  # score >= 2: 2, 2.5, 3, 10, 30 -> 5 of 10
    assert u.ood_metrics(ind, ood)["fpr95"] == 0.5
    # 10 OOD samples: 95 % needs all 10, so the threshold is the lowest OOD score (1.0): in-dist >= 1.0 -> 3 of 4
    assert u.ood_metrics(np.array([0.9, 1.0, 5.0, 7.0]), np.r_[np.full(9, 8.0), 1.0])["fpr95"] == 0.75
    # a perfect separation: no in-distribution sample above the lowest OOD score
    assert u.ood_metrics(np.array([0.0, 0.1]), np.array([1.0, 2.0]))["fpr95"] == 0.0
    assert u.ood_metrics(np.array([]), ood) == {"auroc": None, "aupr": None, "fpr95": None, "fpr95_id": None}


def test_fpr95_with_in_distribution_positive_by_hand_and_scikit_learn():
    # OpenOOD's convention: the test samples are positive; the threshold accepts (score <= t) 95 % of them
    ind = np.arange(1, 21, dtype=float)  # 20 test scores 1..20: accepting 19 of them needs t = 19
    ood = np.array([0.5, 10, 18.5, 19, 19.5, 25, 30, 40, 50, 60])  # accepted at t = 19: 0.5, 10, 18.5, 19 -> 4 of 10
    m = u.ood_metrics(ind, ood)
    # OOD positive instead: flagging 95 % of 10 OOD samples needs all 10, t = 0.5, which flags every test sample
    assert m["fpr95_id"] == 0.4 and m["fpr95"] == 1.0
    rng = np.random.default_rng(2)
    for n_in, n_out, levels in [(200, 150, 10), (40, 400, 1000), (20, 7, 3)]:
        a = rng.integers(0, levels, n_in).astype(float)
        b = rng.integers(levels // 3, levels + 3, n_out).astype(float)
        fpr, tpr, _t = roc_curve(np.r_[np.ones(n_in), np.zeros(n_out)], -np.r_[a, b], drop_intermediate=False)
        assert u.ood_metrics(a, b)["fpr95_id"] == pytest.approx(fpr[np.argmax(tpr >= 0.95 - 1e-12)], abs=1e-12)


def test_scores_by_hand_and_mutual_information():
    p = np.array([[0.5, 0.5], [1.0, 0.0]])
    same = u.ood_scores(probs=np.stack([p, p, p]))
    assert np.allclose(same["mutual_information"][0], 0.0)  # identical members: no disagreement
    assert np.allclose(same["entropy"][0], [math.log(2), 0.0]) and np.allclose(same["msp"][0], [-0.5, -1.0])
    # two confident members that disagree: entropy of the mean log 2, mean entropy 0 -> MI = log 2
    mi = u.ood_scores(probs=np.array([[[1.0, 0.0]], [[0.0, 1.0]]]))["mutual_information"][0]
    assert mi == pytest.approx([math.log(2)])
    assert "mutual_information" not in u.ood_scores(probs=p)  # one member: undefined, absent
    z = np.array([[[1.0, 2.0, 3.0]], [[3.0, 2.0, 1.0]]])  # mean logits [2, 2, 2]
    s = u.ood_scores(logits=z)
    assert s["energy"][0] == pytest.approx([-(2 + math.log(3))]) and s["max_logit"][0] == pytest.approx([-2.0])
    assert s["energy"][1][0] == pytest.approx([-math.log(math.exp(1) + math.exp(2) + math.exp(3))])
    q = softmax(z[0, 0])  # the mean of two mirrored softmaxes has (q0 + q2) / 2 on classes 0 and 2
    assert s["msp"][0] == pytest.approx([-(q[0] + q[2]) / 2])


# ----------------------------------------------------------------------------------------------------------------
# selective prediction

def _aurc_one_order(correct_in_order):
    errs = np.cumsum(1 - np.asarray(correct_in_order, dtype=float))
    return np.mean(errs / np.arange(1, len(errs) + 1))


def test_aurc_equals_brute_force_over_tie_orders():
    conf = np.array([0.9, 0.7, 0.7, 0.7, 0.5, 0.9, 0.2])
    correct = np.array([1, 0, 1, 1, 0, 0, 1])
    # brute force: every order of the samples by non-increasing confidence, the AURC of each, their mean
    orders = [o for o in itertools.permutations(range(7)) if all(conf[o[k]] >= conf[o[k + 1]] for k in range(6))]
    assert len(orders) == 2 * 6  # 2 orders of the 0.9 pair x 6 of the 0.7 triple
    brute = np.mean([_aurc_one_order(correct[list(o)]) for o in orders])
    assert u.selective(conf, correct)["aurc"] == pytest.approx(brute, abs=1e-12)
    rng = np.random.default_rng(1)  # without ties the brute force is the one sorted order
    c, k = rng.random(50), rng.random(50) < 0.7
    assert u.selective(c, k)["aurc"] == pytest.approx(_aurc_one_order(k[np.argsort(-c)]))


def test_accuracy_at_coverage_by_hand():
    conf = np.arange(20, 0, -1) / 20.0  # most confident first
    # 20 samples: coverage 80 / 90 / 95 % = the 16 / 18 / 19 most confident
    s = u.selective(conf, np.r_[np.ones(16), 0, 1, 0, 0])
    assert s["acc@80"] == 100.0
    assert s["acc@90"] == pytest.approx(100 * 17 / 18) and s["acc@95"] == pytest.approx(100 * 17 / 19)
    assert u.selective(np.array([]), np.array([])) == {"aurc": None, "acc@80": None, "acc@90": None, "acc@95": None}


# ----------------------------------------------------------------------------------------------------------------
# calibration

def test_adaptive_ece_by_hand():
    p = np.array([[0.9, 0.1], [0.6, 0.4], [0.55, 0.45], [0.2, 0.8]])
    y = np.array([0, 1, 0, 1])
    # confidences sorted: .55 (right) .6 (wrong) | .8 (right) .9 (right): two bins of 2
    expected = 0.5 * abs(0.5 - 0.575) + 0.5 * abs(1.0 - 0.85)
    assert u.adaptive_ece(p, y, n_bins=2) == pytest.approx(expected)
    assert u.adaptive_ece(np.stack([p, p]), y, n_bins=2) == pytest.approx(expected)  # an ensemble is averaged first
    # one bin: |accuracy - mean confidence| = ECE with one bin
    assert u.adaptive_ece(p, y, n_bins=1) == pytest.approx(metrics.ece(p, y, n_bins=1))


def _labels_from(z, temperature, rng):
    p = softmax(z / temperature, axis=-1)
    return (p.cumsum(axis=1) > rng.random((len(z), 1))).argmax(axis=1)


def test_temperature_scaling_recovers_a_known_temperature():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 3, (20000, 10))
    for t_true in (0.5, 2.5):
        y = _labels_from(z, t_true, rng)  # labels drawn from softmax(z / T): T is the calibrating temperature
        assert u.fit_temperature(z, y) == pytest.approx(t_true, rel=0.05)
    y = _labels_from(z, 2.0, rng)
    rep = u.calibration_report(softmax(z, -1)[None], y, z[None], z[None], y)  # fitted and tested on the same data
    assert rep["ts/temperature"] == pytest.approx(2.0, rel=0.05)
    assert rep["ts/nll"] < metrics.nll(softmax(z, -1), y) and rep["ts/ece"] < metrics.ece(softmax(z, -1), y)
    assert rep["ts/ece"] < 0.02 and rep["ts/member_temperature"] == [pytest.approx(rep["ts/temperature"])]
    # the shared temperature of an ensemble minimises the NLL of the averaged tempered members
    ens = np.stack([z, z + rng.normal(0, 1, z.shape)])
    t = u.fit_temperature(ens, y)
    nll = lambda temp: metrics.nll(u.tempered_probs(ens, temp), y)
    assert nll(t) <= min(nll(t * 0.97), nll(t * 1.03))


# ----------------------------------------------------------------------------------------------------------------
# shift

def test_shift_report_means_over_parts_and_severities():
    rng = np.random.default_rng(0)
    parts = {}
    for c, s in itertools.product(["fog", "snow"], [1, 2]):
        y = rng.integers(0, 3, 40)
        parts[f"{c}/{s}"] = (softmax(rng.normal(size=(2, 40, 3)), -1), y)
    r = u.shift_report(parts)
    accs = {k: metrics.ensemble_accuracy(p, y) for k, (p, y) in parts.items()}
    assert r["n_parts"] == 4 and r["acc"] == pytest.approx(np.mean(list(accs.values())))
    assert r["fog/2/acc"] == pytest.approx(accs["fog/2"])
    assert r["severity_2/acc"] == pytest.approx((accs["fog/2"] + accs["snow/2"]) / 2)
    assert r["member_acc"] == pytest.approx(np.mean([metrics.member_accuracy(p, y) for p, y in parts.values()], 0))
    one = u.shift_report({"all": parts["fog/1"]})
    assert one["acc"] == pytest.approx(accs["fog/1"]) and "all/acc" not in one
    json.dumps(r, allow_nan=False)  # strict JSON


# ----------------------------------------------------------------------------------------------------------------
# a tiny real run

@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """A tiny StarSSE run with a validation split (60 training, 20 validation images): test and validation logits."""
    root = tmp_path_factory.mktemp("unc")
    out = root / "run"
    r = run_script("starsse.py", "--cpu", "--quiet", "--epochs", "2", "--cycle_epochs", "1", "--members", "2",
                   "--pretrained", "scratch", "--val_split", "0.25", "--labels_per_class", "8",
                   "--cache_dir", root / "cache", "--output_dir", out)
    assert r.returncode == 0, r.stderr
    return out


def _copy(run, tmp_path, name="copy"):
    dst = tmp_path / name
    shutil.copytree(run, dst)
    return dst


def _digest(folder):
    h = hashlib.sha256()
    for name in sorted(os.listdir(folder)):
        if os.path.isfile(os.path.join(folder, name)):
            h.update(name.encode() + open(os.path.join(folder, name), "rb").read())
    return h.hexdigest()


def _one_error_line(r, pattern):
    assert r.returncode == 2, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and pattern in lines[0], r.stderr


def test_evaluate_run_through_real_predictions(real_run):
    from lib.data.tasks import TensorImages, digits_normalize, load_task
    from lib.evaluation.evaluate import evaluate_run, member_models, run_settings
    from lib.evaluation.predict import predict_set
    from lib.runs.rundir import open_run
    from lib.training.loop import make_accelerator
    run = open_run(str(real_run))
    cfg, acc = run_settings(run), make_accelerator(True)
    data = load_task(cfg)
    labels = np.load(real_run / "labels.npy")
    saved_logits = np.stack([np.load(real_run / f"member_{i}_logits.npy") for i in (1, 2)])
    # the members rebuilt from their weights predict the saved test logits again
    models = member_models(run, cfg.arch, 10, 2, acc.device)
    predict_logits = lambda ds: predict_set(acc, models, ds, cfg, local=True)[1]
    assert np.allclose(predict_logits(data.test), saved_logits, atol=1e-4)
    noise = TensorImages(torch.rand(64, 3, 16, 16, generator=torch.Generator().manual_seed(0)), np.zeros(64),
                         digits_normalize())
    sets = {"ood": [("itself", [("all", data.test, None)], None), ("noise", [("all", noise, None)], "test note")],
            "shift": [("same", [("a/1", data.test, labels), ("a/2", data.test, labels)], None)]}
    notes, predictions = [], []
    r = evaluate_run(run, cfg, acc, sets=sets, log=notes.append, predictions=predictions)
    # the test set against itself: the two score distributions are the same, so AUROC is exactly one half
    for s in u.SCORES:
        assert r[f"ood/itself/{s}/auroc"] == pytest.approx(0.5, abs=1e-6)
    # against noise: the same numbers as the metrics computed here from the saved logits and the noise's logits
    noise_logits = predict_logits(noise)
    msp_in, msp_out = -softmax(saved_logits, -1).mean(0).max(-1), -softmax(noise_logits, -1).mean(0).max(-1)
    y = np.r_[np.zeros(len(msp_in)), np.ones(len(msp_out))]
    assert r["ood/noise/msp/auroc"] == pytest.approx(roc_auc_score(y, np.r_[msp_in, msp_out]), abs=1e-6)
    assert r["ood/noise/samples"] == 64 and len(r["ood/noise/energy/member_fpr95"]) == 2
    # the predictions to be saved with metrics.json: each set's logits per part, and the shifted set's labels
    saved = {(p.kind, p.name): p for p in predictions}
    assert sorted(saved) == [("ood", "itself"), ("ood", "noise"), ("shift", "same")]
    assert np.allclose(saved["ood", "noise"].parts["all"][0], noise_logits)
    assert saved["ood", "noise"].note == "test note" and saved["ood", "noise"].spec is None  # sets given, not specs
    assert list(saved["shift", "same"].parts) == ["a/1", "a/2"]
    assert (saved["shift", "same"].parts["a/2"][1] == labels).all()
    assert "ood/noise/mutual_information/member_auroc" not in r
    # the test set as a "shifted" set gives the test metrics; the saved probabilities give sel/* and cal/*
    m = load_json(real_run / "metrics.json")
    assert r["shift/same/acc"] == pytest.approx(m["ensemble_accuracy"])
    assert r["shift/same/nll"] == pytest.approx(m["nll"], abs=1e-4)
    assert r["shift/same/member_acc"] == pytest.approx(m["member_accuracy"])
    probs = np.stack([np.load(real_run / f"member_{i}_probs.npy") for i in (1, 2)])
    mean = probs.mean(0)
    assert r["sel/aurc"] == pytest.approx(u.selective(mean.max(-1), mean.argmax(-1) == labels)["aurc"])
    # temperature scaling on the validation logits: a minimum of their NLL; applied to the test logits
    val_logits = np.stack([np.load(real_run / f"member_{i}_val_logits.npy") for i in (1, 2)])
    y_val, t = np.load(real_run / "val_labels.npy"), r["cal/ts/temperature"]
    val_nll = lambda temp: metrics.nll(softmax(val_logits / temp, -1), y_val)
    assert val_nll(t) <= min(val_nll(t * 0.95), val_nll(t * 1.05))
    assert r["cal/ts/nll"] == pytest.approx(metrics.nll(softmax(saved_logits / t, -1), labels), rel=1e-6)
    assert len(r["cal/ts/member_temperature"]) == 2 and any("test note" in n for n in notes)
    json.dumps(r, allow_nan=False)


def test_evaluate_script_partial_readonly_and_damaged(real_run, tmp_path, script_here):
    # finished run, end to end through lib.data.tasks.load_eval_set: synthetic OOD sets, a folder of grayscale 20x20
    # images in class folders (labels ignored; converted and resized, with a note), a shifted set; sel/cal keys
    from PIL import Image
    (tmp_path / "ood" / "some_class").mkdir(parents=True)
    for k in range(6):
        Image.fromarray((np.random.default_rng(k).random((20, 20)) * 255).astype(np.uint8), "L").save(
            tmp_path / "ood" / "some_class" / f"{k}.png")
    run = _copy(real_run, tmp_path)
    r = run_script("evaluate.py", run, "--reliability", tmp_path / "rel.png", "--ood_dataset", "noise",
                   "--ood_dataset", f"imagefolder:{tmp_path / 'ood'}", "--shift_dataset", "flipped")
    assert r.returncode == 0, r.stderr
    m = load_json(run / "metrics.json")
    assert {"sel/aurc", "sel/acc@95", "cal/aece", "cal/ts/temperature", "ensemble_accuracy"} <= set(m)
    assert m["ood/noise/samples"] == 540 and m["ood/ood/samples"] == 6 and 0 <= m["ood/ood/energy/auroc"] <= 1
    assert 0 <= m["shift/flipped/acc"] <= 100 and len(m["shift/flipped/member_acc"]) == 2
    assert "note: OOD set ood: converted 6 images to RGB; resized 20x20 -> 16x16" in r.stdout
    assert "AURC" in r.stdout and "OOD noise (AUROC/FPR95/FPR95-ID)" in r.stdout and "after TS" in r.stdout
    assert (tmp_path / "rel.png").stat().st_size > 0
    json.loads(open(run / "metrics.json").read(), parse_constant=lambda c: pytest.fail(f"{c} in metrics.json"))
    # bad eval sets: one line each, metrics.json untouched
    before = _digest(run)
    (tmp_path / "empty").mkdir()
    _one_error_line(script_here("evaluate.py", run, "--ood_dataset", f"imagefolder:{tmp_path / 'empty'}"), "no images")
    _one_error_line(script_here("evaluate.py", run, "--shift_dataset", "noise"), "has no labels")
    assert _digest(run) == before
    # without a validation split: temperature scaling is skipped with a note
    os.remove(run / "val_labels.npy")
    r = script_here("evaluate.py", run)
    assert r.returncode == 0 and "cal/ts (temperature scaling) skipped" in r.stdout
    m = load_json(run / "metrics.json")
    assert "cal/aece" in m and "cal/ts/temperature" not in m and "ood/noise/msp/auroc" in m  # earlier sets kept

    # read-only directory: evaluates and prints, writes nothing
    before = _digest(run)
    os.chmod(run, stat.S_IRUSR | stat.S_IXUSR)
    try:
        r = script_here("evaluate.py", run, "--from_weights", "--cpu")
    finally:
        os.chmod(run, 0o755)
    assert r.returncode == 0, r.stderr
    assert "read-only: nothing was written" in r.stdout and "member acc" in r.stdout
    assert _digest(run) == before

    # an unfinished run is refused in one line unless --partial, which marks metrics.json
    part = _copy(real_run, tmp_path, "part")
    for f in os.listdir(part):
        if f.startswith("member_2"):
            os.remove(part / f)
    before = _digest(part)
    _one_error_line(script_here("evaluate.py", part), "unfinished (1 of 2 members finished)")
    assert _digest(part) == before
    r = script_here("evaluate.py", part, "--partial")
    assert r.returncode == 0, r.stderr
    m = load_json(part / "metrics.json")
    assert m["partial"] is True and m["planned_members"] == 2 and m["members"] == 1

    # damaged weights: a truncated file fails its digest; NaN weights (a record without digests) give NaN
    # predictions; either way --from_weights refuses and the saved probabilities stay
    bad = _copy(real_run, tmp_path, "bad")
    probs_before = open(bad / "member_2_probs.npy", "rb").read()
    w = open(bad / "member_2.safetensors", "rb").read()
    open(bad / "member_2.safetensors", "wb").write(w[:len(w) // 2])
    _one_error_line(script_here("evaluate.py", bad, "--from_weights", "--cpu"), "member_2.safetensors")
    from lib.infra.files import load_weights, save_json, save_weights
    state = load_weights(str(real_run / "member_2.safetensors"))
    state["fc.weight"][:] = float("nan")
    save_weights(str(bad / "member_2.safetensors"), state)
    record = load_json(bad / "member_2.json")
    save_json(str(bad / "member_2.json"), {k: v for k, v in record.items() if k not in ("sha256", "record_sha256")})
    _one_error_line(script_here("evaluate.py", bad, "--from_weights", "--cpu"), "not finite")
    assert open(bad / "member_2_probs.npy", "rb").read() == probs_before
