"""Model soups of a finished run (Wortsman et al. 2022): one network with the average of the members' weights.
The NeurIPS paper's claim: StarSSE's members, all in model 1's basin, make better uniform soups than SSE's.

    python scripts/soup.py runs/starsse/digits-seed0                       # the uniform soup
    python scripts/soup.py runs/starsse/digits-seed0 --mode uniform greedy # and the greedy soup (needs --val_split)

uniform: the mean of all members' weights. greedy: the members sorted by validation accuracy, each added to the
soup while the soup's validation accuracy does not drop. BatchNorm statistics of a soup are re-estimated on
--bn_recalibrate training batches (BN models: one epoch, at most 100 batches, by default; the layers identical in
every member, e.g. frozen stages, keep theirs).
Prints the soups' test accuracy, NLL and ECE beside the ensemble's and the best member's, and writes soup/<mode>/*
into <run>/metrics.json (lib.evaluation.results.write_metrics: with the digests of the members souped, so that a soup
of other members than the run's is dropped at the next write). `--mode uniform greedy` on a run without a validation
split makes the uniform soup and says why the greedy one was skipped. Members of different architectures or heads
are refused in one line naming the first tensor that differs. Global DE soups are expected to fail: its members come
from different checkpoints.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lib.infra.errors import check, cli_main, interrupt_quietly  # noqa: E402

interrupt_quietly()  # Ctrl-C while the libraries below load: one line, not a traceback
import numpy as np  # noqa: E402
from scipy.special import softmax  # noqa: E402

from lib.cli.parser import Parser  # noqa: E402
from lib.data.tasks import load_task  # noqa: E402
from lib.ensemble.card import write_run_card  # noqa: E402
from lib.ensemble.soup import BN_BATCHES, MODES, default_bn_batches, member_states, soup_model  # noqa: E402
from lib.evaluation import metrics, soups  # noqa: E402
from lib.evaluation import registry as R  # noqa: E402
from lib.evaluation.evaluate import lock_for_writing, run_settings  # noqa: E402
from lib.evaluation.predict import predict_set  # noqa: E402
from lib.evaluation.results import core_metrics, member_digests, write_metrics  # noqa: E402
from lib.runs.rundir import open_run  # noqa: E402
from lib.training.loop import make_accelerator  # noqa: E402


def soup_keys(mode, p, labels):
    return R.within(R.SOUP, {"acc": metrics.accuracy(p, labels), "nll": metrics.nll(p, labels),
                             "ece": metrics.ece(p, labels)}, mode=mode)


@cli_main
def main():
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("--mode", nargs="+", choices=MODES, default=["uniform"],
                   help="uniform: mean of all members; greedy: Wortsman et al.'s greedy soup (needs a validation "
                        "split)")
    p.add_argument("--bn_recalibrate", type=int, default=None, metavar="N",
                   help=f"re-estimate BatchNorm statistics on N training batches (default for BN models: one epoch, "
                        f"at most {BN_BATCHES} batches; 0: keep the averaged statistics)")
    p.add_argument("--cpu", action="store_true", help="use the CPU even if a GPU is present")
    a = p.parse_args()
    check(a.bn_recalibrate is None or a.bn_recalibrate >= 0, f"--bn_recalibrate must be >= 0, got {a.bn_recalibrate}")

    # the run: finished members, checked against their digests, compatible with each other (before any array of
    # theirs is stacked: another head is a shape that numpy cannot stack)
    run = open_run(a.run_dir, min_members=2)
    cfg = run_settings(run, cpu=a.cpu or run.config.get("cpu", False))
    n = run.completed_members()
    if n < cfg.members:
        print(f"note: {a.run_dir} is unfinished ({n} of {cfg.members} members): souping the finished ones")
    states = member_states(run, cfg, n, np.load(run.probs(1), mmap_mode="r").shape[-1])
    data = load_task(cfg)
    # greedy needs the validation split; asked with uniform, the uniform soup is still made
    modes = list(dict.fromkeys(a.mode))
    no_val = None if os.path.exists(run.file("val_labels.npy")) and data.val is not None else \
        f"{a.run_dir} has none: train the run with --val_split F (or --val_split_name) to have one"
    if "greedy" in modes and no_val:
        check(modes != ["greedy"], f"--mode greedy needs a validation split and {no_val}")
        print(f"note: greedy soup skipped: it needs a validation split and {no_val}")
        modes.remove("greedy")
    probs, labels = run.load_probs(n), np.load(run.file("labels.npy"))
    lock = lock_for_writing(run)  # a run still training in the directory is refused; None: read-only
    try:
        acc = make_accelerator(cfg.cpu, cfg.mixed_precision)
        bn_batches = a.bn_recalibrate if a.bn_recalibrate is not None else default_bn_batches(cfg, data, acc.device)
        keep = soups.identical_bn_layers(states)

        def soup_probs(state, dataset, recalibrate=True):
            """A soup's probabilities on `dataset`, its BatchNorm statistics re-estimated on training batches first."""
            model = soup_model(cfg, data, state, acc.device, bn_batches if recalibrate else 0, keep)
            logits = predict_set(acc, [model], dataset, cfg, local=True)[1][0]
            return softmax(logits.astype(np.float64), axis=-1)

        result, rows = {}, []
        if "uniform" in modes:
            p_uniform = soup_probs(soups.uniform_soup(states), data.test)
            rows.append((f"uniform soup ({n} members)", p_uniform))
            result.update(soup_keys("uniform", p_uniform, labels))
        if "greedy" in modes:
            y_val = np.load(run.file("val_labels.npy"))
            own = metrics.member_accuracy(run.load_probs(n, "val_probs"), y_val)  # saved with each member
            soup, kept, steps = soups.greedy_soup(states, lambda s: metrics.accuracy(soup_probs(s, data.val), y_val),
                                                  own)
            print(f"greedy: start from member {steps[0][0]} (validation acc {steps[0][1]:.2f} %)")
            for member, score, joined in steps[1:]:
                print(f"greedy: + member {member} -> validation acc {score:.2f} % ({'kept' if joined else 'left out'})")
            p_greedy = soup_probs(soup, data.test, recalibrate=len(kept) > 1)
            rows.append((f"greedy soup (members {' '.join(map(str, kept))})", p_greedy))
            result.update(soup_keys("greedy", p_greedy, labels), **{R.GREEDY_MEMBERS.key: kept})

        # the table: the soups beside the ensemble and the best member (by test accuracy), from saved probabilities
        best = int(np.argmax(metrics.member_accuracy(probs, labels)))
        rows = [(f"ensemble ({n} members)", probs), (f"best member (member {best + 1})", probs[best])] + rows
        print(f"| {cfg.method}: {a.run_dir} | acc. | NLL | ECE |\n|---|---|---|---|")
        for name, p in rows:
            print(f"| {name} | {metrics.ensemble_accuracy(p, labels):.2f} | {metrics.nll(p, labels):.4f} | "
                  f"{metrics.ece(p, labels):.4f} |")
        if bn_batches:
            print(f"(soups' BatchNorm statistics re-estimated on {bn_batches} training batches"
                  f"{f'; {len(keep)} layers identical in every member kept theirs' if keep else ''})")
        if lock is None:
            print(f"note: {a.run_dir} is read-only: metrics.json was not written")
        else:  # with the run's own keys, recomputed from its saved predictions
            write_metrics(run, {**core_metrics(run, n, log=lambda _m: None), **result}, member_digests(run, n))
            write_run_card(run, data)  # the model card shows the soups' accuracy from now on
    finally:
        if lock is not None:
            lock.release()


if __name__ == "__main__":
    main()
