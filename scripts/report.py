"""Results table across runs, shaped like the thesis' table 4.1: one row per method and setting, mean ± std.

    python scripts/report.py runs/                       # every finished run below runs/
    python scripts/report.py runs/cifar100 --select_by val --out runs/cifar100/report   # one setting per method
    python scripts/report.py runs/sse runs/starsse --group_by method cycle_lr --out runs/report_cycle_lr

Rows: by default a method and every config key that varies among that method's runs (seed, checkpoint and the keys
that change no result excluded), so different settings are different rows; --group_by names the keys instead. Rows
never mix ensemble sizes, and a run found twice (same settings, seed and member weights) counts once.
Writes <out>/report.md (the table), <out>/runs.csv (one row per run counted), <out>/ensemble_by_size.png (ensemble
accuracy by size) and <out>/member_accuracy.png (member accuracy by index), and prints the table.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lib.infra.errors import cli_main, interrupt_quietly  # noqa: E402

interrupt_quietly()  # Ctrl-C while the libraries below load: one line, not a traceback
from lib.analysis.report import add_table_args, collect, plot_curves, results_table, runs_csv  # noqa: E402
from lib.cli.parser import runs_parser  # noqa: E402
from lib.infra.files import atomic_write  # noqa: E402


@cli_main
def main():
    p = add_table_args(runs_parser(__doc__, out="runs/report"))
    p.set_defaults(group_by=None)  # default: the method and the config keys that vary among its runs
    p.add_argument("--title", default="Results")
    a = p.parse_args()
    col = collect(a.run_dirs, tuple(a.group_by) if a.group_by else None)
    summary, table = results_table(col, a.select_by, a.ood_column)
    os.makedirs(a.out, exist_ok=True)
    text = f"# {a.title}\n\n{table}\n\n![ensemble accuracy by size](ensemble_by_size.png)\n" \
           f"![member accuracy by index](member_accuracy.png)\n"
    atomic_write(os.path.join(a.out, "report.md"), lambda tmp: open(tmp, "w").write(text))
    runs_csv(os.path.join(a.out, "runs.csv"), col.runs)
    atomic_write(os.path.join(a.out, "ensemble_by_size.png"),
                 lambda tmp: plot_curves(summary, "by_size", "ensemble test accuracy (%)", tmp))
    atomic_write(os.path.join(a.out, "member_accuracy.png"),
                 lambda tmp: plot_curves(summary, "member_acc", "member test accuracy (%)", tmp))
    print(table)
    print(f"\nwritten to {a.out}/ (report.md, runs.csv, ensemble_by_size.png, member_accuracy.png)")


if __name__ == "__main__":
    main()
