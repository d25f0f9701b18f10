"""Ensemble subsets (thesis figure 6.1, table 6.1): every ensemble of k members of a large run, vectorised from the
saved probabilities; a linear SVM between the better and worse halves; the worst and best 5 %; the CSV, figure and
markdown of scripts/subsets.py.
"""
import itertools
import json
import math
import os
import time

import numpy as np
from sklearn.svm import LinearSVC

from lib.analysis.report import regime
from lib.evaluation import metrics
from lib.infra.errors import check
from lib.infra.figures import pyplot, save_figure
from lib.infra.files import save_json, write_csv
from lib.runs.rundir import check_one_arch, find_runs, open_run, run_info
from lib.settings import methods
from lib.settings.schema import LEGACY, NON_RESULT_KEYS

SUBSET_COLUMNS = ["run_dir", "group", "method", "seed", "subset", "avg_accuracy", "diversity", "ensemble_accuracy",
                  "better_half", "tail"]


def thesis_pools(configs):
    """{(method, arch): [run dirs]}: the runs figure 6.1 / table 6.1 pool, as the thesis did (l. 231: StarSSE trained
    twice with the optimal setting, 2 x C(14, 4) = 2,002 subsets of 5; Local DE once, C(15, 5) = 3,003): for each
    method and architecture, the runs of one setting that differ only by their seed (same checkpoint, "varying only
    by random seeds"), the thesis' optimal cycle setting first, else the first run's in run-directory order.
    configs: {run dir: config} of the large runs."""
    skip = NON_RESULT_KEYS | {"seed"}
    settings = {}  # (method, arch) -> {setting: [run dirs]}, in the order the settings are preferred
    for d, c in sorted(configs.items(), key=lambda item: (regime(item[1]) not in ("optimal", None), item[0])):
        key = json.dumps({k: c.get(k, LEGACY.get(k)) for k in set(c) | set(LEGACY) if k not in skip},
                         sort_keys=True, default=str)
        settings.setdefault((c.get("method"), c.get("arch")), {}).setdefault(key, []).append(d)
    return {group: sorted(next(iter(by_setting.values()))) for group, by_setting in settings.items()}


def subset_indices(members, size, fix_first=False):
    """(n, size) array of every subset of range(members), ascending; fix_first: member 0 in every subset."""
    check(1 <= size <= members, f"subset size must be between 1 and the number of members ({members}), got {size}")
    if fix_first:
        rest = np.array(list(itertools.combinations(range(1, members), size - 1)), dtype=np.int64).reshape(-1, size - 1)
        return np.hstack([np.zeros((len(rest), 1), dtype=np.int64), rest])
    return np.array(list(itertools.combinations(range(members), size)), dtype=np.int64).reshape(-1, size)


def subset_ensemble_accuracy(probs, labels, idx, chunk_bytes=1 << 27):
    """Accuracy (%) of the ensemble of members idx[s] (argmax of the mean probability, as
    lib.evaluation.metrics.ensemble_accuracy) for every row s of idx, vectorised over subsets in chunks of
    `chunk_bytes`.

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
    computed once; a subset's diversity is the mean of its pairs' entries, as lib.evaluation.metrics.diversity."""
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


def _svm(z, label):
    """LinearSVC (C=1) on standardised points z: (w, c) with w . z + c > 0 on the True side."""
    clf = LinearSVC(C=1.0, max_iter=100_000).fit(z, label)
    return clf.coef_[0], float(clf.intercept_[0]), clf


def _standardise(x, y):
    xy = np.column_stack([x, y]).astype(float)
    mu, sd = xy.mean(0), xy.std(0)
    sd[sd == 0] = 1.0
    return (xy - mu) / sd, mu, sd


def separating_line(x, y, label):
    """Linear SVM (scikit-learn LinearSVC on standardised x, y) between points with label True and False.
    Returns ((a, b, c), training accuracy) with the line a*x + b*y + c = 0 in the original coordinates,
    a*x + b*y + c > 0 on the True side; None when one class is empty."""
    label = np.asarray(label, bool)
    if label.all() or not label.any():
        return None
    z, mu, sd = _standardise(x, y)
    w, c, clf = _svm(z, label)
    return (float(w[0] / sd[0]), float(w[1] / sd[1]), c - float((w * mu / sd).sum())), float(clf.score(z, label))


MIN_BAND_POINTS = 30  # fewer subsets (a toy run): no confidence band, the bootstrap would mean nothing


def line_band(x, y, label, level=0.95, n_boot=1000, points=60, seed=0):
    """Pointwise `level` confidence band of separating_line's line (figure 6.1's dashed lines), by the bootstrap:
    the SVM refitted on n_boot resamples (with replacement) of the points; at each of `points` positions spanning
    the data along the axis the fitted line is a function of (x when it is closer to horizontal in standardised
    units, else y), the (1 - level) / 2 and (1 + level) / 2 quantiles of the refitted lines' other coordinate.
    Returns {"axis": "x" or "y", "t": positions, "lo", "hi", "level", "n_boot"}; None when one class is empty or
    there are fewer than MIN_BAND_POINTS points."""
    label = np.asarray(label, bool)
    if label.all() or not label.any() or len(label) < MIN_BAND_POINTS:
        return None
    z, mu, sd = _standardise(x, y)
    w, _c, _ = _svm(z, label)
    along = 0 if abs(w[1]) >= abs(w[0]) else 1  # the line as a function of standardised x (0) or y (1)
    t = np.linspace(z[:, along].min(), z[:, along].max(), points)
    rng = np.random.default_rng(seed)
    other = []
    for _ in range(n_boot):
        i = rng.integers(0, len(z), len(z))
        if label[i].all() or not label[i].any():
            continue
        wb, cb, _ = _svm(z[i], label[i])
        if wb[1 - along] != 0:
            other.append(-(cb + wb[along] * t) / wb[1 - along])
    lo, hi = np.quantile(np.array(other), [(1 - level) / 2, (1 + level) / 2], axis=0)
    unstd = lambda v, k: v * sd[k] + mu[k]
    return {"axis": "xy"[along], "t": unstd(t, along), "lo": unstd(lo, 1 - along), "hi": unstd(hi, 1 - along),
            "level": level, "n_boot": len(other)}


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
# files and figures

def plot(groups, path):
    """Figure 6.1, one panel per group."""
    plt = pyplot()
    ncols = min(len(groups), 3)
    nrows = -(-len(groups) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5 * ncols, 4 * nrows), squeeze=False, layout="constrained")
    for ax in axes.flat[len(groups):]:
        ax.axis("off")
    for ax, (label, g) in zip(axes.flat, groups.items()):
        x, y, e = g["avg_accuracy"], g["diversity"], g["ensemble_accuracy"]
        points = ax.scatter(x, y, c=e, cmap="viridis", s=7)
        ax.scatter(x[g["best"]], y[g["best"]], marker="x", color="black", s=18, lw=0.8, label="best 5 %")
        lims = ax.get_xlim(), ax.get_ylim()
        if g["svm"] is not None:
            (a, b, c), _acc = g["svm"]
            xs = np.linspace(*lims[0], 50)
            for offset, style, color, name in [(0, "-", "black", "separating line (linear SVM, better / worse half)"),
                                               (1, ":", "grey", "SVM margins (an extra, not in the thesis)"),
                                               (-1, ":", "grey", None)]:  # a x + b y + c = offset
                if abs(b) > 1e-12:
                    ax.plot(xs, (offset - c - a * xs) / b, style, color=color, lw=1, label=name)
                else:
                    ax.axvline((offset - c) / a, ls=style, color=color, lw=1, label=name)
        band = g.get("band")
        if band is not None:
            name = f"{100 * band['level']:g} % confidence interval of the line (bootstrap)"
            for k, edge in enumerate((band["lo"], band["hi"])):
                xy = (band["t"], edge) if band["axis"] == "x" else (edge, band["t"])
                ax.plot(*xy, "--", color="black", lw=1, label=name if k == 0 else None)
        ax.set_xlim(*lims[0])
        ax.set_ylim(*lims[1])
        ax.set_title(f"{label}: {len(e)} subsets of {g['size']}", fontsize=9)
        ax.set_xlabel("average member accuracy (%)")
        ax.set_ylabel("diversity (%)")
        ax.legend(fontsize=7, loc="lower left")
        fig.colorbar(points, ax=ax, label="ensemble accuracy (%)")
    save_figure(fig, path)


def table(groups):
    """Table 6.1: mean ± std (ddof=1) of the three statistics over the worst and the best 5 % of each group."""
    lines = ["| Algorithm | | worst 5 % | best 5 % |", "|---|---|---|---|"]
    for label, g in groups.items():
        for n, (key, name) in enumerate([("avg_accuracy", "avg. acc."), ("diversity", "div."),
                                         ("ensemble_accuracy", "**ens. acc.**")]):
            cells = []
            for part in (g["worst"], g["best"]):
                v = g[key][part]
                cells.append(f"{v.mean():.2f} ± {v.std(ddof=1):.2f}" if len(v) > 1 else f"{v.mean():.2f}")
            lines.append(f"| {f'**{label}**' if n == 0 else ''} | {name} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def analyze(run_dirs, out, size=5, fix_first="auto", group_by=("method",), fraction=0.05, max_subsets=10 ** 6,
            prefix="subsets", log=print, level=0.95, n_boot=1000):
    """Every subset of every run under `run_dirs`, the runs of one group pooled (the thesis' figure 6.1: the runs
    thesis_pools picks); writes the files and returns the markdown section. level, n_boot: the confidence band of
    the separating line (line_band). Its parameters are scripts/subsets.py's flags, passed through; it reads as
    the thesis' steps (pool the runs, every subset's statistics, the tails, the separating line, the files)."""
    check(size >= 2, f"--size must be at least 2 (diversity needs a pair), got {size}")
    rows, groups, seconds, configs = [], {}, 0.0, {}
    found = find_runs(run_dirs)
    for d in found:  # the runs of one group are pooled: one architecture each
        run = open_run(d, verify=False)
        configs.setdefault(run_info(run, group_by)["group"], {})[d] = run.config
    for label, group in configs.items():
        check_one_arch(group, f"the subsets of group '{label}' (--group_by {' '.join(group_by)})")
    for d in found:
        run = open_run(d, verify=False)  # the probabilities it reads are checked against their digests (load_probs)
        m = run.completed_members()
        check(m >= size, f"{d} has {m} finished member(s); --size {size} needs at least {size}")
        fix = fix_first == "yes" or (fix_first == "auto" and getattr(methods.get(run.config.get("method")), "star", False))
        count = math.comb(m - 1, size - 1) if fix else math.comb(m, size)
        check(count <= max_subsets, f"{d}: {count} subsets of {size} of {m} members, more than --max_subsets {max_subsets}")
        probs, labels = run.load_probs(m), np.load(run.file("labels.npy"))
        t0 = time.time()
        st = subset_stats(probs, labels, size, fix)
        dt = time.time() - t0
        seconds += dt
        e = st["ensemble_accuracy"]
        log(f"{d}: {len(e)} subsets of {size} of {m} members{' (member 1 in each)' if fix else ''} in {dt:.2f} s; "
            f"ensemble accuracy {e.min():.2f} .. {e.max():.2f} (mean {e.mean():.2f})")
        info = run_info(run, group_by)
        g = groups.setdefault(info["group"], {"size": size, "runs": [], "first": []})
        g["runs"].append(d)
        g["first"].append(fix)
        for key in ("avg_accuracy", "diversity", "ensemble_accuracy"):
            g[key] = np.concatenate([g.get(key, np.zeros(0)), st[key]])
        rows += [dict(info, subset=" ".join(str(i + 1) for i in s), avg_accuracy=a, diversity=v, ensemble_accuracy=x)
                 for s, a, v, x in zip(st["idx"], st["avg_accuracy"], st["diversity"], e)]
    summary = {}
    for label, g in groups.items():
        n = len(g["ensemble_accuracy"])
        g["better"] = better_half(g["ensemble_accuracy"])
        g["worst"], g["best"] = tails(g["ensemble_accuracy"], fraction)
        g["svm"] = separating_line(g["avg_accuracy"], g["diversity"], g["better"])
        g["band"] = line_band(g["avg_accuracy"], g["diversity"], g["better"], level, n_boot)
        tail = dict.fromkeys(g["worst"].tolist(), "worst") | dict.fromkeys(g["best"].tolist(), "best")
        for k, r in enumerate(r for r in rows if r["group"] == label):  # the order of the group's arrays
            r["better_half"], r["tail"] = bool(g["better"][k]), tail.get(k, "")
        e = g["ensemble_accuracy"]
        summary[label] = {"runs": g["runs"], "member_1_always_in": g["first"], "subsets": n, "size": size,
                          "ensemble_accuracy": {"min": e.min(), "mean": e.mean(), "max": e.max()},
                          "svm": None if g["svm"] is None else {"line_a_b_c": g["svm"][0], "accuracy": g["svm"][1]},
                          "band": None if g["band"] is None else
                          {k: np.asarray(v).tolist() for k, v in g["band"].items()}}
    os.makedirs(out, exist_ok=True)
    write_csv(os.path.join(out, f"{prefix}.csv"), rows, SUBSET_COLUMNS)
    save_json(os.path.join(out, f"{prefix}.json"), {"groups": summary, "seconds": seconds, "fraction": fraction})
    plot(groups, os.path.join(out, f"{prefix}.png"))
    svm = "; ".join(f"{label}: {100 * g['svm'][1]:.1f} % of the subsets on their half's side" for label, g in
                    groups.items() if g["svm"] is not None)
    counts = ", ".join(f"{k}: {v['subsets']} from {len(v['runs'])} run(s)" for k, v in summary.items())
    band = f"dashed: its pointwise {100 * level:g} % confidence interval ({n_boot} bootstrap refits; the thesis' " \
           f"dashed lines)" if any(g["band"] is not None for g in groups.values()) else \
           f"no confidence interval (fewer than {MIN_BAND_POINTS} subsets)"
    return (f"All subsets of {size} members ({counts}), "
            f"computed in {seconds:.2f} s. Separating line between the better and worse halves by ensemble accuracy "
            f"(linear SVM; solid): {svm or 'not defined (one half is empty)'}; {band}; dotted: the SVM margins (an "
            f"extra). Data: [{prefix}.csv]({prefix}.csv).\n\n"
            f"![average accuracy against diversity, coloured by ensemble accuracy (figure 6.1)]({prefix}.png)\n\n"
            f"Worst and best {100 * fraction:g} % of the subsets by ensemble accuracy (table 6.1; mean ± std over the "
            f"subsets):\n\n{table(groups)}\n")


def benchmark():
    """Time the vectorised statistics on CIFAR-100-sized synthetic probabilities against a direct loop."""
    probs, labels = synthetic_probs(15, 10000, 100)
    print(f"synthetic probabilities: 15 members x 10000 samples x 100 classes; member accuracy "
          f"{metrics.member_accuracy(probs, labels).mean():.2f} %")
    for name, fix in [("Local DE, C(15,5)", False), ("StarSSE, member 1 in each, C(14,4)", True)]:
        t0 = time.time()
        st = subset_stats(probs, labels, 5, fix)
        dt = time.time() - t0
        t0 = time.time()
        sample = st["idx"][:: max(1, len(st["idx"]) // 50)]
        direct = [metrics.ensemble_accuracy(probs[s], labels) for s in sample]
        loop = (time.time() - t0) / len(sample) * len(st["idx"])
        same = np.allclose(direct, st["ensemble_accuracy"][:: max(1, len(st["idx"]) // 50)])
        print(f"{name}: {len(st['idx'])} subsets in {dt:.2f} s (a loop over lib.evaluation.metrics would take about {loop:.0f} s; "
              f"same accuracies on a sample of {len(sample)}: {same})")
