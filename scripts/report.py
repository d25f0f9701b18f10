"""Results table across runs, shaped like the thesis' table 4.1: one row per method and setting, mean ± std.

    python scripts/report.py runs/                       # every finished run below runs/
    python scripts/report.py runs/cifar100 --select_by val --out runs/cifar100/report   # one setting per method
    python scripts/report.py runs/sse runs/starsse --group_by method cycle_lr --out runs/report_cycle_lr

Rows: by default a method and every config key that varies among that method's runs (seed, checkpoint and the keys
that change no result excluded), so different settings are different rows; --group_by names the keys instead. Rows
never mix ensemble sizes, and a run found twice (same settings, seed and member weights) counts once.
Writes <out>/report.md (the table), <out>/runs.csv (one row per run counted), <out>/ensemble_by_size.png (ensemble
accuracy by size) and <out>/member_accuracy.png (member accuracy by index), and prints the table. With --select_by,
also <out>/selected/<method>.yaml for each method: the chosen setting (its row's keys, without seed or checkpoint)
as a --config file, so that the paper's final step, retraining the selected setting on the full training set, is
`scripts/<method>.py --config <out>/selected/<method>.yaml <phase-I flags without --val_split> ...` (the final
stages of sweeps/cifar100_cycle_grid.sh).
"""
import glob
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lib.infra.errors import cli_main, interrupt_quietly  # noqa: E402

interrupt_quietly()  # Ctrl-C while the libraries below load: one line, not a traceback
from lib.analysis.report import (  # noqa: E402
    NOT_SETTINGS,
    add_table_args,
    collect,
    plot_curves,
    results_table,
    runs_csv,
    select_settings,
)
from lib.cli.parser import runs_parser  # noqa: E402
from lib.infra.files import atomic_write, load_json, save_yaml  # noqa: E402
from lib.settings.methods import directory  # noqa: E402


def write_selected(out, col, summary, selection):
    """<out>/selected/<method>.yaml for each selected setting (select_settings): the method and the values of its row's
    keys that are settings (not the seed, the checkpoint, nor a key that changes no result), read from one of the row's
    runs; [paths]. A method selected at several ensemble sizes gets one file per size (<method>_m<sizes>.yaml).
    Files of an earlier selection that this one does not make again are removed (a final stage must not read them)."""
    paths = []
    folder = os.path.join(out, "selected")
    for name, sel in selection.items():
        row = summary[sel["label"]]
        d = row["run_dirs"][0]
        cfg = load_json(os.path.join(d, "config.json"))
        values = {k: cfg.get(k) for k in col.keys[d] if k not in NOT_SETTINGS}
        size = "" if name == sel["method"] else "_m" + "-".join(map(str, row["members"]))
        path = os.path.join(folder, f"{directory(sel['method'])}{size}.yaml")
        os.makedirs(folder, exist_ok=True)
        save_yaml(path, {"method": sel["method"], **values})
        paths.append(path)
    for stale in set(glob.glob(os.path.join(folder, "*.yaml"))) - set(paths):
        os.remove(stale)
    return paths


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
    selected = write_selected(a.out, col, summary, select_settings(summary, col.runs, a.select_by))
    print(table)
    print(f"\nwritten to {a.out}/ (report.md, runs.csv, ensemble_by_size.png, member_accuracy.png"
          f"{', ' + str(len(selected)) + ' selected/*.yaml' if selected else ''})")


if __name__ == "__main__":
    main()
