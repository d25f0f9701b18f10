"""Every ensemble of --size members of a large run (thesis figure 6.1, table 6.1): each subset's average member
accuracy, diversity and ensemble accuracy, vectorised from the saved probabilities; a linear SVM between the better
and the worse half; the worst and best 5 %.

    python scripts/subsets.py runs/cifar100/subsets/starsse15 runs/cifar100/subsets/local_de15 --size 5
    python scripts/subsets.py runs/demo/local_de runs/demo/starsse --size 3 --out runs/demo/subsets   # embedded default
    python scripts/subsets.py --benchmark            # timing on CIFAR-100-sized synthetic probabilities (15 members)

StarSSE runs keep member 1 in every subset (--fix_first auto; the thesis: C(14,4) = 1001 per 15-member run), other
methods take every subset (Local DE: C(15,5) = 3003). The subsets of the runs of one group (--group_by) are pooled,
as the thesis pools its two runs. Writes <out>/subsets.csv (one row per subset; columns in docs/analyses.md), subsets.png
(figure 6.1: average member accuracy against diversity, coloured by ensemble accuracy, the best 5 % marked x; the
SVM line, solid, and its margins, dashed), subsets.md (table 6.1) and subsets.json.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lib.infra.errors import check, cli_main, interrupt_quietly  # noqa: E402

interrupt_quietly()  # Ctrl-C while the libraries below load: one line, not a traceback
from lib.analysis.subsets import analyze, benchmark  # noqa: E402
from lib.cli.parser import runs_parser  # noqa: E402
from lib.infra.files import atomic_write  # noqa: E402


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
