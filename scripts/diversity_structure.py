"""Diversity structure of ensembles (thesis table 6.2, figures 6.2 and 6.4): each run's pairwise diversity matrix,
and diversity against the cosine similarity of the flattened weights for every pair of members, with their
correlation over all pairs of all runs and the mean of the correlations within each run (thesis: 0.02). The thesis'
-0.625 is the correlation over every hyper-parameter setting (l. 263: the SSE and StarSSE cycle grid), so give the
grid's runs; the output says how many settings the runs span and shows the thesis' number only beside a correlation
over several. Runs of one architecture.

    python scripts/diversity_structure.py runs/demo/starsse runs/demo/sse --out runs/demo/diversity_structure
    python scripts/diversity_structure.py runs/cifar100/grid/sse-lr* runs/cifar100/grid/starsse-lr* \
        --out runs/cifar100/report_diversity_structure

Writes <out>/diversity_pairs.csv (one row per pair of members; columns in docs/analyses.md), diversity_cosine.png
(figure 6.2: every pair, one colour per run), diversity_cosine_runs.png (figure 6.4: one row per run for the first
--rows runs: all pairs, pairs with member 1, the other pairs), diversity_structure.json (the correlations) and
diversity_structure.md (with table 6.2 for the first --matrices runs). Diversity as lib.evaluation.metrics (100 *
disagreement / max(err1, err2)); cosine of all parameters (BatchNorm running statistics excluded), raw weights as the
thesis.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lib.infra.errors import check, cli_main, interrupt_quietly  # noqa: E402

interrupt_quietly()  # Ctrl-C while the libraries below load: one line, not a traceback
from lib.analysis.diversity import analyze  # noqa: E402
from lib.cli.parser import runs_parser  # noqa: E402
from lib.infra.files import atomic_write  # noqa: E402


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
