"""A run's model soup as one network, made the same way by every caller: scripts/soup.py scores it, and
load_ensemble(run, soup=...) / scripts/predict.py --soup predict with it (lib/evaluation/soups.py holds the maths).

    states = member_states(run, cfg, n)            # verified against their digests, checked to be soupable
    model, kept = run_soup(run, cfg, "uniform", device)

A soup's BatchNorm statistics are re-estimated on training batches (BN_BATCHES at most, seed stream BN_STREAM), so
the same run gives the same soup, bit for bit, in scripts/soup.py and here.
"""
import os

import torch

from lib.data.tasks import load_task, train_loader
from lib.evaluation import registry, soups
from lib.infra.errors import check
from lib.infra.files import load_json
from lib.infra.seeding import seed_for
from lib.models.backbones import build_model, stage_map

BN_BATCHES = 100    # default recalibration for BN models: one epoch of training batches, at most this many
BN_STREAM = 11      # seed stream of the recalibration batches: (seed, BN_STREAM)
MODES = ("uniform", "greedy")


def member_states(run, cfg, n, num_classes):
    """Members 1..n's state dicts, each checked against its record's digests, and checked to be soupable together
    (same tensors; frozen masks: lib.evaluation.soups.check_compatible)."""
    states = [run.load_member_weights(i) for i in range(1, n + 1)]
    probe = build_model(cfg.arch, num_classes, cfg.image_size)  # its stage map: which stage each tensor is in
    soups.check_compatible(states, [load_json(run.record(i)) for i in range(1, n + 1)], stage_map(probe))
    return states


def bn_loader(cfg, data, device):
    """The training batches the statistics are re-estimated on (the same augmented batches for every soup)."""
    return train_loader(data.train, cfg.batch_size, 1, 0, seed_for(cfg.seed, BN_STREAM), 0, device, cfg.drop_last)


def default_bn_batches(cfg, data, device):
    """One epoch of training batches, at most BN_BATCHES, for a model with BatchNorm layers; else 0."""
    probe = build_model(cfg.arch, data.num_classes, cfg.image_size)
    return min(BN_BATCHES, len(bn_loader(cfg, data, device))) if soups.has_batchnorm(probe) else 0


def soup_model(cfg, data, state, device, bn_batches, keep=()):
    """The network holding `state` on `device`, its BatchNorm statistics re-estimated on `bn_batches` training
    batches (0: kept as they are) except in the layers named in `keep` (identical in every member)."""
    model = build_model(cfg.arch, data.num_classes, cfg.image_size)
    model.load_state_dict(state)
    model.to(device)
    if bn_batches:
        torch.manual_seed(seed_for(cfg.seed, BN_STREAM))  # the same augmented batches for every soup
        soups.recalibrate_bn(model, soups.take_batches(bn_loader(cfg, data, device), bn_batches), device, keep)
    return model.eval()


def run_soup(run, cfg, mode, device, data=None):
    """(the soup of a finished run as a model in eval mode, its members (1-based)). uniform: every finished member;
    greedy: the members scripts/soup.py --mode greedy kept (metrics.json soup/greedy/members). Recalibrated as
    scripts/soup.py does by default. data: the run's lib.data.tasks.TaskData when already loaded."""
    check(mode in MODES, f"unknown soup '{mode}' (choose from {', '.join(MODES)})")
    n = run.completed_members()
    check(n >= 2, f"{run.path} has {n} finished member: a soup needs at least 2")
    if mode == "greedy":
        path = run.file("metrics.json")
        kept = load_json(path).get(registry.GREEDY_MEMBERS.key) if os.path.exists(path) else None
        check(kept, f"{run.path} has no greedy soup yet: run `python scripts/soup.py {run.path} --mode greedy` first "
                    f"(it chooses the members on the validation split)")
    else:
        kept = list(range(1, n + 1))
    data = data or load_task(cfg)
    states = member_states(run, cfg, n, data.num_classes)
    chosen = [states[k - 1] for k in kept]
    state = soups.uniform_soup(chosen) if len(chosen) > 1 else chosen[0]
    batches = default_bn_batches(cfg, data, device) if len(chosen) > 1 else 0  # one member is used as it is
    return soup_model(cfg, data, state, device, batches, soups.identical_bn_layers(states)), kept
