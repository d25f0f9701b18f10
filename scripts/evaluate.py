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

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lib.cli import Parser, Settings  # noqa: E402
from lib.data import load_task, test_loader  # noqa: E402
from lib.errors import cli_main  # noqa: E402
from lib.experiment import format_result  # noqa: E402
from lib.models import build_model  # noqa: E402
from lib.runs import load_weights, open_run, run_summary, save_array, save_json  # noqa: E402
from lib.train import LoopSettings, make_accelerator, memory_format, predict_many  # noqa: E402


def repredict(run, cfg, n):
    """Predict the test set again with every member's saved weights, all members in one pass over the test set;
    returns (accelerator, probs of shape (members, samples, classes))."""
    acc = make_accelerator(cfg.cpu, cfg.mixed_precision)
    data = load_task(cfg)
    fmt = memory_format(LoopSettings.from_settings(cfg), acc)
    models = []
    for i in range(1, n + 1):
        model = build_model(cfg.arch, data.num_classes)
        model.load_state_dict(load_weights(run.weights(i)))
        models.append(model.to(acc.device, memory_format=fmt))
    return acc, predict_many(acc, models, test_loader(data.test, cfg.eval_batch_size, min(cfg.num_workers, 4)),
                             memory_format=fmt)


@cli_main
def main():
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("--from_weights", action="store_true", help="predict the test set again from the saved weights")
    p.add_argument("--cpu", action="store_true", help="with --from_weights: use the CPU even if a GPU is present")
    a = p.parse_args()
    run = open_run(a.run_dir)
    n = run.completed_members()
    labels = np.load(run.file("labels.npy"))
    config = run.config
    is_main = True
    if a.from_weights:
        # the run's settings (older runs lack later flags: their defaults), on the CPU if asked
        cfg = Settings({"channels_last": "auto", **config, "cpu": a.cpu or config.get("cpu", False)})
        acc, probs = repredict(run, cfg, n)
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
