"""Internal representations of ensemble members (thesis figures 4.2, 4.3, 4.5): member 1 against member i of one
run: RTD, MSE and Wasserstein-2 between stage outputs on the first n test images, MSE between each stage's weights,
cosine of all flattened weights; one small cache file per member in <run>/analysis/; the CSV, figures and markdown
of scripts/analyze_representations.py.
"""
import argparse
import math
import os
import time

import numpy as np
import ot
import torch

from lib.analysis.report import regime
from lib.analysis.weight_stats import cosine_from_gram, parameter_keys, weight_stats
from lib.core.rtd import rtd
from lib.data.tasks import load_task, test_loader
from lib.evaluation import metrics
from lib.infra.errors import check
from lib.infra.figures import category_colors, pyplot, save_figure, short
from lib.infra.files import intact, load_json, load_weights, save_json, seal, write_csv
from lib.models.backbones import arch_stages, build_model
from lib.models.stages import feature_layer, taps
from lib.runs.rundir import find_runs, open_run, run_info

FEATURE_METRICS = ["rtd", "mse", "wasserstein"]
CACHE_VERSION = 1  # bump when a distance's definition changes: every cached member is then recomputed


def test_images(config, n_points, data_dir=None, device="cpu"):
    """The first `n_points` test images after the run's own test transform, one (n, 3, H, W) tensor on `device`."""
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
    a = torch.as_tensor(a).double().reshape(len(a), -1)
    b = torch.as_tensor(b).double().reshape(len(b), -1)
    # the exact (not matrix-product) path: a cloud's cost to itself has an exactly zero diagonal
    cost = torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist").pow(2).cpu().numpy()
    return math.sqrt(max(float(ot.emd2(ot.unif(len(a)), ot.unif(len(b)), cost, numItermax=10 ** 7)), 0.0))


def feature_distances(a, b):
    """RTD (lib.core.rtd.rtd: symmetrised, distances divided by their 0.9-quantile), MSE (mean over samples and features
    of the squared difference) and Wasserstein-2 between two (N, d) clouds of corresponding points."""
    return {"rtd": rtd(a, b, normalize="quantile"), "mse": float(((a - b).double() ** 2).mean()),
            "wasserstein": wasserstein2(a, b)}


def representation_cache(run, member):
    return run.file(os.path.join("analysis", f"representations_member{member}.json"))


def _file_id(path):
    st = os.stat(path)  # members are written by rename: a new file has a new mtime
    return [st.st_size, st.st_mtime_ns]


def member_representations(run, n_points=256, stages=None, data_dir=None, device=None, batch_size=None,
                           log=print):
    """{member i: {"features": {stage: {rtd, mse, wasserstein}}, "weights": {stage: mse}, "cosine": c}}, member 1
    against member i, for every finished member of `run`.

    Each member's result is cached in <run>/analysis/representations_member<i>.json, keyed by the number of test
    points, the stages and the identity of member i's and member 1's weight files; a valid cache is read back. The
    cache holds the distances, not the activations: ResNet-50's stage outputs of 256 images at 224 px take 1.5 GB per
    member. Members to (re)compute run one forward pass each; member 1's activations are computed once and kept.
    stages: names among the run's arch's stage2..stageK and pool (aliases as in lib.models.stages.taps); None: all
    of them.
    """
    smap = arch_stages(run.config["arch"])
    stages = smap.feature_layers if stages is None else [feature_layer(smap, s, "--stages") for s in stages]
    n = run.completed_members()

    def key(i):
        return {"version": CACHE_VERSION, "n_points": n_points, "stages": list(stages), "member": _file_id(run.weights(i)),
                "first": _file_id(run.weights(1)), "rtd": "symmetric, quantile", "wasserstein": "W2, exact EMD (POT)"}
    results, todo = {}, []
    for i in range(1, n + 1):
        try:  # a damaged entry (its digest: lib.infra.files.seal) is computed again
            cached = load_json(representation_cache(run, i)) if intact(representation_cache(run, i)) else None
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
    keys = parameter_keys(cfg["arch"], num_classes, cfg.get("image_size"))
    keys = {s: keys[s] for s in list(stages) + ["all"]}

    def features(i):
        model = build_model(cfg["arch"], num_classes, cfg.get("image_size"))  # fixed-size models: the run's size
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
        seal(representation_cache(run, i))
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
# files and figures

AXIS = {"rtd": "RTD", "mse": "MSE", "wasserstein": "Wasserstein-2", "weight_mse": "MSE of weights",
        "weight_cosine": "cosine of all weights"}


REGIMES = ["more local", "optimal", "semi-local"]  # figure 4.5's colours, in this order (lib.analysis.report.regime)
REGIME_COLORS = {"more local": "tab:blue", "optimal": "tab:green", "semi-local": "tab:red"}


def best_threshold(left, right):
    """The x that best splits the values `left` (expected below) from `right` (expected above): a cut between two
    neighbouring values that puts the most values on their side (x < t for left, x >= t for right); of equally good
    cuts, the one nearest the middle of the two medians. None if one side is empty."""
    left, right = np.asarray(left, float), np.asarray(right, float)
    if len(left) == 0 or len(right) == 0:
        return None
    values = np.unique(np.concatenate([left, right]))
    cuts = np.concatenate([[values[0] - 1.0], (values[:-1] + values[1:]) / 2, [values[-1] + 1.0]])
    score = np.array([(left < t).sum() + (right >= t).sum() for t in cuts])
    best = cuts[score == score.max()]
    return float(best[np.argmin(np.abs(best - (np.median(left) + np.median(right)) / 2))])


def regime_splits(rows, metric, stage):
    """Figure 4.5's dashed lines in one panel: the thresholds splitting the optimal setting's members (2..M) from
    the more local ones and from the semi-local ones (best_threshold, each neighbour on the side its median is)."""
    x = {g: [r["value"] for r in rows if r.get("regime") == g and r["metric"] == metric and r["stage"] == stage
             and r["member"] > 1 and np.isfinite(r["value"])] for g in REGIMES}
    splits = []
    for other in ("more local", "semi-local"):
        if x[other] and x["optimal"]:
            below = np.median(x[other]) < np.median(x["optimal"])
            t = best_threshold(x[other], x["optimal"]) if below else best_threshold(x["optimal"], x[other])
            splits.append(t)
    return splits


def plot(rows, path, panels, ncols, color_by):
    """Test accuracy of each member against one distance to member 1 per panel (metric, stage). color_by "regime"
    (figure 4.5): more local / optimal / semi-local settings, with the dashed lines that split the optimal one from
    the others (regime_splits)."""
    plt = pyplot()
    key = {"member": lambda r: r["member"], "group": lambda r: r["group"], "run": lambda r: short(r["run_dir"]),
           "regime": lambda r: r.get("regime")}[color_by]
    if color_by == "regime":
        cats = [g for g in REGIMES if any(r.get("regime") == g for r in rows)]
        colors = {g: REGIME_COLORS[g] for g in cats}
    else:
        cats = sorted({key(r) for r in rows}) if color_by == "member" else list(dict.fromkeys(key(r) for r in rows))
        colors = dict(zip(cats, category_colors(len(cats))))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.9 * ncols + 2.2, 2.5 * nrows), squeeze=False,
                             layout="constrained")
    for n, (ax, (metric, stage)) in enumerate(zip(axes.flat, panels)):
        for c in cats:
            pts = [(r["value"], r["accuracy"]) for r in rows
                   if r["metric"] == metric and r["stage"] == stage and key(r) == c and np.isfinite(r["value"])]
            if metric == "weight_mse":
                pts = [pt for pt in pts if pt[0] > 0]  # member 1 against itself: 0, off the log axis
            if pts:
                ax.scatter(*zip(*pts), s=16, color=colors[c], alpha=0.85)
        if color_by == "regime":
            for t in regime_splits(rows, metric, stage):
                if metric != "weight_mse" or t > 0:
                    ax.axvline(t, ls="--", color="black", lw=0.8)
        if metric == "weight_mse":
            ax.set_xscale("log")  # the thesis plots the logarithm of the weight MSE
        else:
            ax.locator_params(axis="x", nbins=4)
            ax.ticklabel_format(axis="x", useOffset=False)
        ax.set_xlabel(f"{AXIS[metric]}, {stage}" if stage != "all" else AXIS[metric], fontsize=8)
        if n % ncols == 0:
            ax.set_ylabel("test accuracy (%)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    handles = [plt.Line2D([], [], ls="", marker="o", color=colors[c]) for c in cats]
    names = [f"member {c}" if color_by == "member" else str(c) for c in cats]
    if color_by == "regime":
        handles.append(plt.Line2D([], [], ls="--", color="black"))
        names.append("split: optimal | others")
    fig.legend(handles, names, loc="outside right upper", fontsize=7)
    save_figure(fig, path)


def summary_table(rows, stage="avgpool"):
    """Mean over runs, per group and member: accuracy, the distances at `stage` and the weight cosine."""
    cols = [(m, stage) for m in FEATURE_METRICS + ["weight_mse"]] + [("weight_cosine", "all")]
    cells = {}
    for r in rows:
        c = cells.setdefault((r["group"], r["member"]), {"acc": {}})
        c["acc"][r["run_dir"]] = r["accuracy"]
        c.setdefault((r["metric"], r["stage"]), []).append(r["value"])
    head = " | ".join(AXIS[m] + (f" ({s})" if s != "all" else "") for m, s in cols)
    lines = [f"| group | member | runs | acc. | {head} |", "|" + "---|" * (len(cols) + 4)]
    for (group, member), c in cells.items():
        vals = " | ".join(f"{np.mean(c[k]):.4g}" if k in c else "-" for k in cols)
        lines.append(f"| {group} | {member} | {len(c['acc'])} | {np.mean(list(c['acc'].values())):.2f} | {vals} |")
    return "\n".join(lines)


def analyze(run_dirs, out, n_points=256, stages=None, group_by=("method",), color_by="auto", data_dir=None,
            device=None, batch_size=None, prefix="representations", log=print):
    """Compute (or read from the caches) every run's distances, write <out>/<prefix>.csv and the two figures;
    returns the markdown section. Its parameters are scripts/analyze_representations.py's flags, passed through."""
    check(n_points >= 4, f"--n_points must be at least 4, got {n_points}")
    rows = []
    for d in find_runs(run_dirs):
        run = open_run(d)
        results = member_representations(run, n_points, stages, data_dir, device, batch_size, log)
        rows += [dict(r, regime=regime(run.config)) for r in representation_rows(run, results, group_by)]
    if color_by == "auto":  # figure 4.5 for several cycle settings; by group for other groups; else by member
        settings = {(r["run_dir"], r["regime"]) for r in rows}
        several = len({r["group"] for r in rows}) > 1
        by_regime = several and all(g is not None for _d, g in settings) and len({g for _d, g in settings}) > 1
        color_by = "regime" if by_regime else "group" if several else "member"
    os.makedirs(out, exist_ok=True)
    write_csv(os.path.join(out, f"{prefix}.csv"), rows, REPR_COLUMNS)
    stages = list(dict.fromkeys(r["stage"] for r in rows if r["metric"] in FEATURE_METRICS))  # each run's names
    grid = [(m, s) for m in FEATURE_METRICS + ["weight_mse"] for s in stages]
    plot(rows, os.path.join(out, f"{prefix}.png"), grid, len(stages), color_by)
    last = next((s for s in stages if s in ("avgpool", "pool")), stages[-1])  # the pooled features (figure 4.2)
    plot(rows, os.path.join(out, f"{prefix}_avgpool.png"),
         [(m, last) for m in FEATURE_METRICS + ["weight_mse"]] + [("weight_cosine", "all")], 5, color_by)
    runs = len({r["run_dir"] for r in rows})
    colouring = color_by if color_by != "regime" else (
        "cycle setting, as figure 4.5: more local (a lower cycle lr than the optimum, or the optimal lr with shorter "
        "cycles), optimal (cycle lr 2 x lr, cycle epochs 0.5 x epochs) or semi-local (the rest); the dashed lines "
        "split the optimal setting's members from the more local and the semi-local ones (the threshold that puts "
        "the most members on their side)")
    return (f"Member 1 against member i of {runs} run(s): distances between stage outputs on the first {n_points} "
            f"test images (RTD with 0.9-quantile-normalised distances, MSE, exact Wasserstein-2), MSE of each stage's "
            f"weights (avgpool: the fc layer), cosine of all weights; coloured by {colouring}. "
            f"Data: [{prefix}.csv]({prefix}.csv).\n\n"
            f"![accuracy against distances at {last} (figure 4.2)]({prefix}_avgpool.png)\n\n"
            f"![accuracy against distances at every stage (figures 4.3, 4.5)]({prefix}.png)\n\n"
            f"{summary_table(rows, last)}\n")
