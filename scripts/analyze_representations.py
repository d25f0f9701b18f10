"""Internal representations of ensemble members (thesis figures 4.2, 4.3, 4.5): each member's test accuracy
against its distance to member 1 -- RTD, MSE and Wasserstein-2 between the outputs of stage2..stage5 and avgpool on
the first --n_points test images, MSE between each stage's weights (avgpool: the fc layer that reads its output),
and the cosine similarity of all flattened weights.

    python scripts/analyze_representations.py runs/demo/sse/run0 --out runs/demo/representations
    python scripts/analyze_representations.py runs/cifar100/sse --data_dir /data          # figures 4.2, 4.3
    python scripts/analyze_representations.py runs/cifar100/grid --group_by method cycle_lr cycle_epochs \\
        --data_dir /data --out runs/cifar100/report_representations_grid                  # figure 4.5, by setting

Writes <out>/representations.csv (tidy: one row per run, member, stage and metric; columns in the README),
representations.png (rows RTD, MSE, Wasserstein-2 of the outputs and MSE of the weights; one column per stage),
representations_avgpool.png (figure 4.2: AvgPool output, fc weights, weight cosine) and representations.md.
Points are coloured by member index (one group of runs) or by group (several: e.g. local / optimal / semi-local
cycle settings). Each member's distances are cached in <run>/analysis/, so a second call only reads and draws.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import numpy as np  # noqa: E402

from lib.analysis import (FEATURE_METRICS, REPR_COLUMNS, REPR_STAGES, category_colors, find_runs,  # noqa: E402
                          member_representations, open_run, pyplot, representation_rows, save_figure, write_csv)
from lib.cli import runs_parser  # noqa: E402
from lib.errors import check, cli_main  # noqa: E402
from lib.runs import atomic_write  # noqa: E402

AXIS = {"rtd": "RTD", "mse": "MSE", "wasserstein": "Wasserstein-2", "weight_mse": "MSE of weights",
        "weight_cosine": "cosine of all weights"}


def short(run_dir):
    return "/".join(os.path.normpath(run_dir).split(os.sep)[-2:])


def plot(rows, path, panels, ncols, color_by):
    """Test accuracy of each member against one distance to member 1 per panel (metric, stage)."""
    plt = pyplot()
    key = {"member": lambda r: r["member"], "group": lambda r: r["group"], "run": lambda r: short(r["run_dir"])}[color_by]
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
    fig.legend(handles, [f"member {c}" if color_by == "member" else str(c) for c in cats], loc="outside right upper",
               fontsize=7)
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


def analyze(run_dirs, out, n_points=256, stages=REPR_STAGES, group_by=("method",), color_by="auto", data_dir=None,
            device=None, batch_size=None, prefix="representations", log=print):
    """Compute (or read from the caches) every run's distances, write <out>/<prefix>.csv and the two figures;
    returns the markdown section."""
    check(n_points >= 4, f"--n_points must be at least 4, got {n_points}")
    rows = []
    for d in find_runs(run_dirs):
        run = open_run(d)
        results = member_representations(run, n_points, stages, data_dir, device, batch_size, log)
        rows += representation_rows(run, results, group_by)
    if color_by == "auto":
        color_by = "group" if len({r["group"] for r in rows}) > 1 else "member"
    os.makedirs(out, exist_ok=True)
    write_csv(os.path.join(out, f"{prefix}.csv"), rows, REPR_COLUMNS)
    grid = [(m, s) for m in FEATURE_METRICS + ["weight_mse"] for s in stages]
    plot(rows, os.path.join(out, f"{prefix}.png"), grid, len(stages), color_by)
    last = "avgpool" if "avgpool" in stages else stages[-1]
    plot(rows, os.path.join(out, f"{prefix}_avgpool.png"),
         [(m, last) for m in FEATURE_METRICS + ["weight_mse"]] + [("weight_cosine", "all")], 5, color_by)
    runs = len({r["run_dir"] for r in rows})
    return (f"Member 1 against member i of {runs} run(s): distances between stage outputs on the first {n_points} "
            f"test images (RTD with 0.9-quantile-normalised distances, MSE, exact Wasserstein-2), MSE of each stage's "
            f"weights (avgpool: the fc layer), cosine of all weights; coloured by {color_by}. "
            f"Data: [{prefix}.csv]({prefix}.csv).\n\n"
            f"![accuracy against distances at {last} (figure 4.2)]({prefix}_avgpool.png)\n\n"
            f"![accuracy against distances at every stage (figures 4.3, 4.5)]({prefix}.png)\n\n"
            f"{summary_table(rows, last)}\n")


def build_parser():
    p = runs_parser(__doc__, out="runs/analysis")
    p.add_argument("--n_points", type=int, default=256, help="first N test images (the thesis' batch: 256)")
    p.add_argument("--stages", nargs="+", default=REPR_STAGES, choices=REPR_STAGES)
    p.add_argument("--color_by", choices=["auto", "member", "group", "run"], default="auto",
                   help="auto: member index for one group of runs, else group")
    p.add_argument("--data_dir", default=None, help="cifar100: the folder holding cifar-100-python/ (default: the run's)")
    p.add_argument("--batch_size", type=int, default=None, help="forward batch (default: the run's eval_batch_size)")
    p.add_argument("--cpu", action="store_true", help="use the CPU even if a GPU is present")
    return p


@cli_main
def main():
    a = build_parser().parse_args()
    text = analyze(a.run_dirs, a.out, a.n_points, a.stages, tuple(a.group_by), a.color_by, a.data_dir,
                   "cpu" if a.cpu else None, a.batch_size)
    doc = f"# Internal representations\n\n{text}"
    atomic_write(os.path.join(a.out, "representations.md"), lambda tmp: open(tmp, "w").write(doc))
    print(text.split("\n\n")[-1])
    print(f"\nwritten to {a.out}/ (representations.csv, representations.png, representations_avgpool.png, "
          f"representations.md)")


if __name__ == "__main__":
    main()
