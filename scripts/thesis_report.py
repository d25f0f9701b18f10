"""Every table and figure of the thesis, from the run directories the sweeps wrote, into one folder with an index.

    python scripts/thesis_report.py runs/cifar100 --data_dir /data --out runs/cifar100/thesis_report
    python scripts/thesis_report.py runs/demo --subset_size 3 --out runs/demo/thesis_report   # embedded default

<out>/index.md embeds every PNG, section by section (a section without qualifying runs says which sweep makes them):
  1 results          tables 4.1, 5.x, 6.3, 6.4: every method, one row per setting of the config keys that vary
                     among its runs (mean ± std over runs); figure 4.4 (member accuracy by index, ensemble by size)
  2 representations  figures 4.2, 4.3, 4.5 for each of --methods (SSE, StarSSE): by member index for one setting,
                     by setting for a grid (local / optimal / semi-local); cached per member in <run>/analysis/
  3 diversity        table 6.2 (the first --matrices runs of the largest StarSSE setting), figures 6.2, 6.4
  4 subsets          figure 6.1, table 6.1: runs with more members than --subset_size (StarSSE keeps member 1)
The other files are those of scripts/report.py, analyze_representations.py, diversity_structure.py and subsets.py.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lib import diversity, representations, subsets  # noqa: E402
from lib.cli import Parser  # noqa: E402
from lib.errors import check, cli_main  # noqa: E402
from lib.methods import directory  # noqa: E402
from lib.report import markdown_table, plot_curves, runs_csv, summarize_groups  # noqa: E402
from lib.runs import LATER_ARGS, NON_RESULT_ARGS, atomic_write, find_runs, load_json, run_label  # noqa: E402
from lib.weights import REPR_STAGES  # noqa: E402

SECTIONS = ["results", "representations", "diversity", "subsets"]
NOT_SETTINGS = NON_RESULT_ARGS | {"seed", "pretrained", "method"}  # repetitions (seed, checkpoint), not settings
MAX_CURVES = 12


def settings(run_dirs):
    """{run_dir: (config, group_by)}: a method's runs are grouped by method and the config keys that vary among
    them (its swept hyper-parameters; a key a run predates counts with the value that reproduces it)."""
    by_method = {}
    for d in run_dirs:
        cfg = load_json(os.path.join(d, "config.json"))
        by_method.setdefault(cfg.get("method"), []).append((d, cfg))
    out = {}
    for items in by_method.values():
        keys = set().union(*(c for _, c in items)) - NOT_SETTINGS
        varying = sorted(k for k in keys if len({json.dumps(c.get(k, LATER_ARGS.get(k)), sort_keys=True)
                                                  for _, c in items}) > 1)
        out.update({d: (c, ("method", *varying)) for d, c in items})
    return out


def results(runs, out):
    table_runs = [(run_label(cfg, gb), d, cfg, load_json(os.path.join(d, "metrics.json"))) for d, (cfg, gb) in runs.items()]
    summary = summarize_groups(table_runs)
    runs_csv(os.path.join(out, "runs.csv"), table_runs)
    curves = summary if len(summary) <= MAX_CURVES else \
        ({k: v for k, v in summary.items() if "=" not in k} or dict(list(summary.items())[:MAX_CURVES]))
    atomic_write(os.path.join(out, "ensemble_by_size.png"),
                 lambda tmp: plot_curves(curves, "by_size", "ensemble test accuracy (%)", tmp))
    atomic_write(os.path.join(out, "member_accuracy.png"),
                 lambda tmp: plot_curves(curves, "member_acc", "member test accuracy (%)", tmp))
    shown = "" if curves is summary else f" (curves: the {len(curves)} groups without a swept setting)"
    return (f"{markdown_table(summary)}\n\nData: [runs.csv](runs.csv). Member accuracy by index and ensemble "
            f"accuracy by size (figure 4.4){shown}:\n\n![member accuracy by index](member_accuracy.png)\n"
            f"![ensemble accuracy by size](ensemble_by_size.png)\n")


def build_parser():
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("roots", nargs="+", help="sweep output folders (or run directories)")
    p.add_argument("--out", default="runs/thesis_report", help="output folder")
    p.add_argument("--title", default="Ensembles from one pre-trained checkpoint: every table and figure")
    p.add_argument("--methods", nargs="+", default=["SSE", "StarSSE"],
                   help="methods analysed in sections 2 and 3 (the thesis: SSE and StarSSE)")
    p.add_argument("--n_points", type=int, default=256, help="test images for the representations")
    p.add_argument("--data_dir", default=None, help="cifar100: the folder holding cifar-100-python/ (default: the run's)")
    p.add_argument("--cpu", action="store_true", help="representations on the CPU even if a GPU is present")
    p.add_argument("--matrices", type=int, default=2, help="table 6.2 for this many StarSSE runs")
    p.add_argument("--rows", type=int, default=4, help="figure 6.4: this many runs")
    p.add_argument("--subset_size", type=int, default=5, help="figure 6.1 / table 6.1: ensembles of this size")
    p.add_argument("--skip", nargs="+", default=[], choices=SECTIONS, help="sections to leave out")
    return p


@cli_main
def main():
    a = build_parser().parse_args()
    for r in a.roots:
        check(os.path.isdir(r), f"not a directory: {r}")
    runs = settings(find_runs(a.roots))
    os.makedirs(a.out, exist_ok=True)
    parts = [f"# {a.title}\n\nFrom {len(runs)} runs under {', '.join(a.roots)}. Accuracy and diversity in %, "
             f"mean ± std over runs (ddof=1) unless said otherwise.\n"]
    t0 = time.time()

    def section(name, heading, fn):
        if name in a.skip:
            return
        t = time.time()
        parts.append(f"## {heading}\n\n{fn()}")
        print(f"== {name}: {time.time() - t:.1f} s", flush=True)

    section("results", "1. Results (tables 4.1, 5.x, 6.3, 6.4; figure 4.4)", lambda: results(runs, a.out))
    chosen = {m: {d: gb for d, (c, gb) in runs.items() if c.get("method") == m} for m in a.methods}

    def representation_section():
        text = []
        for method, method_runs in chosen.items():
            if not method_runs:
                text.append(f"### {method}\n\nNo {method} run (sweeps/cifar100_core.sh, cifar100_cycle_grid.sh).\n")
                continue
            gb = next(iter(method_runs.values()))
            text.append(f"### {method}\n\n" + representations.analyze(
                list(method_runs), a.out, a.n_points, REPR_STAGES, gb, "auto", a.data_dir, "cpu" if a.cpu else None,
                prefix=f"representations_{directory(method)}"))
        return "\n".join(text)
    section("representations", "2. Internal representations (figures 4.2, 4.3, 4.5)", representation_section)

    def diversity_section():
        pool = [d for m in chosen.values() for d in m if runs[d][0].get("members", 1) >= 2]
        if not pool:
            return f"No {' or '.join(a.methods)} run with 2 members or more.\n"
        star = {}
        for d in chosen.get("StarSSE", {}):
            star.setdefault(run_label(*runs[d]), []).append(d)
        largest = max(star.values(), key=len) if star else pool
        keys = sorted({k for d in pool for k in runs[d][1][1:]})
        return diversity.analyze(pool, a.out, ("method", *keys), a.matrices, a.rows,
                                           matrix_runs=largest[:a.matrices], row_runs=largest[:a.rows])
    section("diversity", "3. Diversity structure (table 6.2, figures 6.2, 6.4)", diversity_section)

    def subset_section():
        big = [d for d, (c, _gb) in runs.items() if c.get("members", 1) > a.subset_size]
        if not big:
            return (f"No run with more than {a.subset_size} members: sweeps/cifar100_analysis.sh trains the "
                    f"15-member StarSSE and Local DE runs.\n")
        return subsets.analyze(big, a.out, a.subset_size)
    section("subsets", "4. Ensemble subsets (figure 6.1, table 6.1)", subset_section)

    index = "\n".join(parts)
    atomic_write(os.path.join(a.out, "index.md"), lambda tmp: open(tmp, "w").write(index))
    pngs = sorted(f for f in os.listdir(a.out) if f.endswith(".png"))
    print(f"written to {a.out}/index.md with {len(pngs)} figures ({time.time() - t0:.1f} s)")


if __name__ == "__main__":
    main()
