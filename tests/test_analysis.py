"""Analyses of saved runs: subset statistics against a direct loop, the SVM line, Wasserstein-2 against an
assignment, correlations against numpy, weight statistics by hand, the representation analysis end to end on a tiny
real run (cache reused), the figures, the analysis sweep, bad input."""
import csv
import itertools
import os
import shlex
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO, parse, run_script, settings

from lib.analysis import diversity as D
from lib.analysis import representations as R
from lib.analysis import subsets as S
from lib.analysis import weight_stats as W
from lib.evaluation import metrics
from lib.infra.files import load_json, load_weights, save_weights
from lib.training.experiment import Experiment


def _header(path):
    with open(path) as f:
        return next(csv.reader(f))


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def _is_png(path):
    with open(path, "rb") as f:
        return os.path.getsize(path) > 2000 and f.read(8) == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------------------------------------------
# subsets

def _mixed_probs(members, seed=0):
    """Members that mostly agree (CIFAR-like) on some samples and disagree at random on others, plus exact ties."""
    rng = np.random.default_rng(seed)
    agree, y1 = S.synthetic_probs(members, 150, 6, seed=seed)
    noisy = rng.dirichlet(np.full(6, 0.7), size=(members, 150)).astype(np.float32)
    tie = np.tile(np.array([[0.3, 0.3, 0.1, 0.1, 0.1, 0.1]], np.float32), (members, 1))[:, None]  # unanimous tie
    swap = np.array([[0.5, 0.3, 0.05, 0.05, 0.05, 0.05], [0.3, 0.5, 0.05, 0.05, 0.05, 0.05]], np.float32)
    swap = np.tile(swap, (members // 2 + 1, 1))[:members, None]  # pairs whose mean ties classes 0 and 1
    probs = np.concatenate([agree, noisy, tie, swap], axis=1)
    labels = np.concatenate([y1, rng.integers(0, 6, 150), [0], [1]])
    return probs, labels


@pytest.mark.parametrize("fix_first", [False, True])
def test_subset_statistics_match_a_direct_loop(fix_first):
    probs, labels = _mixed_probs(7)
    st = S.subset_stats(probs, labels, 3, fix_first)
    expected = [c for c in itertools.combinations(range(7), 3) if not fix_first or 0 in c]
    assert [tuple(s) for s in st["idx"]] == expected and len(expected) == (15 if fix_first else 35)
    for s, avg, div, ens in zip(st["idx"], st["avg_accuracy"], st["diversity"], st["ensemble_accuracy"]):
        sub = probs[list(s)]
        assert avg == pytest.approx(metrics.member_accuracy(sub, labels).mean(), abs=1e-12)
        assert div == pytest.approx(metrics.diversity(sub, labels), abs=1e-12)
        assert ens == metrics.ensemble_accuracy(sub, labels)  # exactly: same argmax on every sample, ties included
    # chunks of one subset give the same result as one chunk
    one = S.subset_ensemble_accuracy(probs, labels, st["idx"], chunk_bytes=1)
    assert np.array_equal(one, st["ensemble_accuracy"])


def test_every_subset_of_a_15_member_cifar_sized_run():
    """All 3003 subsets of 5 of 15 members on 10,000 CIFAR-sized predictions (vectorised, chunked: about 0.2 s here,
    a loop over lib.evaluation.metrics ~21 s) give what lib.evaluation.metrics gives subset by subset."""
    probs, labels = S.synthetic_probs(15, 10000, 100)
    st = S.subset_stats(probs, labels, 5)
    assert len(st["idx"]) == 3003
    for r in (0, 1, 777, 1500, 3002):
        sub = probs[list(st["idx"][r])]
        assert st["ensemble_accuracy"][r] == metrics.ensemble_accuracy(sub, labels)
        assert st["avg_accuracy"][r] == pytest.approx(metrics.member_accuracy(sub, labels).mean(), abs=1e-12)
        assert st["diversity"][r] == pytest.approx(metrics.diversity(sub, labels), abs=1e-12)
    assert len(S.subset_indices(15, 5, fix_first=True)) == 1001


def test_svm_line_separates_separable_points_and_tails():
    rng = np.random.default_rng(0)
    xy = np.concatenate([rng.normal([85.0, 60.0], 0.2, (40, 2)), rng.normal([86.0, 64.0], 0.2, (40, 2))])
    label = np.arange(80) >= 40
    (a, b, c), acc = S.separating_line(xy[:, 0], xy[:, 1], label)
    assert acc == 1.0
    assert np.array_equal(a * xy[:, 0] + b * xy[:, 1] + c > 0, label)  # the True side is positive
    assert S.separating_line(xy[:, 0], xy[:, 1], np.zeros(80, bool)) is None
    ens = np.array([3.0, 1.0, 2.0, 5.0, 4.0])
    assert list(S.better_half(ens)) == [False, False, False, True, True]
    worst, best = S.tails(np.arange(100.0)[::-1], 0.05)
    assert sorted(worst) == [95, 96, 97, 98, 99] and sorted(best) == [0, 1, 2, 3, 4]


# ----------------------------------------------------------------------------------------------------------------
# distances, weights, correlations

def test_wasserstein_is_the_exact_assignment_cost():
    from scipy.optimize import linear_sum_assignment
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(12, 3)), rng.normal(size=(12, 3)) + 0.5
    cost = ((a[:, None] - b[None]) ** 2).sum(-1)
    r, c = linear_sum_assignment(cost)  # equal sizes, uniform weights: the optimal plan is a permutation
    assert R.wasserstein2(a, b) == pytest.approx(np.sqrt(cost[r, c].mean()), rel=1e-9)
    assert R.wasserstein2(a, a) == 0.0
    d = R.feature_distances(torch.tensor(a), torch.tensor(b))
    assert d["mse"] == pytest.approx(((a - b) ** 2).mean())
    assert R.feature_distances(torch.tensor(a), torch.tensor(a)) == {"rtd": 0.0, "mse": 0.0, "wasserstein": 0.0}


def test_weight_statistics_by_hand(tmp_path):
    keys = W.parameter_keys("resnet_mini", 10)
    assert keys["avgpool"] == ["fc.weight", "fc.bias"]  # the AvgPool output's "weights": the fc layer reading it
    assert keys["stage2"] and all(k.startswith("layer1.") for k in keys["stage2"])
    assert not any("running" in k or "num_batches" in k for k in keys["all"])
    torch.manual_seed(0)
    states = [{"w": torch.randn(3, 2), "v": torch.randn(4), "buf": torch.randn(2)} for _ in range(3)]
    paths = [str(tmp_path / f"m{i}.safetensors") for i in range(3)]
    for s, p in zip(states, paths):
        save_weights(p, s)
    gram, mse = W.weight_stats(paths, {"all": ["w", "v"], "s": ["w"]})
    flat = torch.stack([torch.cat([s["w"].flatten(), s["v"]]) for s in states]).double()
    assert np.allclose(gram, (flat @ flat.T).numpy())
    assert np.allclose(mse["s"], [((s["w"] - states[0]["w"]).double() ** 2).mean().item() for s in states])
    cos = W.cosine_from_gram(gram)
    assert cos[0, 1] == pytest.approx(torch.nn.functional.cosine_similarity(flat[0], flat[1], dim=0).item())


def test_correlations_against_numpy():
    rng = np.random.default_rng(0)
    rows = [{"run_dir": f"r{k}", "diversity": rng.normal(60 + 5 * k), "weight_cosine": 1 - 0.01 * k + 1e-3 * rng.normal()}
            for k in range(3) for _ in range(10)]
    corr = D.correlations(rows)
    div, cos = np.array([r["diversity"] for r in rows]), np.array([r["weight_cosine"] for r in rows])
    assert corr["global"] == pytest.approx(np.corrcoef(div, cos)[0, 1])
    within = [np.corrcoef(div[k * 10:(k + 1) * 10], cos[k * 10:(k + 1) * 10])[0, 1] for k in range(3)]
    assert corr["within_mean"] == pytest.approx(np.mean(within))
    assert np.isnan(D.pearson([1.0, 2.0], [3.0, 4.0]))  # two points: no correlation to speak of


# ----------------------------------------------------------------------------------------------------------------
# end to end on a tiny real run

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A real 3-member StarSSE on the embedded default from random initialisation (no pre-training: seconds)."""
    root = tmp_path_factory.mktemp("analysis")
    exp = Experiment(settings(["--cpu", "--quiet", "--epochs", "2", "--cycle_epochs", "1", "--members", "3",
                               "--pretrained", "scratch", "--cache_dir", root / "cache",
                               "--output_dir", root / "sweep" / "starsse" / "run0"], "StarSSE"))
    w1 = exp.finetune(1)
    for i in (2, 3):
        exp.cycle(i, init=w1)
    exp.finish()
    return str(root), exp.run.path


@pytest.mark.slow
def test_representations_end_to_end_with_cache(tiny_run):
    root, run = tiny_run
    out = os.path.join(root, "repr")
    r = run_script("analyze_representations.py", run, "--n_points", 32, "--cpu", "--out", out)
    assert r.returncode == 0, r.stderr
    assert "member 3 computed" in r.stdout
    assert _header(os.path.join(out, "representations.csv")) == R.REPR_COLUMNS
    rows = _rows(os.path.join(out, "representations.csv"))
    assert len(rows) == 3 * (5 * 4 + 1)  # 5 stages x (rtd, mse, wasserstein, weight_mse) + weight_cosine
    value = {(int(x["member"]), x["stage"], x["metric"]): float(x["value"]) for x in rows}
    for stage in W.REPR_STAGES:
        for metric in R.FEATURE_METRICS + ["weight_mse"]:
            assert value[(1, stage, metric)] == 0.0  # member 1 against itself
            assert value[(2, stage, metric)] > 0.0
    assert value[(1, "all", "weight_cosine")] == pytest.approx(1.0) and value[(2, "all", "weight_cosine")] < 1.0
    # member 2's AvgPool MSE by hand: a plain forward of both models on the first 32 test images
    from lib.data.tasks import load_digits_task
    from lib.models.backbones import build_model
    x = load_digits_task(4).test.images[:32]
    x = (x - 0.3053) / 0.3189
    feats = []
    for i in (1, 2):
        model = build_model("resnet_mini", 10)
        model.load_state_dict(load_weights(os.path.join(run, f"member_{i}.safetensors")))
        model.eval()
        with torch.no_grad():
            h = model.maxpool(model.relu(model.bn1(model.conv1(x))))
            feats.append(torch.flatten(model.avgpool(model.layer4(model.layer3(model.layer2(model.layer1(h))))), 1))
    assert value[(2, "avgpool", "mse")] == pytest.approx(((feats[0] - feats[1]) ** 2).mean().item(), rel=1e-4)
    assert float(rows[0]["accuracy"]) == pytest.approx(load_json(os.path.join(run, "member_1.json"))["test_accuracy"])
    for png in ("representations.png", "representations_avgpool.png"):
        assert _is_png(os.path.join(out, png))
    # a second call reads every member from the cache; another --n_points recomputes
    cache = [os.path.join(run, "analysis", f"representations_member{i}.json") for i in (1, 2, 3)]
    mtimes = [os.stat(p).st_mtime_ns for p in cache]
    r = run_script("analyze_representations.py", run, "--n_points", 32, "--cpu", "--out", out)
    assert r.returncode == 0, r.stderr
    assert "read from the cache" in r.stdout and "computed" not in r.stdout
    assert [os.stat(p).st_mtime_ns for p in cache] == mtimes
    r = run_script("analyze_representations.py", run, "--n_points", 24, "--cpu", "--stages", "avgpool", "--out", out)
    assert r.returncode == 0, r.stderr
    assert "member 1 computed" in r.stdout and load_json(cache[0])["n_points"] == 24


@pytest.mark.slow
def test_diversity_subsets_and_thesis_report(tiny_run):
    root, run = tiny_run
    out = os.path.join(root, "div")
    r = run_script("diversity_structure.py", run, "--out", out)
    assert r.returncode == 0, r.stderr
    rows = _rows(os.path.join(out, "diversity_pairs.csv"))
    assert _header(os.path.join(out, "diversity_pairs.csv")) == D.PAIR_COLUMNS and len(rows) == 3
    probs, labels = np.stack([np.load(os.path.join(run, f"member_{i}_probs.npy")) for i in (1, 2, 3)]), \
        np.load(os.path.join(run, "labels.npy"))
    pair = metrics.pairwise_diversity(probs, labels)
    assert [float(x["diversity"]) for x in rows] == pytest.approx([pair[0, 1], pair[0, 2], pair[1, 2]])
    assert [x["with_first"] for x in rows] == ["True", "True", "False"]
    corr = load_json(os.path.join(out, "diversity_structure.json"))
    cos = [float(x["weight_cosine"]) for x in rows]
    assert corr["global"] == pytest.approx(np.corrcoef([float(x["diversity"]) for x in rows], cos)[0, 1])
    assert "| **I** |" in r.stdout  # table 6.2
    for png in ("diversity_cosine.png", "diversity_cosine_runs.png"):
        assert _is_png(os.path.join(out, png))

    out = os.path.join(root, "sub")
    r = run_script("subsets.py", run, "--size", 2, "--out", out)
    assert r.returncode == 0, r.stderr
    rows = _rows(os.path.join(out, "subsets.csv"))
    assert [x["subset"] for x in rows] == ["1 2", "1 3"]  # StarSSE: member 1 in every subset
    assert float(rows[1]["ensemble_accuracy"]) == pytest.approx(metrics.ensemble_accuracy(probs[[0, 2]], labels))
    assert _is_png(os.path.join(out, "subsets.png")) and "worst 5 %" in r.stdout
    documented = open(os.path.join(REPO, "docs", "analyses.md")).read()  # the CSV columns, documented
    for column in R.REPR_COLUMNS + D.PAIR_COLUMNS + _header(os.path.join(out, "subsets.csv")):
        assert f"`{column}`" in documented, column

    out = os.path.join(root, "report")
    r = run_script("thesis_report.py", os.path.join(root, "sweep"), "--subset_size", 2, "--n_points", 32, "--cpu",
                   "--out", out)
    assert r.returncode == 0, r.stderr
    index = open(os.path.join(out, "index.md")).read()
    images = [line[line.index("](") + 2:-1] for line in index.splitlines() if line.startswith("![")]
    assert len(images) == 7 and all(_is_png(os.path.join(out, p)) for p in images)
    assert "| StarSSE | 1 | 3 |" in index and "No SSE run" in index and "worst 5 %" in index


# ----------------------------------------------------------------------------------------------------------------
# sweep and bad input

def _script(name):
    """scripts/<name>.py as a module (its main() and build_parser() run in this process)."""
    import importlib
    if os.path.join(REPO, "scripts") not in sys.path:
        sys.path.insert(0, os.path.join(REPO, "scripts"))
    return importlib.import_module(name)


def test_analysis_sweep_commands_parse(tmp_path):
    for i in range(1, 6):
        (tmp_path / f"byol-1000ep-{i}.pt").write_bytes(b"")
    env = dict(os.environ, RUNNER="print", PY="python", DATA=str(tmp_path), CKPT_DIR=str(tmp_path),
               OUT=str(tmp_path / "o"))
    r = subprocess.run(["bash", os.path.join(REPO, "sweeps", "cifar100_analysis.sh")], capture_output=True, text=True,
                       env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    stages = [line.split()[3].rstrip(":") for line in r.stdout.splitlines() if line.startswith("# stage ")]
    assert stages == ["phase1", "methods", "analyses", "report"]
    commands = [shlex.split(line) for line in r.stdout.splitlines() if not line.startswith("#")]
    commands = [c[c.index(next(a for a in c if a.startswith("scripts/"))):] for c in commands]  # after the launcher
    training = [c for c in commands if c[0] in ("scripts/starsse.py", "scripts/finetune.py") and "--members" in c]
    # the thesis (l. 231): StarSSE trained twice (seeds only differ, pooled: 2,002 subsets), Local DE once
    assert sorted(c[0] for c in training) == ["scripts/finetune.py", "scripts/starsse.py", "scripts/starsse.py"]
    seeds = {}
    for cmd in training:
        args = parse(cmd[1:], cmd[0])
        assert args.members == 15 and args.dataset == "cifar100" and args.epochs == 25 and args.lr == 0.05
        assert args.pretrained == [str(tmp_path / "byol-1000ep-1.pt")] and args.val_split == 0.1
        seeds.setdefault(cmd[0], []).append(args.seed)
        if cmd[0].endswith("starsse.py"):
            assert (args.cycle_lr, args.cycle_epochs) == (0.1, 12)  # the thesis' optimal setting
    assert seeds == {"scripts/starsse.py": [0, 1], "scripts/finetune.py": [0]}
    analyses = [c for c in commands if c not in training and not c[0].endswith("finetune.py")]
    assert {c[0] for c in analyses} == {"scripts/subsets.py", "scripts/analyze_representations.py",
                                        "scripts/diversity_structure.py", "scripts/thesis_report.py"}
    for cmd in analyses:
        args = _script(os.path.basename(cmd[0])[:-3]).build_parser().parse_args(cmd[1:])
        assert getattr(args, "size", 5) == 5 and getattr(args, "data_dir", str(tmp_path)) == str(tmp_path)
    # the diversity structure over every SSE and StarSSE setting of the cycle grid (the thesis' -0.625: l. 263), the
    # folder patterns expanded when the task runs
    grid = str(tmp_path / "o" / "grid")
    assert [c[1:-2] for c in analyses if c[0].endswith("diversity_structure.py")] == \
        [[f"{grid}/sse-lr*", f"{grid}/starsse-lr*"]]


@pytest.mark.parametrize("script,args,message", [
    ("subsets", ["/nonexistent/run"], "not a directory"),
    ("subsets", [], "at least one run directory"),
    ("subsets", ["RUN", "--size", "5"], "--size 5 needs at least 5"),
    ("subsets", ["RUN", "--size", "x"], "invalid int"),
    ("analyze_representations", ["EMPTY"], "no finished run"),
    ("analyze_representations", ["RUN", "--stages", "stage9"], "unknown --stages 'stage9' (choose from stage2"),
    ("analyze_representations", ["RUN", "--n_points", "1"], "--n_points must be at least 4"),
    ("diversity_structure", ["/nonexistent/run"], "not a directory"),
    ("thesis_report", ["EMPTY"], "no finished run"),
])
def test_bad_input_is_one_line_and_exit_2(tiny_run, tmp_path, monkeypatch, capsys, script, args, message):
    _root, run = tiny_run
    args = [run if a == "RUN" else str(tmp_path) if a == "EMPTY" else a for a in args]
    monkeypatch.setattr(sys, "argv", [script, *args, "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as e:
        _script(script).main()
    assert e.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines


def test_bad_input_from_the_command_line(tiny_run):
    r = run_script("subsets.py", tiny_run[1], "--size", 7)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"error: {tiny_run[1]} has 3 finished member(s); --size 7 needs at least 7"]
