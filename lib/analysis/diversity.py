"""Diversity structure of ensembles (thesis table 6.2, figures 6.2, 6.4): pairwise diversity and pairwise weight
cosine of every run's members, their correlation over all pairs of all runs and within each run; the CSV, figures
and markdown of scripts/diversity_structure.py.

As the thesis draws them: the correlation (and figure 6.2) is over the 10 pairs of each 5-member ensemble (runs of
another size, e.g. the 15-member runs of the subset study, are reported apart) of every run given; the thesis' -0.625
is that correlation over every hyper-parameter setting (thesis l. 263: "aggregated across all experiments with
different hyperparameters", the NeurIPS cycle grid), so it stands beside ours only when the runs span several
settings. Table 6.2 and figure 6.4 show plain StarSSE runs of the thesis' optimal cycle setting, whatever else the
folders hold. Runs of different architectures are never pooled.
"""
import itertools
import json
import os

import numpy as np

from lib.analysis.report import is_optimal_starsse
from lib.analysis.weight_stats import cosine_from_gram, parameter_keys, weight_stats
from lib.evaluation import metrics
from lib.infra.errors import check
from lib.infra.figures import category_colors, pyplot, save_figure, short
from lib.infra.files import save_json, write_csv
from lib.runs.rundir import check_one_arch, find_runs, open_run, run_info
from lib.settings import methods
from lib.settings.schema import LEGACY, NON_RESULT_KEYS

FIRST, OTHER = "tab:orange", "tab:green"  # the thesis' colours for pairs with and without member 1
THESIS_MEMBERS = 5  # the thesis' correlation: "for each trained ensemble we consider 5 * 4 / 2 = 10 pairs"
THESIS_CORRELATION = -0.625  # over every pair of every 5-member run of every hyper-parameter setting (l. 263)
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
# files and figures

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


def setting_count(configs):
    """How many hyper-parameter settings the runs' configs span: configs that differ in anything but the seed, the
    pre-trained checkpoint and the keys that change no result (the method is a setting too)."""
    skip = NON_RESULT_KEYS | {"seed", "pretrained"}
    return len({json.dumps({k: c.get(k, LEGACY.get(k)) for k in set(c) | set(LEGACY) if k not in skip},
                           sort_keys=True, default=str) for c in configs})


def headline_size(sizes):
    """The ensemble size whose pairs give the headline correlation: THESIS_MEMBERS when some run has it, else the
    most common size (ties: the smaller)."""
    sizes = list(sizes)
    if THESIS_MEMBERS in sizes:
        return THESIS_MEMBERS
    return min(set(sizes), key=lambda m: (-sizes.count(m), m))


def thesis_runs(configs):
    """(run dirs, how they were chosen) for table 6.2 and figure 6.4, from {run dir: config} in run-directory order:
    plain StarSSE runs of the thesis' optimal cycle setting (lib.analysis.report.is_optimal_starsse); else any StarSSE
    runs; else every run."""
    for test, how in [(is_optimal_starsse, "StarSSE runs of the thesis' optimal cycle setting (cycle lr = 2 x lr, "
                                           "cycle epochs = 0.5 x epochs)"),
                      (lambda c: getattr(methods.get(c.get("method")), "reference", False), "StarSSE runs (none of the optimal cycle setting)"),
                      (lambda c: True, "runs (no StarSSE run)")]:
        chosen = [d for d, c in configs.items() if test(c)]
        if chosen:
            return chosen, how
    return [], "no run"


def analyze(run_dirs, out, group_by=("method",), matrices=2, rows=4, matrix_runs=None, row_runs=None,
            prefix="diversity", log=print):
    """Every run with 2 members or more under `run_dirs`; writes the files and returns the markdown section. Its
    parameters are scripts/diversity_structure.py's flags and thesis_report's choices of runs, passed through.
    The correlation and figure 6.2 are over the runs of headline_size (the thesis: 5 members); other sizes are
    reported apart. matrix_runs / row_runs: the runs of table 6.2 / figure 6.4 (default: thesis_runs among the
    headline-size runs, the first `matrices` / `rows` of them)."""
    pairs, mats, configs = [], {}, {}
    found = find_runs(run_dirs)
    check_one_arch({d: open_run(d).config for d in found}, "the diversity structure")
    for d in found:
        run = open_run(d)
        if run.completed_members() < 2:
            log(f"{d}: skipped (one member, no pair)")
            continue
        div, _cos, rs = diversity_structure(run, group_by)
        mats[run.path] = (rs[0]["group"], div)
        configs[run.path] = run.config
        pairs += rs
    check(pairs, f"no run with 2 members or more under {' '.join(run_dirs)}")
    size = headline_size(len(div) for _g, div in mats.values())
    main = [p for p in pairs if len(mats[p["run_dir"]][1]) == size]
    corr = correlations(main)
    corr["settings"] = setting_count(configs[d] for d in {p["run_dir"] for p in main})
    apart = {m: correlations([p for p in pairs if len(mats[p["run_dir"]][1]) == m])
             for m in sorted({len(div) for _g, div in mats.values()} - {size})}
    chosen, how = thesis_runs({d: c for d, c in configs.items() if len(mats[d][1]) == size})
    if matrix_runs is not None or row_runs is not None:
        how = "runs given"
    os.makedirs(out, exist_ok=True)
    write_csv(os.path.join(out, f"{prefix}_pairs.csv"), pairs, PAIR_COLUMNS)
    save_json(os.path.join(out, f"{prefix}_structure.json"),
              dict(corr, members=size, other_sizes={str(m): c for m, c in apart.items()}))
    plot_all(main, corr, os.path.join(out, f"{prefix}_cosine.png"))
    row_runs = [d for d in map(os.path.normpath, row_runs or chosen) if d in mats][:rows]
    plot_rows(pairs, row_runs, os.path.join(out, f"{prefix}_cosine_runs.png"))
    shown = [d for d in map(os.path.normpath, matrix_runs or chosen) if d in mats][:matrices]
    tables = "\n\n".join(f"{mats[d][0]} ({d}):\n\n{matrix_markdown(mats[d][1])}" for d in shown)
    others = "".join(f" Runs of {m} members, apart: {c['pairs']} pairs of {c['runs']} run(s), correlation "
                     f"{c['global']:.3f} over all pairs, {c['within_mean']:.3f} within a run (mean)."
                     for m, c in apart.items())
    if corr["settings"] > 1:  # the thesis' definition: its number beside ours
        versus = f"the thesis, over every setting of the cycle grid: {THESIS_CORRELATION}"
    else:
        versus = (f"one setting only: the thesis' {THESIS_CORRELATION} pools every hyper-parameter setting, so it "
                  f"does not compare; give the cycle grid's runs")
    return (f"Pairwise diversity (table 6.2) of {len(shown)} {how}, the largest entry in bold:\n\n{tables}\n\n"
            f"Diversity against the cosine similarity of the flattened weights, the {size * (size - 1) // 2} pairs of "
            f"each of {corr['runs']} {size}-member runs of {corr['settings']} setting(s) ({corr['pairs']} pairs; the "
            f"thesis: 10 pairs of each 5-member run of every setting): correlation **{corr['global']:.3f}** over all "
            f"pairs ({versus}), **{corr['within_mean']:.3f}** within a run, averaged over runs (thesis: 0.02)."
            f"{others} "
            f"Data: [{prefix}_pairs.csv]({prefix}_pairs.csv), [{prefix}_structure.json]({prefix}_structure.json).\n\n"
            f"![diversity against weight cosine, every pair of the {size}-member runs (figure 6.2)]"
            f"({prefix}_cosine.png)\n\n"
            f"![diversity against weight cosine, one row per run (figure 6.4)]({prefix}_cosine_runs.png)\n")
