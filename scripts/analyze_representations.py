"""Internal representations of ensemble members (thesis figures 4.2, 4.3, 4.5): each member's test accuracy
against its distance to member 1 -- RTD, MSE and Wasserstein-2 between the outputs of stage2..stage5 and avgpool on
the first --n_points test images, MSE between each stage's weights (avgpool: the fc layer that reads its output),
and the cosine similarity of all flattened weights.

    python scripts/analyze_representations.py runs/demo/sse/run0 --out runs/demo/representations
    python scripts/analyze_representations.py runs/cifar100/sse --data_dir /data          # figures 4.2, 4.3
    python scripts/analyze_representations.py runs/cifar100/grid --group_by method cycle_lr cycle_epochs \\
        --data_dir /data --out runs/cifar100/report_representations_grid                  # figure 4.5, by setting

Writes <out>/representations.csv (tidy: one row per run, member, stage and metric; columns in docs/analyses.md),
representations.png (rows RTD, MSE, Wasserstein-2 of the outputs and MSE of the weights; one column per stage),
representations_avgpool.png (figure 4.2: AvgPool output, fc weights, weight cosine) and representations.md.
Points are coloured by member index (one group of runs) or by group (several: e.g. local / optimal / semi-local
cycle settings). Each member's distances are cached in <run>/analysis/, so a second call only reads and draws.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lib.infra.errors import cli_main, interrupt_quietly  # noqa: E402

interrupt_quietly()  # Ctrl-C while the libraries below load: one line, not a traceback
from lib.analysis.representations import analyze  # noqa: E402
from lib.cli.parser import runs_parser  # noqa: E402
from lib.infra.files import atomic_write  # noqa: E402


def build_parser():
    p = runs_parser(__doc__, out="runs/analysis")
    p.add_argument("--n_points", type=int, default=256, help="first N test images (the thesis' batch: 256)")
    p.add_argument("--stages", nargs="+", default=None,
                   help="stage2..stageK and pool (ResNets: avgpool) of the runs' arch (--list_stages); default: all")
    p.add_argument("--color_by", choices=["auto", "member", "group", "run", "regime"], default="auto",
                   help="auto: member index for one group of runs, more local / optimal / semi-local (regime, "
                        "figure 4.5) for several cycle settings, else group")
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
