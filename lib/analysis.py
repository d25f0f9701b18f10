"""Analyses of saved runs (thesis sections 4 and 6), computed from run directories only.

    representations      member 1 against member i of one run: RTD, MSE and Wasserstein-2 between stage outputs on
                         the first n test images, MSE between each stage's weights, cosine of all flattened weights
                         (figures 4.2, 4.3, 4.5); one small cache file per member in <run>/analysis/
    diversity structure  pairwise diversity (table 6.2) and pairwise weight cosine; their correlation over all pairs
                         of all runs and within each run (figures 6.2, 6.4)
    subsets              every ensemble of k members of a large run, vectorised from the saved probabilities; a linear
                         SVM between the better and worse halves; the worst and best 5 % (figure 6.1, table 6.1)

The scripts scripts/analyze_representations.py, diversity_structure.py and subsets.py write the files and figures;
scripts/thesis_report.py runs all of them into one folder.
"""
import argparse
import itertools
import math
import os
import time

import numpy as np
import torch

from . import metrics
from .errors import UserError, check
from .models import STAGE_MODULES, build_model, taps
from .runs import RunDir, atomic_write, find_run_dirs, load_json, load_weights, save_json

REPR_STAGES = ["stage2", "stage3", "stage4", "stage5", "avgpool"]
# The AvgPool layer has no weights: the thesis' "AvgPool layer weights" are read here as those of fc, the linear
# layer that reads the AvgPool output.
WEIGHT_MODULES = {**{s: STAGE_MODULES[s] for s in REPR_STAGES[:4]}, "avgpool": ["fc"]}
FEATURE_METRICS = ["rtd", "mse", "wasserstein"]
CACHE_VERSION = 1  # bump when a distance's definition changes: every cached member is then recomputed


# ----------------------------------------------------------------------------------------------------------------
# runs

def open_run(path, min_members=1):
    """The RunDir at `path`, checked to hold at least `min_members` finished members and the test labels."""
    check(os.path.isdir(path), f"run directory not found: {path}")
    cfg = os.path.join(path, "config.json")
    check(os.path.isfile(cfg), f"not a run directory (no config.json): {path}")
    try:
        config = load_json(cfg)
    except ValueError as e:
        raise UserError(f"{cfg} is unreadable ({e})")
    run = RunDir(path, config, is_main=False)
    n = run.completed_members()
    check(n >= min_members, f"{path} has {n} finished member(s); this analysis needs at least {min_members}")
    check(os.path.isfile(run.file("labels.npy")), f"{path} has no labels.npy")
    return run


def find_runs(paths):
    """Run directories named in `paths`, or found below them (a sweep's output root works too)."""
    found = []
    for p in paths:
        check(os.path.isdir(p), f"not a directory: {p}")
        found += [p] if os.path.isfile(os.path.join(p, "config.json")) else find_run_dirs([p])
    check(found, f"no finished run (config.json + metrics.json) under {' '.join(paths)}")
    return sorted({os.path.normpath(f) for f in found})


def run_label(config, group_by=("method",)):
    """A run's row label, as lib.report.load_runs: the first key's value, then key=value for the others."""
    return " ".join([str(config.get(group_by[0]))] + [f"{k}={config.get(k)}" for k in group_by[1:]])


def run_info(run, group_by=("method",)):
    c = run.config
    return {"run_dir": run.path, "group": run_label(c, group_by), "method": c.get("method"), "seed": c.get("seed")}


def write_csv(path, rows, columns):
    import csv

    def write(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
    atomic_write(path, write)


# ----------------------------------------------------------------------------------------------------------------
# weights

def parameter_keys(arch, num_classes):
    """{stage: its parameter names} for REPR_STAGES, and 'all': every parameter. BatchNorm running statistics are
    buffers, not weights, and are left out."""
    names = [n for n, _ in build_model(arch, num_classes).named_parameters()]
    keys = {s: [n for n in names if n.split(".")[0] in mods] for s, mods in WEIGHT_MODULES.items()}
    keys["all"] = names
    return keys


def weight_stats(paths, keys):
    """The weights of members `paths` (safetensors, read one tensor at a time, so 15 ResNet-50s never sit in memory
    together): the (M, M) Gram matrix of all flattened parameters keys['all'], and for each other entry of `keys`
    the (M,) mean squared difference of those parameters to the first path's. Float64 throughout: fine-tunes of one
    checkpoint have cosines within 1e-4 of 1."""
    from safetensors import safe_open
    files = [safe_open(p, framework="pt") for p in paths]
    stage_of = {k: s for s, ks in keys.items() if s != "all" for k in ks}
    gram = np.zeros((len(files), len(files)))
    sq = {s: np.zeros(len(files)) for s in keys if s != "all"}
    size = dict.fromkeys(sq, 0)
    for key in keys["all"]:
        x = torch.stack([f.get_tensor(key).double().flatten() for f in files])
        gram += (x @ x.T).numpy()
        if key in stage_of:
            sq[stage_of[key]] += ((x - x[0]) ** 2).sum(1).numpy()
            size[stage_of[key]] += x.shape[1]
    return gram, {s: sq[s] / max(size[s], 1) for s in sq}


def cosine_from_gram(gram):
    norm = np.sqrt(np.diag(gram))
    return gram / np.outer(norm, norm)


# ----------------------------------------------------------------------------------------------------------------
# representations

def test_images(config, n_points, data_dir=None, device="cpu"):
    """The first `n_points` test images after the run's own test transform, one (n, 3, H, W) tensor on `device`."""
    from .data import load_task, test_loader
    args = argparse.Namespace(**config)
    args.download = False
    if data_dir is not None:
        args.data_dir = data_dir
    data = load_task(args)
    transform = getattr(data.test, "transform_batch", None)  # device pipeline: the test transform runs on batches
    batches, total = [], 0
    for x, _y in test_loader(data.test, config.get("eval_batch_size") or 256):
        x = x.to(device)
        batches.append(transform(x) if transform is not None else x)
        total += len(x)
        if total >= n_points:
            break
    return torch.cat(batches)[:n_points]


@torch.inference_mode()
def stage_features(model, images, stages, batch_size):
    """{stage: (n, features) float32 tensor}: each stage's output flattened per sample, in eval mode (as at test
    time; the whole C*H*W map is one point of the cloud)."""
    model.eval()
    out = {s: [] for s in stages}
    with taps(model, stages) as feats:
        for x in images.split(batch_size):
            model(x)
            for s in stages:
                out[s].append(feats[s].flatten(1).float())
    return {s: torch.cat(v) for s, v in out.items()}


def wasserstein2(a, b):
    """Wasserstein-2 distance between the point clouds a, b (N, d) with uniform weights: the exact optimal transport
    cost (POT's network simplex, ot.emd2) for the squared Euclidean cost, square-rooted."""
    import ot
    a = torch.as_tensor(a).double().reshape(len(a), -1)
    b = torch.as_tensor(b).double().reshape(len(b), -1)
    # the exact (not matrix-product) path: a cloud's cost to itself has an exactly zero diagonal
    cost = torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist").pow(2).cpu().numpy()
    return math.sqrt(max(float(ot.emd2(ot.unif(len(a)), ot.unif(len(b)), cost, numItermax=10 ** 7)), 0.0))


def feature_distances(a, b):
    """RTD (lib.rtd.rtd: symmetrised, distances divided by their 0.9-quantile), MSE (mean over samples and features
    of the squared difference) and Wasserstein-2 between two (N, d) clouds of corresponding points."""
    from .rtd import rtd
    return {"rtd": rtd(a, b, normalize="quantile"), "mse": float(((a - b).double() ** 2).mean()),
            "wasserstein": wasserstein2(a, b)}


def representation_cache(run, member):
    return run.file(os.path.join("analysis", f"representations_member{member}.json"))


def _file_id(path):
    st = os.stat(path)  # members are written by rename: a new file has a new mtime
    return [st.st_size, st.st_mtime_ns]


def member_representations(run, n_points=256, stages=REPR_STAGES, data_dir=None, device=None, batch_size=None,
                           log=print):
    """{member i: {"features": {stage: {rtd, mse, wasserstein}}, "weights": {stage: mse}, "cosine": c}}, member 1
    against member i, for every finished member of `run`.

    Each member's result is cached in <run>/analysis/representations_member<i>.json, keyed by the number of test
    points, the stages and the identity of member i's and member 1's weight files; a valid cache is read back. The
    cache holds the distances, not the activations: ResNet-50's stage outputs of 256 images at 224 px take 1.5 GB per
    member. Members to (re)compute run one forward pass each; member 1's activations are computed once and kept.
    """
    check(all(s in REPR_STAGES for s in stages), f"stages must be among {', '.join(REPR_STAGES)}, got {stages}")
    n = run.completed_members()

    def key(i):
        return {"version": CACHE_VERSION, "n_points": n_points, "stages": list(stages), "member": _file_id(run.weights(i)),
                "first": _file_id(run.weights(1)), "rtd": "symmetric, quantile", "wasserstein": "W2, exact EMD (POT)"}
    results, todo = {}, []
    for i in range(1, n + 1):
        try:
            cached = load_json(representation_cache(run, i))
        except (OSError, ValueError):
            cached = None
        if cached is not None and cached.get("key") == key(i):
            results[i] = cached
        else:
            todo.append(i)
    if results:
        log(f"{run.path}: member(s) {' '.join(map(str, sorted(results)))} read from the cache")
    if not todo:
        return results
    cfg = run.config
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    num_classes = int(np.load(run.probs(1), mmap_mode="r").shape[1])
    images = test_images(cfg, n_points, data_dir, device)
    batch_size = batch_size or cfg.get("eval_batch_size") or 256
    keys = parameter_keys(cfg["arch"], num_classes)
    keys = {s: keys[s] for s in list(stages) + ["all"]}

    def features(i):
        model = build_model(cfg["arch"], num_classes)
        model.load_state_dict(load_weights(run.weights(i)))
        return stage_features(model.to(device), images, stages, batch_size)
    first = features(1)
    for i in todo:
        t0 = time.time()
        feats = first if i == 1 else features(i)
        gram, weight_mse = weight_stats([run.weights(1), run.weights(i)], keys)
        results[i] = {"key": key(i), "n_points": len(images),
                      "features": {s: feature_distances(first[s], feats[s]) for s in stages},
                      "weights": {s: float(v[1]) for s, v in weight_mse.items()},
                      "cosine": float(cosine_from_gram(gram)[0, 1])}
        save_json(representation_cache(run, i), results[i])
        log(f"{run.path}: member {i} computed ({len(images)} test points, {time.time() - t0:.1f} s)")
    return results


REPR_COLUMNS = ["run_dir", "group", "method", "seed", "member", "accuracy", "stage", "metric", "value"]


def representation_rows(run, results, group_by=("method",)):
    """Tidy rows (REPR_COLUMNS): one per member, stage and metric; metric is rtd, mse, wasserstein (stage outputs),
    weight_mse (stage weights) or weight_cosine (stage 'all')."""
    labels = np.load(run.file("labels.npy"))
    rows = []
    for i, r in sorted(results.items()):
        base = dict(run_info(run, group_by), member=i, accuracy=metrics.accuracy(np.load(run.probs(i)), labels))
        rows += [dict(base, stage=s, metric=m, value=v) for s, d in r["features"].items() for m, v in d.items()]
        rows += [dict(base, stage=s, metric="weight_mse", value=v) for s, v in r["weights"].items()]
        rows.append(dict(base, stage="all", metric="weight_cosine", value=r["cosine"]))
    return rows


# ----------------------------------------------------------------------------------------------------------------
# diversity structure

PAIR_COLUMNS = ["run_dir", "group", "method", "seed", "i", "j", "diversity", "weight_cosine", "with_first"]


def diversity_structure(run, group_by=("method",)):
    """(pairwise diversity (M, M), pairwise weight cosine (M, M), one row per pair i < j (PAIR_COLUMNS))."""
    probs, labels = run.load_probs(), np.load(run.file("labels.npy"))
    div = metrics.pairwise_diversity(probs, labels)
    keys = parameter_keys(run.config["arch"], probs.shape[2])
    gram, _ = weight_stats([run.weights(i) for i in range(1, len(probs) + 1)], {"all": keys["all"]})
    cos = cosine_from_gram(gram)
    info = run_info(run, group_by)
    rows = [dict(info, i=i + 1, j=j + 1, diversity=div[i, j], weight_cosine=cos[i, j], with_first=i == 0)
            for i, j in itertools.combinations(range(len(probs)), 2)]
    return div, cos, rows


def pearson(x, y):
    """Pearson correlation, NaN for fewer than 3 points or a constant variable."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def correlations(rows):
    """Correlation of diversity and weight cosine over every pair of every run ('global': the thesis' -0.625), in
    each run ('within': {run_dir: r}) and the mean of the within-run ones ('within_mean': the thesis' 0.02)."""
    by_run = {}
    for r in rows:
        by_run.setdefault(r["run_dir"], []).append(r)
    within = {d: pearson([r["diversity"] for r in rs], [r["weight_cosine"] for r in rs]) for d, rs in by_run.items()}
    finite = [v for v in within.values() if np.isfinite(v)]
    return {"global": pearson([r["diversity"] for r in rows], [r["weight_cosine"] for r in rows]), "within": within,
            "within_mean": float(np.mean(finite)) if finite else float("nan"), "pairs": len(rows), "runs": len(by_run)}


# ----------------------------------------------------------------------------------------------------------------
# subsets

def subset_indices(members, size, fix_first=False):
    """(n, size) array of every subset of range(members), ascending; fix_first: member 0 in every subset."""
    check(1 <= size <= members, f"subset size must be between 1 and the number of members ({members}), got {size}")
    if fix_first:
        rest = np.array(list(itertools.combinations(range(1, members), size - 1)), dtype=np.int64).reshape(-1, size - 1)
        return np.hstack([np.zeros((len(rest), 1), dtype=np.int64), rest])
    return np.array(list(itertools.combinations(range(members), size)), dtype=np.int64).reshape(-1, size)


def subset_ensemble_accuracy(probs, labels, idx, chunk_bytes=1 << 27):
    """Accuracy (%) of the ensemble of members idx[s] (argmax of the mean probability, as
    lib.metrics.ensemble_accuracy) for every row s of idx, vectorised over subsets in chunks of `chunk_bytes`.

    Exact reductions shrink the work before any subset is formed:
    - a sample on which all members predict the same class c is predicted c by every subset (each member gives any
      other class at most its probability of c, and strictly less to a lower class): counted once;
    - on the others, a subset of k members sums at most U(c) = the k largest member probabilities of class c, and
      at least L(c) = the k smallest; so its winner c* has U(c*) >= max_c L(c). Only classes passing this test are
      candidates (2 or 3 per sample on CIFAR-like members), kept in ascending order so that ties go to the lowest
      class, as numpy's argmax; a sample with one candidate is decided. Samples are bucketed by their number of
      candidates (rounded up to a power of two) so that few padded entries are summed.
    """
    probs, labels = np.asarray(probs), np.asarray(labels)
    k, n = idx.shape[1], probs.shape[1]
    preds = probs.argmax(-1)
    unanimous = (preds == preds[:1]).all(0)
    correct = np.full(len(idx), np.count_nonzero(unanimous & (preds[0] == labels)), dtype=np.int64)
    hard = np.flatnonzero(~unanimous)
    p = np.sort(probs[:, hard].astype(np.float64), axis=0)  # (M, H, C), sorted over members
    lower = p[:k].sum(0).max(1)  # (H,): max over classes of the k smallest
    cand = p[-k:].sum(0) >= lower[:, None] * (1 - 1e-9)  # (H, C); the margin absorbs rounding in the sums
    count = cand.sum(1)
    correct += np.count_nonzero((count == 1) & cand[np.arange(len(hard)), labels[hard]])
    bucket = np.minimum(2 ** np.ceil(np.log2(np.maximum(count, 1))).astype(int), probs.shape[2])
    for width in np.unique(bucket[count > 1]):
        sel = np.flatnonzero((bucket == width) & (count > 1))
        c, cnt = cand[sel], count[sel]
        order = np.argsort(~c, axis=1, kind="stable")[:, :width]  # candidate classes first, ascending
        last = order[np.arange(len(sel)), cnt - 1]
        order = np.where(np.arange(width) >= cnt[:, None], last[:, None], order)  # pad: repeat the last candidate
        q = np.take_along_axis(probs[:, hard[sel]].astype(np.float64), order[None], axis=2)  # (M, S, width)
        hit = order == labels[hard[sel]][:, None]  # (S, width): this candidate is the true class
        rows = np.arange(len(sel))[None]
        step = max(1, chunk_bytes // (len(sel) * width * 8))
        for s in range(0, len(idx), step):
            sub = idx[s:s + step]
            total = q[sub[:, 0]]  # a new array (fancy indexing), summed into in place
            for j in range(1, k):
                total += q[sub[:, j]]
            correct[s:s + step] += hit[rows, total.argmax(2)].sum(1)
    return 100.0 * (correct / n)


def subset_stats(probs, labels, size, fix_first=False):
    """Every subset of `size` members (fix_first: member 1 always in): {"idx" (0-based, (n, size)), "avg_accuracy",
    "diversity", "ensemble_accuracy"} as (n,) arrays, in %. Member accuracies and the pairwise diversity matrix are
    computed once; a subset's diversity is the mean of its pairs' entries, as lib.metrics.diversity."""
    probs = np.asarray(probs)
    check(2 <= size <= len(probs), f"--size must be between 2 and the number of members ({len(probs)}), got {size}")
    idx = subset_indices(len(probs), size, fix_first)
    acc = metrics.member_accuracy(probs, labels)
    pair = metrics.pairwise_diversity(probs, labels)
    a, b = np.triu_indices(size, 1)
    return {"idx": idx, "avg_accuracy": acc[idx].mean(1), "diversity": pair[idx[:, a], idx[:, b]].mean(1),
            "ensemble_accuracy": subset_ensemble_accuracy(probs, labels, idx)}


def better_half(ensemble_accuracy):
    """True for the subsets above the median ensemble accuracy (the better half), False for the others."""
    return np.asarray(ensemble_accuracy) > np.median(ensemble_accuracy)


def separating_line(x, y, label):
    """Linear SVM (scikit-learn LinearSVC on standardised x, y) between points with label True and False.
    Returns ((a, b, c), training accuracy) with the line a*x + b*y + c = 0 (and margins = +-1) in the original
    coordinates, a*x + b*y + c > 0 on the True side; None when one class is empty."""
    from sklearn.svm import LinearSVC
    label = np.asarray(label, bool)
    if label.all() or not label.any():
        return None
    xy = np.column_stack([x, y]).astype(float)
    mu, sd = xy.mean(0), xy.std(0)
    sd[sd == 0] = 1.0
    clf = LinearSVC(C=1.0, max_iter=100_000).fit((xy - mu) / sd, label)
    w = clf.coef_[0] / sd
    c = float(clf.intercept_[0] - (clf.coef_[0] * mu / sd).sum())
    return (float(w[0]), float(w[1]), c), float(clf.score((xy - mu) / sd, label))


def tails(ensemble_accuracy, fraction=0.05):
    """(indices of the worst, of the best) `fraction` of subsets by ensemble accuracy (at least one each)."""
    order = np.argsort(ensemble_accuracy, kind="stable")
    n = max(1, int(round(fraction * len(order))))
    return order[:n], order[-n:]


def synthetic_probs(members=15, samples=10000, classes=100, seed=0):
    """CIFAR-100-sized test probabilities of `members` correlated members (a per-sample signal they share plus
    their own noise: members 85.4 % accurate, an ensemble of 5 87.0 %, diversity 70, close to the thesis' CIFAR-100
    members), for benchmarks and tests."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, samples)
    shared = 1.5 * rng.standard_normal((samples, classes), dtype=np.float32)
    shared[np.arange(samples), labels] += 5.6
    logits = shared[None] + 0.35 * rng.standard_normal((members, samples, classes), dtype=np.float32)
    logits = 2.0 * (logits - logits.max(-1, keepdims=True))
    probs = np.exp(logits)
    return (probs / probs.sum(-1, keepdims=True)).astype(np.float32), labels


# ----------------------------------------------------------------------------------------------------------------
# figures

def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path):
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    pyplot().close(fig)


def category_colors(n):
    """n distinct colours: tab10, tab20, then a sampled colormap."""
    plt = pyplot()
    if n <= 10:
        return [plt.get_cmap("tab10")(i) for i in range(n)]
    if n <= 20:
        return [plt.get_cmap("tab20")(i) for i in range(n)]
    return [plt.get_cmap("viridis")(i / max(n - 1, 1)) for i in range(n)]
