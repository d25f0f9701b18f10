"""Recompute a run's metrics from its saved test-set probabilities (or, with --from_weights, from its weights).

    python scripts/evaluate.py runs/starsse/digits-seed0
    accelerate launch scripts/evaluate.py runs/starsse/digits-seed0 --from_weights   # re-predict every member

Writes <run>/metrics.json (atomically) and prints the member accuracies, ensemble accuracy by size, diversity,
NLL, ECE and Brier score. --from_weights rebuilds each member from member_<i>.safetensors, predicts the test set
again (gather_for_metrics: each sample once, whatever the number of processes) and replaces the saved probabilities.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lib.cli import Parser  # noqa: E402
from lib.errors import UserError, check, cli_main  # noqa: E402
from lib.experiment import format_result  # noqa: E402
from lib.runs import RunDir, load_json, run_summary, save_array, save_json  # noqa: E402


def repredict(run, config, n):
    """Predict the test set again with every member's saved weights, all members in one pass over the test set;
    returns (accelerator, probs of shape (members, samples, classes))."""
    from lib.data import load_task, test_loader
    from lib.models import build_model
    from lib.runs import load_weights
    from lib.train import channels_last, make_accelerator, predict_many
    args = argparse.Namespace(**config)
    args.cpu = args.cpu or False
    args.with_tracking = False
    acc = make_accelerator(args)
    data = load_task(args)
    fmt = torch.channels_last if channels_last(args, acc) else torch.contiguous_format
    models = []
    for i in range(1, n + 1):
        model = build_model(args.arch, data.num_classes)
        model.load_state_dict(load_weights(run.weights(i)))
        models.append(model.to(acc.device, memory_format=fmt))
    return acc, predict_many(acc, models, test_loader(data.test, args.eval_batch_size, min(args.num_workers, 4)),
                             memory_format=fmt)


@cli_main
def main():
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("--from_weights", action="store_true", help="predict the test set again from the saved weights")
    p.add_argument("--cpu", action="store_true", help="with --from_weights: use the CPU even if a GPU is present")
    a = p.parse_args()
    cfg_path = os.path.join(a.run_dir, "config.json")
    check(os.path.isfile(cfg_path), f"not a run directory (no config.json): {a.run_dir}")
    try:
        config = load_json(cfg_path)
    except ValueError as e:
        raise UserError(f"{cfg_path} is unreadable ({e})")
    run = RunDir(a.run_dir, config, is_main=False)
    n = run.completed_members()
    check(n >= 1, f"{a.run_dir} has no finished member")
    labels = __import__("numpy").load(run.file("labels.npy"))
    is_main = True
    if a.from_weights:
        config["cpu"] = a.cpu or config.get("cpu", False)
        acc, probs = repredict(run, config, n)
        is_main = acc.is_main_process
        if is_main:
            for i in range(1, n + 1):
                save_array(run.probs(i), probs[i - 1])
    else:
        probs = run.load_probs(n)
    result = run_summary(run, probs, labels, config)
    if is_main:
        save_json(run.file("metrics.json"), result)
        where = f" (predicted again on {acc.num_processes} process{'es' if acc.num_processes > 1 else ''})" if a.from_weights else ""
        print(format_result(result) + where)


if __name__ == "__main__":
    main()
