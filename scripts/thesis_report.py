"""Every table and figure of the thesis, from the run directories the sweeps wrote, into one folder with an index.

    python scripts/thesis_report.py runs/cifar100 --data_dir /data --out runs/cifar100/thesis_report
    python scripts/thesis_report.py runs/demo --subset_size 3 --out runs/demo/thesis_report   # embedded default

<out>/index.md embeds every PNG, section by section (a section without qualifying runs says which sweep makes them):
  1 results          tables 4.1, 5.x, 6.3, 6.4: every method, one row per setting of the config keys that vary
                     among its runs and per ensemble size (mean ± std over runs; a run found twice counts once;
                     --select_by marks one setting per method); figure 4.4 (member accuracy by index, ensemble by size)
  2 representations  figures 4.2, 4.3, 4.5 for each of --methods (SSE, StarSSE): by member index for one setting,
                     by more local / optimal / semi-local setting for a grid; cached per member in <run>/analysis/
  3 diversity        table 6.2 and figure 6.4 (StarSSE runs of the thesis' optimal setting), figure 6.2 and the
                     correlation over the 10 pairs of each 5-member run of every setting (other sizes apart)
  4 subsets          figure 6.1, table 6.1: for each method, the runs of one setting with more members than
                     --subset_size that differ only by their seed, pooled (the thesis: two 15-member StarSSE runs,
                     2 x C(14, 4) = 2,002 subsets, member 1 in each; one Local DE, 3,003); the optimal setting first
Sections 2-4 pool the runs of one architecture only (a Swin-T sweep under the same root gets its own subsections;
ResNets alone have the thesis' "optimal" regime). The other files are those of scripts/report.py,
analyze_representations.py, diversity_structure.py and subsets.py.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lib.infra.errors import check, cli_main, interrupt_quietly  # noqa: E402

interrupt_quietly()  # Ctrl-C while the libraries below load: one line, not a traceback
from lib.analysis import (
    diversity,  # noqa: E402
    representations,  # noqa: E402
    subsets,  # noqa: E402
)
from lib.analysis.report import add_table_args, collect, plot_curves, results_table, runs_csv  # noqa: E402
from lib.cli.parser import Parser  # noqa: E402
from lib.infra.files import atomic_write  # noqa: E402
from lib.settings.methods import directory  # noqa: E402

SECTIONS = ["results", "representations", "diversity", "subsets"]
MAX_CURVES = 12


def results(col, summary, table, out):
    runs_csv(os.path.join(out, "runs.csv"), col.runs)
    curves = summary if len(summary) <= MAX_CURVES else \
        ({k: v for k, v in summary.items() if "=" not in k} or dict(list(summary.items())[:MAX_CURVES]))
    atomic_write(os.path.join(out, "ensemble_by_size.png"),
                 lambda tmp: plot_curves(curves, "by_size", "ensemble test accuracy (%)", tmp))
    atomic_write(os.path.join(out, "member_accuracy.png"),
                 lambda tmp: plot_curves(curves, "member_acc", "member test accuracy (%)", tmp))
    shown = "" if curves is summary else f" (curves: the {len(curves)} groups without a swept setting)"
    return (f"{table}\n\nData: [runs.csv](runs.csv). Member accuracy by index and ensemble "
            f"accuracy by size (figure 4.4){shown}:\n\n![member accuracy by index](member_accuracy.png)\n"
            f"![ensemble accuracy by size](ensemble_by_size.png)\n")


def by_arch(dirs, runs):
    """{architecture: [run dirs]} of `dirs` (runs: {run dir: (config, keys)}), in order: analyses pool one each."""
    out = {}
    for d in dirs:
        out.setdefault(runs[d][0].get("arch"), []).append(d)
    return out


def arch_part(arch, several, kind="title"):
    """' (timm/swin_tiny_...)' in a title or '_timm_swin_tiny...' in a file prefix, when several archs are shown."""
    if not several:
        return ""
    return f" ({arch})" if kind == "title" else "_" + "".join(ch if ch.isalnum() else "_" for ch in str(arch))


def build_parser():
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("roots", nargs="+", help="sweep output folders (or run directories)")
    p.add_argument("--out", default="runs/thesis_report", help="output folder")
    p.add_argument("--title", default="Ensembles from one pre-trained checkpoint: every table and figure")
    p.add_argument("--methods", nargs="+", default=["SSE", "StarSSE"],
                   help="methods analysed in sections 2 and 3 (the thesis: SSE and StarSSE)")
    p.add_argument("--n_points", type=int, default=256, help="test images for the representations")
    p.add_argument("--data_dir", default=None,
                   help="cifar100: the folder holding cifar-100-python/ (default: the run's)")
    p.add_argument("--cpu", action="store_true", help="representations on the CPU even if a GPU is present")
    p.add_argument("--matrices", type=int, default=2, help="table 6.2 for this many StarSSE runs")
    p.add_argument("--rows", type=int, default=4, help="figure 6.4: this many runs")
    p.add_argument("--subset_size", type=int, default=5, help="figure 6.1 / table 6.1: ensembles of this size")
    p.add_argument("--skip", nargs="+", default=[], choices=SECTIONS, help="sections to leave out")
    return add_table_args(p)


@cli_main
def main():
    a = build_parser().parse_args()
    for r in a.roots:
        check(os.path.isdir(r), f"not a directory: {r}")
    col = collect(a.roots)  # one row per setting and size; duplicates dropped (every section uses the runs kept)
    summary, table = results_table(col, a.select_by, a.ood_column)  # bad --select_by / --ood_column: before writing
    runs = {d: (cfg, col.keys[d]) for _l, d, cfg, _m in col.runs}
    os.makedirs(a.out, exist_ok=True)
    dropped = f" ({len(col.dropped)} duplicate run(s) dropped)" if col.dropped else ""
    parts = [f"# {a.title}\n\nFrom {len(runs)} runs under {', '.join(a.roots)}{dropped}. Accuracy and diversity in "
             f"%, mean ± std over runs (ddof=1) unless said otherwise.\n"]
    t0 = time.time()

    def section(name, heading, fn):
        if name in a.skip:
            return
        t = time.time()
        parts.append(f"## {heading}\n\n{fn()}")
        print(f"== {name}: {time.time() - t:.1f} s", flush=True)

    section("results", "1. Results (tables 4.1, 5.x, 6.3, 6.4; figure 4.4)",
            lambda: results(col, summary, table, a.out))
    chosen = {m: {d: gb for d, (c, gb) in runs.items() if c.get("method") == m} for m in a.methods}
    several = len({c.get("arch") for c, _gb in runs.values()}) > 1  # e.g. a Swin-T sweep under the same root

    def representation_section():
        text = []
        for method, method_runs in chosen.items():
            if not method_runs:
                text.append(f"### {method}\n\nNo {method} run (sweeps/cifar100_core.sh, cifar100_cycle_grid.sh).\n")
                continue
            for arch, dirs in by_arch(method_runs, runs).items():
                # the thesis' 5-member ensembles (else the most common size): a 15-member run is no setting of the grid
                size = diversity.headline_size(runs[d][0].get("members") or 1 for d in dirs)
                same = [d for d in dirs if (runs[d][0].get("members") or 1) == size]
                left = f"({len(dirs) - len(same)} run(s) of another size left out.)\n" if len(same) < len(dirs) else ""
                text.append(f"### {method}{arch_part(arch, several)}\n\n" + representations.analyze(
                    same, a.out, a.n_points, None, runs[same[0]][1], "auto", a.data_dir, "cpu" if a.cpu else None,
                    prefix=f"representations_{directory(method)}{arch_part(arch, several, 'file')}") + left)
        return "\n".join(text)
    section("representations", "2. Internal representations (figures 4.2, 4.3, 4.5)", representation_section)

    def diversity_section():
        pool = [d for m in chosen.values() for d in m if runs[d][0].get("members", 1) >= 2]
        if not pool:
            return f"No {' or '.join(a.methods)} run with 2 members or more.\n"
        text = []
        for arch, dirs in by_arch(pool, runs).items():  # every setting of the methods: the thesis' correlation
            keys = sorted({k for d in dirs for k in runs[d][1][1:]})
            text.append((f"### {arch}\n\n" if several else "") + diversity.analyze(
                dirs, a.out, ("method", *keys), a.matrices, a.rows,
                prefix=f"diversity{arch_part(arch, several, 'file')}"))
        return "\n".join(text)
    section("diversity", "3. Diversity structure (table 6.2, figures 6.2, 6.4)", diversity_section)

    def subset_section():
        big = {d: c for d, (c, _gb) in runs.items() if c.get("members", 1) > a.subset_size}
        if not big:
            return (f"No run with more than {a.subset_size} members: sweeps/cifar100_analysis.sh trains the "
                    f"15-member StarSSE and Local DE runs.\n")
        pools = subsets.thesis_pools(big)
        dirs = sorted(d for pool in pools.values() for d in pool)
        left = len(big) - len(dirs)
        note = f"For each method, the runs of one setting that differ only by their seed, pooled as the thesis; " \
               f"{left} other large run(s) left out (scripts/subsets.py takes any).\n\n" if left else ""
        return note + subsets.analyze(dirs, a.out, a.subset_size, group_by=("method", "arch") if several else
                                      ("method",))
    section("subsets", "4. Ensemble subsets (figure 6.1, table 6.1)", subset_section)

    index = "\n".join(parts)
    atomic_write(os.path.join(a.out, "index.md"), lambda tmp: open(tmp, "w").write(index))
    pngs = sorted(f for f in os.listdir(a.out) if f.endswith(".png"))
    print(f"written to {a.out}/index.md with {len(pngs)} figures ({time.time() - t0:.1f} s)")


if __name__ == "__main__":
    main()
