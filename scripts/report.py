"""Results table across runs, shaped like the thesis' table 4.1: runs grouped by method, mean ± std.

    python scripts/report.py runs/                       # every finished run below runs/
    python scripts/report.py runs/sse runs/starsse --group_by method cycle_lr --out runs/report_cycle_lr

Writes <out>/report.md (the table), <out>/runs.csv (one row per run), <out>/ensemble_by_size.png (ensemble
accuracy by size) and <out>/member_accuracy.png (member accuracy by index), and prints the table.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lib.cli import runs_parser  # noqa: E402
from lib.errors import cli_main  # noqa: E402
from lib.report import load_runs, markdown_table, plot_curves, runs_csv, summarize_groups  # noqa: E402
from lib.runs import atomic_write  # noqa: E402


@cli_main
def main():
    p = runs_parser(__doc__, out="runs/report")
    p.add_argument("--title", default="Results")
    a = p.parse_args()
    runs = load_runs(a.run_dirs, tuple(a.group_by))
    summary = summarize_groups(runs)
    table = markdown_table(summary)
    os.makedirs(a.out, exist_ok=True)
    text = f"# {a.title}\n\n{table}\n\n![ensemble accuracy by size](ensemble_by_size.png)\n" \
           f"![member accuracy by index](member_accuracy.png)\n"
    atomic_write(os.path.join(a.out, "report.md"), lambda tmp: open(tmp, "w").write(text))
    runs_csv(os.path.join(a.out, "runs.csv"), runs)
    atomic_write(os.path.join(a.out, "ensemble_by_size.png"),
                 lambda tmp: plot_curves(summary, "by_size", "ensemble test accuracy (%)", tmp))
    atomic_write(os.path.join(a.out, "member_accuracy.png"),
                 lambda tmp: plot_curves(summary, "member_acc", "member test accuracy (%)", tmp))
    print(table)
    print(f"\nwritten to {a.out}/ (report.md, runs.csv, ensemble_by_size.png, member_accuracy.png)")


if __name__ == "__main__":
    main()
