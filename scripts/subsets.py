"""Every ensemble of --size members of a large run (thesis figure 6.1, table 6.1): each subset's average member
accuracy, diversity and ensemble accuracy, vectorised from the saved probabilities; a linear SVM between the better
and the worse half; the worst and best 5 %.

    python scripts/subsets.py runs/cifar100/subsets/starsse15 runs/cifar100/subsets/local_de15 --size 5
    python scripts/subsets.py runs/demo/local_de runs/demo/starsse --size 3 --out runs/demo/subsets   # embedded default
    python scripts/subsets.py --benchmark            # timing on CIFAR-100-sized synthetic probabilities (15 members)

StarSSE runs keep member 1 in every subset (--fix_first auto; the thesis: C(14,4) = 1001 per 15-member run), other
methods take every subset (Local DE: C(15,5) = 3003). The subsets of the runs of one group (--group_by) are pooled,
as the thesis pools its two runs. Writes <out>/subsets.csv (one row per subset; columns in the README), subsets.png
(figure 6.1: average member accuracy against diversity, coloured by ensemble accuracy, the best 5 % marked x; the
SVM line, solid, and its margins, dashed), subsets.md (table 6.1) and subsets.json.
"""
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import numpy as np  # noqa: E402

from lib import metrics  # noqa: E402
from lib.analysis import (better_half, find_runs, open_run, pyplot, run_info, save_figure,  # noqa: E402
                          separating_line, subset_stats, synthetic_probs, tails, write_csv)
from lib.cli import runs_parser  # noqa: E402
from lib.errors import check, cli_main  # noqa: E402
from lib.runs import atomic_write, save_json  # noqa: E402

SUBSET_COLUMNS = ["run_dir", "group", "method", "seed", "subset", "avg_accuracy", "diversity", "ensemble_accuracy",
                  "better_half", "tail"]


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
            for offset, style in [(0, "-"), (1, "--"), (-1, "--")]:  # a x + b y + c = offset
                if abs(b) > 1e-12:
                    ax.plot(xs, (offset - c - a * xs) / b, style, color="black", lw=1)
                else:
                    ax.axvline((offset - c) / a, ls=style, color="black", lw=1)
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
            prefix="subsets", log=print):
    """Every subset of every run under `run_dirs`; writes the files and returns the markdown section."""
    check(size >= 2, f"--size must be at least 2 (diversity needs a pair), got {size}")
    rows, groups, seconds = [], {}, 0.0
    for d in find_runs(run_dirs):
        run = open_run(d)
        m = run.completed_members()
        check(m >= size, f"{d} has {m} finished member(s); --size {size} needs at least {size}")
        fix = fix_first == "yes" or (fix_first == "auto" and str(run.config.get("method")).startswith("StarSSE"))
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
        tail = dict.fromkeys(g["worst"].tolist(), "worst") | dict.fromkeys(g["best"].tolist(), "best")
        for k, r in enumerate(r for r in rows if r["group"] == label):  # the order of the group's arrays
            r["better_half"], r["tail"] = bool(g["better"][k]), tail.get(k, "")
        e = g["ensemble_accuracy"]
        summary[label] = {"runs": g["runs"], "member_1_always_in": g["first"], "subsets": n, "size": size,
                          "ensemble_accuracy": {"min": e.min(), "mean": e.mean(), "max": e.max()},
                          "svm": None if g["svm"] is None else {"line_a_b_c": g["svm"][0], "accuracy": g["svm"][1]}}
    os.makedirs(out, exist_ok=True)
    write_csv(os.path.join(out, f"{prefix}.csv"), rows, SUBSET_COLUMNS)
    save_json(os.path.join(out, f"{prefix}.json"), {"groups": summary, "seconds": seconds, "fraction": fraction})
    plot(groups, os.path.join(out, f"{prefix}.png"))
    svm = "; ".join(f"{label}: {100 * g['svm'][1]:.1f} % of the subsets on their half's side" for label, g in
                    groups.items() if g["svm"] is not None)
    counts = ", ".join(f"{k}: {v['subsets']} from {len(v['runs'])} run(s)" for k, v in summary.items())
    return (f"All subsets of {size} members ({counts}), "
            f"computed in {seconds:.2f} s. Linear SVM between the better and worse halves by ensemble accuracy: "
            f"{svm or 'not defined (one half is empty)'}. Data: [{prefix}.csv]({prefix}.csv).\n\n"
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
        print(f"{name}: {len(st['idx'])} subsets in {dt:.2f} s (a loop over lib.metrics would take about {loop:.0f} s; "
              f"same accuracies on a sample of {len(sample)}: {same})")


def build_parser():
    p = runs_parser(__doc__, out="runs/analysis", run_dirs_nargs="*")
    p.add_argument("--size", type=int, default=5, help="ensemble size of the subsets")
    p.add_argument("--fix_first", choices=["auto", "yes", "no"], default="auto",
                   help="member 1 in every subset (auto: for StarSSE runs)")
    p.add_argument("--fraction", type=float, default=0.05, help="tails of table 6.1")
    p.add_argument("--max_subsets", type=int, default=10 ** 6, help="refuse runs with more subsets than this")
    p.add_argument("--benchmark", action="store_true", help="time the computation on synthetic probabilities")
    return p


@cli_main
def main():
    a = build_parser().parse_args()
    if a.benchmark:
        return benchmark()
    check(a.run_dirs, "give at least one run directory (or --benchmark)")
    check(0 < a.fraction <= 0.5, f"--fraction must be in (0, 0.5], got {a.fraction}")
    text = analyze(a.run_dirs, a.out, a.size, a.fix_first, tuple(a.group_by), a.fraction, a.max_subsets)
    atomic_write(os.path.join(a.out, "subsets.md"), lambda tmp: open(tmp, "w").write(f"# Ensemble subsets\n\n{text}"))
    print(text)
    print(f"written to {a.out}/ (subsets.csv, subsets.png, subsets.md, subsets.json)")


if __name__ == "__main__":
    main()
