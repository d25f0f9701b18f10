"""Learning-rate schedules as per-iteration arrays (moco-v3 / dino style).

Phase I decays by cosine from `lr` to 0 over its epochs; every later cycle restarts at `cycle_lr` and decays by
cosine to 0 over `cycle_epochs`, without warm-up. The training loop reads `lrs[step]` with `step` counted from the
start of the member, so the value never depends on how often a scheduler object was stepped (a scheduler passed
through accelerator.prepare steps once per process and would end cycles N times too early on N GPUs).
"""
import math

import numpy as np

from lib.infra.errors import check

GRANULARITIES = ("epoch", "iteration")


def cosine(base_lr, epochs, iters_per_epoch, granularity="epoch", warmup_epochs=0.0, warmup_lr=0.0,
           warmup_granularity="iteration"):
    """lrs[t] for the t-th iteration of a cosine decay from base_lr towards 0.

    "epoch": constant within an epoch, lr_e = base * (1 + cos(pi * e / epochs)) / 2 (what the reference code did:
    epoch 1 at the full rate, the last epoch small but not 0).
    "iteration": lr_t = base * (1 + cos(pi * t / (epochs * iters_per_epoch))) / 2.
    warmup_epochs > 0 (the Swin setup): a linear warm-up from warmup_lr towards base_lr, then the cosine over the
    remaining iterations (per iteration, or stepped every iters_per_epoch iterations with "epoch").
    warmup_granularity "iteration": the first W = round(warmup_epochs * iters_per_epoch) iterations rise as
    lr_t = warmup_lr + (base_lr - warmup_lr) * t / W. "epoch" (the reference code's linear_warmup_cosine, stepped
    per epoch): W = int(warmup_epochs) whole epochs (the reference's int(0.1 * 102) = 10), epoch e < W at
    warmup_lr + (base_lr - warmup_lr) * e / W, then the cosine over the other epochs - W epochs.
    """
    check(granularity in GRANULARITIES, f"--lr_granularity must be one of {GRANULARITIES}, got {granularity}")
    check(warmup_granularity in GRANULARITIES,
          f"--warmup_granularity must be one of {GRANULARITIES}, got {warmup_granularity}")
    check(epochs > 0 and iters_per_epoch > 0,
          f"a schedule needs positive epochs and iterations ({epochs}, {iters_per_epoch})")
    by_epoch = warmup_granularity == "epoch"
    total = epochs * iters_per_epoch
    warm = int(warmup_epochs) * iters_per_epoch if by_epoch else round(warmup_epochs * iters_per_epoch)
    check(0 <= warm < total, f"--warmup_epochs {warmup_epochs} must be >= 0 and shorter than phase I ({epochs} epochs)")
    t = np.arange(total)
    if warm == 0:
        progress = (t // iters_per_epoch) / epochs if granularity == "epoch" else t / total
        return base_lr * 0.5 * (1.0 + np.cos(math.pi * progress))
    rest = t - warm
    progress = (rest // iters_per_epoch * iters_per_epoch if granularity == "epoch" else rest) / (total - warm)
    lrs = base_lr * 0.5 * (1.0 + np.cos(math.pi * np.clip(progress, 0.0, None)))
    rise = (t[:warm] // iters_per_epoch * iters_per_epoch if by_epoch else t[:warm]) / warm  # e / W for whole epochs
    lrs[:warm] = warmup_lr + (base_lr - warmup_lr) * rise
    return lrs


def phase1_schedule(cfg, iters_per_epoch):
    """Phase I (model 1, every DE member): cosine from --lr over --epochs, after the optional linear warm-up."""
    return cosine(cfg.lr, cfg.epochs, iters_per_epoch, cfg.lr_granularity, cfg.warmup_epochs, cfg.warmup_lr,
                  cfg.warmup_granularity)


def cycle_schedule(cfg, iters_per_epoch):
    """A cycle (members 2..M; Standard SSE's first cycle too): restart at --cycle_lr, cosine over --cycle_epochs."""
    return cosine(cfg.cycle_lr, cfg.cycle_epochs, iters_per_epoch, cfg.lr_granularity)


def member_schedule(cfg, member, iters_per_epoch):
    """The schedule of member `member` (1-based): phase I for member 1, a restarted cycle for members 2..M."""
    return phase1_schedule(cfg, iters_per_epoch) if member == 1 else cycle_schedule(cfg, iters_per_epoch)
