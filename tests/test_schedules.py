"""Learning-rate schedules against the closed-form cosine."""
import math
from types import SimpleNamespace

import numpy as np
import pytest

from lib.core.schedules import cosine, member_schedule
from lib.infra.errors import UserError


def test_epoch_granularity_matches_reference_values():
    lrs = cosine(0.05, 25, iters_per_epoch=3, granularity="epoch")
    assert len(lrs) == 75
    assert lrs[0] == lrs[2] == 0.05  # constant within an epoch, full rate in epoch 1
    assert lrs[3] == pytest.approx(0.05 * 0.5 * (1 + math.cos(math.pi / 25)))
    assert lrs[-1] == pytest.approx(0.05 * 0.5 * (1 + math.cos(math.pi * 24 / 25)))
    assert lrs[-1] == pytest.approx(1.97e-4, rel=0.01)  # reference code: 1.97e-4 at epoch 25, never 0


def test_iteration_granularity():
    lrs = cosine(0.1, 2, iters_per_epoch=5, granularity="iteration")
    for t in (0, 1, 4, 5, 9):
        assert lrs[t] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * t / 10)))
    assert np.all(np.diff(lrs) < 0)


def test_cycles_restart_at_cycle_lr_without_warmup():
    args = SimpleNamespace(lr=0.05, epochs=25, cycle_lr=0.1, cycle_epochs=12, members=5, lr_granularity="epoch",
                           warmup_epochs=0.0, warmup_lr=0.0, warmup_granularity="iteration")
    lrs = np.concatenate([member_schedule(args, i, iters_per_epoch=1) for i in range(1, 6)])  # the whole run
    assert len(lrs) == 25 + 4 * 12
    # the reference schedule for the thesis optimum: epoch 26 -> 0.1, 27 -> 0.0983, 37 -> 0.0017, 38 -> 0.1
    assert lrs[25] == 0.1 and lrs[26] == pytest.approx(0.0983, abs=1e-4) and lrs[36] == pytest.approx(0.0017, abs=1e-4)
    assert lrs[37] == 0.1
    assert np.array_equal(member_schedule(args, 2, 4), member_schedule(args, 5, 4))


def test_bad_schedule_values():
    with pytest.raises(UserError):
        cosine(0.1, 0, 3)
    with pytest.raises(UserError):
        cosine(0.1, 3, 3, granularity="batch")


def test_linear_warmup_then_cosine_over_the_rest():
    """The Swin setup: warm-up over 10 % of phase I from 5e-7 (reference code's linear_warmup_cosine)."""
    lrs = cosine(1e-4, 10, iters_per_epoch=4, granularity="iteration", warmup_epochs=1.0, warmup_lr=5e-7)
    assert len(lrs) == 40
    for t in range(4):  # linear from warmup_lr towards lr
        assert lrs[t] == pytest.approx(5e-7 + (1e-4 - 5e-7) * t / 4)
    assert lrs[4] == pytest.approx(1e-4)  # the cosine starts at the full rate after the warm-up ...
    assert lrs[22] == pytest.approx(1e-4 * 0.5 * (1 + math.cos(math.pi * 18 / 36)))  # ... and spans the other 36
    stepped = cosine(1e-4, 10, 4, granularity="epoch", warmup_epochs=1.0, warmup_lr=5e-7)
    assert np.array_equal(stepped[:4], lrs[:4]) and stepped[5] == stepped[7] == stepped[4]
    with pytest.raises(UserError, match="--warmup_epochs"):
        cosine(0.1, 2, 3, warmup_epochs=2)


def test_reference_swin_warmup_whole_epochs_then_cosine_over_92():
    """The reference code's Swin phase I (linear_warmup_cosine, a LambdaLR stepped once per epoch): warm-up over
    int(0.1 x 102) = 10 whole epochs from 5e-7, then the cosine over the other 92 epochs; by hand from its formula."""
    lr, warm_lr, ipe = 1e-4, 5e-7, 3
    lrs = cosine(lr, 102, ipe, granularity="epoch", warmup_epochs=10.2, warmup_lr=warm_lr, warmup_granularity="epoch")
    assert len(lrs) == 102 * ipe
    per_epoch = lrs.reshape(102, ipe)
    assert np.all(per_epoch == per_epoch[:, :1])  # constant within every epoch, the warm-up's included
    hand = []
    for e in range(102):  # the reference's multiplier of lr at 0-based epoch e
        if e < 10:
            alpha = e / 10
            hand.append(lr * ((1 - alpha) * warm_lr / lr + alpha))
        else:
            hand.append(lr * 0.5 * (1 + math.cos(math.pi * (e - 10) / 92)))
    assert per_epoch[:, 0] == pytest.approx(hand, rel=1e-12, abs=1e-18)
    assert per_epoch[0, 0] == warm_lr and per_epoch[9, 0] == pytest.approx(warm_lr + 0.9 * (lr - warm_lr))
    assert per_epoch[10, 0] == lr  # the cosine starts at the full rate at epoch 11 (1-based)
    # the project's warm-up (per iteration, over round(10.2 x 3) = 31 iterations) differs from it
    ours = cosine(lr, 102, ipe, granularity="epoch", warmup_epochs=10.2, warmup_lr=warm_lr)
    assert ours[1] > ours[0] and not np.allclose(ours, lrs)
    with pytest.raises(UserError, match="--warmup_granularity"):
        cosine(lr, 102, ipe, warmup_epochs=10, warmup_granularity="step")
