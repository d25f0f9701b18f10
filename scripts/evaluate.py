"""Recompute a run's metrics from its saved predictions (or, with --from_weights, from its weights), and evaluate it
beyond the test set: out-of-distribution detection, distribution shift, selective prediction, calibration.

    python scripts/evaluate.py runs/starsse/digits-seed0
    python scripts/evaluate.py runs/starsse/digits-seed0 --ood_dataset noise --ood_dataset permuted \\
        --shift_dataset flipped --reliability rel.png
    accelerate launch scripts/evaluate.py RUN --ood_dataset svhn:/data/svhn --shift_dataset cifar-c:/data/CIFAR-100-C
    accelerate launch scripts/evaluate.py runs/starsse/digits-seed0 --from_weights   # re-predict every member

Writes <run>/metrics.json through the one writer (lib.evaluation.results.write_metrics: the run's own keys are
recomputed; soups and OOD / shifted sets evaluated earlier are kept when they were computed from the same members,
else dropped with a note), saves the members' logits on each evaluation set under <run>/ood/<set>/ and
<run>/shift/<set>/, and prints the member accuracies, ensemble accuracy by size, diversity, NLL, ECE, Brier score,
then AURC and accuracy at 80/90/95 % coverage, adaptive ECE, temperature scaling (runs with a validation split), and
per OOD / shifted set the AUROC, FPR95 (OOD positive) and FPR95-ID (test samples positive) of each score, accuracy,
NLL and ECE (metrics.json has every number; docs/metrics.md defines them).
--from_weights rebuilds each member from member_<i>.safetensors, predicts the test (and validation) set again
(gather_for_metrics: each sample once, whatever the number of processes) and replaces the saved predictions,
unless they are not finite. An unfinished run is refused unless --partial (then metrics.json says "partial": true);
a read-only run directory is evaluated and printed, and nothing is written.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lib.infra.errors import check, cli_main, interrupt_quietly  # noqa: E402

interrupt_quietly()  # Ctrl-C while the libraries below load: one line, not a traceback

from lib.cli.parser import Parser  # noqa: E402
from lib.data.tasks import load_task  # noqa: E402
from lib.evaluation.evaluate import evaluate_run, lock_for_writing, member_models, run_settings, writable  # noqa: E402
from lib.evaluation.predict import memory_format, predict_set  # noqa: E402
from lib.evaluation.results import check_finite, member_digests, result_lines, write_metrics  # noqa: E402
from lib.infra.files import save_array  # noqa: E402
from lib.runs.rundir import open_run  # noqa: E402
from lib.settings.schema import LoopSettings  # noqa: E402
from lib.training.loop import make_accelerator  # noqa: E402


def repredict(run, cfg, acc, n):
    """Every member's test (and validation) probabilities and logits from its saved weights, all members in one
    pass over each set: {kind: (members, samples, classes)} for kind in probs, logits (, val_probs, val_logits)."""
    data = load_task(cfg)
    fmt = memory_format(LoopSettings.from_settings(cfg), acc)
    models = member_models(run, cfg.arch, data.num_classes, n, acc.device, fmt, cfg.image_size)
    out = {}
    for prefix, dataset in (("", data.test), ("val_", getattr(data, "val", None))):
        if dataset is not None:
            out[prefix + "probs"], out[prefix + "logits"] = predict_set(acc, models, dataset, cfg)
            check_finite(out[prefix + "logits"], f"the {'validation' if prefix else 'test'} set")
    return out


def replace_predictions(run, arrays):
    """Save the new predictions, then renew each member record's digests (it lists the files it vouches for)."""
    for i in range(1, len(arrays["probs"]) + 1):
        record = run.verify_member(i)
        for kind, a in arrays.items():
            save_array(getattr(run, kind)(i), a[i - 1])
        if "sha256" in record:
            run.seal_member(i, record)


@cli_main
def main():
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("--from_weights", action="store_true", help="predict the test set again from the saved weights")
    p.add_argument("--cpu", action="store_true", help="use the CPU even if a GPU is present")
    p.add_argument("--ood_dataset", action="append", default=[], metavar="SPEC",
                   help="out-of-distribution set (repeatable): imagefolder:DIR, hf:NAME_OR_PATH, cifar10:DIR, "
                        "cifar100:DIR, svhn:DIR, or a synthetic one (noise, permuted, flipped)")
    p.add_argument("--shift_dataset", action="append", default=[], metavar="SPEC",
                   help="shifted test set with labels (repeatable): the forms of --ood_dataset and cifar-c:DIR")
    p.add_argument("--reliability", default=None, metavar="PNG",
                   help="write the ensemble's reliability diagram (and after temperature scaling) to this PNG")
    p.add_argument("--partial", action="store_true",
                   help="evaluate an unfinished run's finished members (metrics.json then says partial: true)")
    a = p.parse_args()

    run = open_run(a.run_dir)  # every member file checked against its record's digest: a damaged one is one line
    n, planned = run.completed_members(), run.config.get("members", 1)
    check(n >= planned or a.partial, f"{a.run_dir} is unfinished ({n} of {planned} members finished): re-run its "
                                     f"training command to finish it, or pass --partial to evaluate the finished "
                                     f"members")
    cfg = run_settings(run, cpu=a.cpu or run.config.get("cpu", False))
    acc = make_accelerator(cfg.cpu, cfg.mixed_precision)
    lock = lock_for_writing(run) if acc.is_main_process else None  # a run still training there is refused
    try:
        arrays = repredict(run, cfg, acc, n) if a.from_weights else None
        reliability = a.reliability
        if reliability and not writable(os.path.dirname(os.path.abspath(reliability)) or "."):
            acc.print(f"note: {os.path.dirname(os.path.abspath(reliability))} is read-only: no reliability diagram")
            reliability = None
        sets = []  # the members' predictions on each evaluation set, saved with metrics.json
        result = evaluate_run(run, cfg, acc, ood=a.ood_dataset, shift=a.shift_dataset, members=n, arrays=arrays,
                              reliability=reliability, predictions=sets)
        if not acc.is_main_process:
            return
        where = f" (predicted again on {acc.num_processes} process{'es' if acc.num_processes > 1 else ''})" \
            if a.from_weights else ""
        lines = result_lines(result)
        print("\n".join([lines[0] + where] + lines[1:]))
        if lock is None:
            print(f"note: {a.run_dir} is read-only: nothing was written (metrics.json and the predictions are "
                  f"unchanged)")
            return
        if a.from_weights:
            replace_predictions(run, arrays)
        write_metrics(run, result, member_digests(run, n), sets)
    finally:
        if lock is not None:
            lock.release()

if __name__ == "__main__":
    main()
