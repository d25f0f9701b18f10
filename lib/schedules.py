"""Learning-rate schedules as per-iteration arrays (moco-v3 / dino style).

Phase I decays by cosine from `lr` to 0 over its epochs; every later cycle restarts at `cycle_lr` and decays by
cosine to 0 over `cycle_epochs`, without warm-up. The training loop reads `lrs[step]` with `step` counted from the
start of the member, so the value never depends on how often a scheduler object was stepped (a scheduler passed
through accelerator.prepare steps once per process and would end cycles N times too early on N GPUs).
"""
import math

import numpy as np

from .errors import check

GRANULARITIES = ("epoch", "iteration")


def cosine(base_lr, epochs, iters_per_epoch, granularity="epoch"):
    """lrs[t] for the t-th iteration of a cosine decay from base_lr towards 0.

    "epoch": constant within an epoch, lr_e = base * (1 + cos(pi * e / epochs)) / 2 (what the reference code did:
    epoch 1 at the full rate, the last epoch small but not 0).
    "iteration": lr_t = base * (1 + cos(pi * t / (epochs * iters_per_epoch))) / 2.
    """
    check(granularity in GRANULARITIES, f"--lr_granularity must be one of {GRANULARITIES}, got {granularity}")
    check(epochs > 0 and iters_per_epoch > 0, f"a schedule needs positive epochs and iterations ({epochs}, {iters_per_epoch})")
    t = np.arange(epochs * iters_per_epoch)
    progress = (t // iters_per_epoch) / epochs if granularity == "epoch" else t / (epochs * iters_per_epoch)
    return base_lr * 0.5 * (1.0 + np.cos(math.pi * progress))


def member_schedule(args, member, iters_per_epoch):
    """The schedule of member `member` (1-based): phase I for member 1, a restarted cycle for members 2..M."""
    if member == 1:
        return cosine(args.lr, args.epochs, iters_per_epoch, args.lr_granularity)
    return cosine(args.cycle_lr, args.cycle_epochs, iters_per_epoch, args.lr_granularity)
