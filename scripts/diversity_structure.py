"""Diversity structure of ensembles (thesis table 6.2, figures 6.2 and 6.4): each run's pairwise diversity matrix,
and diversity against the cosine similarity of the flattened weights for every pair of members, with their
correlation over all pairs of all runs (thesis: -0.625) and the mean of the correlations within each run (0.02).

    python scripts/diversity_structure.py runs/demo/starsse runs/demo/sse --out runs/demo/diversity_structure
    python scripts/diversity_structure.py runs/cifar100/grid runs/cifar100/starsse --out runs/cifar100/report_diversity

Writes <out>/diversity_pairs.csv (one row per pair of members; columns in the README), diversity_cosine.png
(figure 6.2: every pair, one colour per run), diversity_cosine_runs.png (figure 6.4: one row per run for the first
--rows runs: all pairs, pairs with member 1, the other pairs), diversity_structure.json (the correlations) and
diversity_structure.md (with table 6.2 for the first --matrices runs). Diversity as lib.metrics (100 * disagreement
/ max(err1, err2)); cosine of all parameters (BatchNorm running statistics excluded), raw weights as the thesis.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import numpy as np  # noqa: E402

from lib.analysis import (PAIR_COLUMNS, category_colors, correlations, diversity_structure, find_runs,  # noqa: E402
                          open_run, pearson, pyplot, save_figure, write_csv)
from lib.cli import runs_parser  # noqa: E402
from lib.errors import check, cli_main  # noqa: E402
from lib.runs import atomic_write, save_json  # noqa: E402

FIRST, OTHER = "tab:orange", "tab:green"  # the thesis' colours for pairs with and without member 1


def roman(n):
    out = ""
    for value, numeral in [(1000, "M"), (900, "CM"), (500, "D"), (400, "CD"), (100, "C"), (90, "XC"), (50, "L"),
                           (40, "XL"), (10, "X"), (9, "IX"), (5, "V"), (4, "IV"), (1, "I")]:
        while n >= value:
            out, n = out + numeral, n - value
    return out


def matrix_markdown(div):
    """Table 6.2: the pairwise diversity matrix, members in Roman numerals, the largest entry in bold."""
    m = len(div)
    top = div[np.triu_indices(m, 1)].max() if m > 1 else None
    lines = ["| | " + " | ".join(roman(i + 1) for i in range(m)) + " |", "|---" * (m + 1) + "|"]
    for i in range(m):
        cells = [f"**{div[i, j]:.2f}**" if i != j and div[i, j] == top else f"{div[i, j]:.2f}" for j in range(m)]
        lines.append(f"| **{roman(i + 1)}** | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def short(run_dir):
    return "/".join(os.path.normpath(run_dir).split(os.sep)[-2:])


def plot_all(rows, corr, path):
    """Figure 6.2: diversity against weight cosine, every pair of every run, one colour per run."""
    plt = pyplot()
    group = {r["run_dir"]: r["group"] for r in rows}
    runs = list(group)
    colors = dict(zip(runs, category_colors(len(runs))))
    fig, ax = plt.subplots(figsize=(6.5 if len(runs) <= 12 else 5, 4), layout="constrained")
    for d in runs:
        pts = [(r["weight_cosine"], r["diversity"]) for r in rows if r["run_dir"] == d]
        ax.scatter(*zip(*pts), s=14, color=colors[d], label=f"{group[d]} ({short(d)})")
    ax.set_xlabel("cosine similarity of weights")
    ax.set_ylabel("diversity (%)")
    ax.set_title(f"{len(rows)} pairs of {len(runs)} runs: r = {corr['global']:.3f} across runs, "
                 f"{corr['within_mean']:.3f} within a run (mean)", fontsize=8)
    ax.locator_params(axis="x", nbins=4)
    ax.ticklabel_format(axis="x", useOffset=False)
    ax.grid(alpha=0.3)
    if len(runs) <= 12:
        fig.legend(loc="outside right upper", fontsize=6)
    save_figure(fig, path)


def plot_rows(rows, run_dirs, path):
    """Figure 6.4: one row per run; all pairs, pairs with member 1 (orange), the other pairs (green)."""
    plt = pyplot()
    fig, axes = plt.subplots(len(run_dirs), 3, figsize=(10, 2.4 * len(run_dirs)), squeeze=False, layout="constrained")
    for ax_row, d in zip(axes, run_dirs):
        rs = [r for r in rows if r["run_dir"] == d]
        parts = [("all pairs", rs), ("pairs with member 1", [r for r in rs if r["with_first"]]),
                 ("other pairs", [r for r in rs if not r["with_first"]])]
        for ax, (name, sel) in zip(ax_row, parts):
            for r in sel:
                ax.scatter(r["weight_cosine"], r["diversity"], s=16, color=FIRST if r["with_first"] else OTHER)
            corr = pearson([r["diversity"] for r in sel], [r["weight_cosine"] for r in sel])
            ax.set_title(f"{short(d)}: {name}, r = {corr:.2f}", fontsize=8)
            ax.locator_params(axis="x", nbins=3)
            ax.ticklabel_format(axis="x", useOffset=False)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
        ax_row[0].set_ylabel("diversity (%)", fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("cosine similarity of weights", fontsize=8)
    save_figure(fig, path)


def analyze(run_dirs, out, group_by=("method",), matrices=2, rows=4, matrix_runs=None, row_runs=None,
            prefix="diversity", log=print):
    """Every run with 2 members or more under `run_dirs`; writes the files and returns the markdown section.
    matrix_runs / row_runs: the runs for table 6.2 / figure 6.4 (default: the first `matrices` / `rows` runs)."""
    pairs, mats = [], {}
    for d in find_runs(run_dirs):
        run = open_run(d)
        if run.completed_members() < 2:
            log(f"{d}: skipped (one member, no pair)")
            continue
        div, _cos, rs = diversity_structure(run, group_by)
        mats[run.path] = (rs[0]["group"], div)
        pairs += rs
    check(pairs, f"no run with 2 members or more under {' '.join(run_dirs)}")
    corr = correlations(pairs)
    os.makedirs(out, exist_ok=True)
    write_csv(os.path.join(out, f"{prefix}_pairs.csv"), pairs, PAIR_COLUMNS)
    save_json(os.path.join(out, f"{prefix}_structure.json"), corr)
    plot_all(pairs, corr, os.path.join(out, f"{prefix}_cosine.png"))
    row_runs = [d for d in map(os.path.normpath, row_runs or list(mats)) if d in mats][:rows]
    plot_rows(pairs, row_runs, os.path.join(out, f"{prefix}_cosine_runs.png"))
    shown = [d for d in map(os.path.normpath, matrix_runs or list(mats)[:matrices]) if d in mats]
    tables = "\n\n".join(f"{mats[d][0]} ({d}):\n\n{matrix_markdown(mats[d][1])}" for d in shown)
    return (f"Pairwise diversity (table 6.2) of {len(shown)} run(s), the largest entry in bold:\n\n{tables}\n\n"
            f"Diversity against the cosine similarity of the flattened weights, {corr['pairs']} pairs of "
            f"{corr['runs']} runs: correlation **{corr['global']:.3f}** over all pairs (thesis: -0.625), "
            f"**{corr['within_mean']:.3f}** within a run, averaged over runs (thesis: 0.02). "
            f"Data: [{prefix}_pairs.csv]({prefix}_pairs.csv), [{prefix}_structure.json]({prefix}_structure.json).\n\n"
            f"![diversity against weight cosine, every pair (figure 6.2)]({prefix}_cosine.png)\n\n"
            f"![diversity against weight cosine, one row per run (figure 6.4)]({prefix}_cosine_runs.png)\n")


def build_parser():
    p = runs_parser(__doc__, out="runs/analysis")
    p.add_argument("--matrices", type=int, default=2, help="table 6.2 for the first N runs")
    p.add_argument("--rows", type=int, default=4, help="figure 6.4: one row for each of the first N runs")
    return p


@cli_main
def main():
    a = build_parser().parse_args()
    check(a.matrices >= 0 and a.rows >= 1, "--matrices must be >= 0 and --rows >= 1")
    text = analyze(a.run_dirs, a.out, tuple(a.group_by), a.matrices, a.rows)
    atomic_write(os.path.join(a.out, "diversity_structure.md"),
                 lambda tmp: open(tmp, "w").write(f"# Diversity structure\n\n{text}"))
    print(text)
    print(f"written to {a.out}/ (diversity_pairs.csv, diversity_structure.json, diversity_cosine.png, "
          f"diversity_cosine_runs.png, diversity_structure.md)")


if __name__ == "__main__":
    main()
