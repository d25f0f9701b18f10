"""Model soups (Wortsman et al., ICML 2022): one network whose weights are the average of several members' weights.
The NeurIPS paper's claim: StarSSE members, all in one basin around model 1, make better uniform soups than SSE's.

    check_compatible(states, records, smap)    # same tensors; a tensor frozen in some members equal in all of them
    soup = uniform_soup(states)                # the mean of every floating-point tensor
    soup, kept = greedy_soup(states, score, own_scores)   # members by validation accuracy, kept while it does not drop
    recalibrate_bn(model, take_batches(train_loader, N), keep=identical_bn_layers(states))

Averaged weights need their own BatchNorm statistics (the average of the members' running statistics is not the
statistics of the averaged network), so BN models re-estimate them on training batches. Soups only make sense for
members in one basin (SSE, StarSSE, Local DE from one fine-tune); Global DE members come from different checkpoints
and their soup is expected to fail (near-chance accuracy).
"""
import torch
import torch.nn as nn
from torch.optim.swa_utils import update_bn

from lib.infra.errors import UserError, check

BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def check_compatible(states, records=None, smap=None):
    """Refuse (UserError naming the first mismatched tensor) members whose state dicts differ in keys, shapes or
    dtypes (different architectures or heads), or whose frozen masks differ on a tensor that is not identical.

    Frozen masks: member i's record says which stages it kept frozen (`freeze`, and `frozen_bn`: with "train" the
    BatchNorm statistics of frozen stages moved, so only their weights count as frozen). A tensor that every member
    froze may differ (e.g. Local/Global DE members frozen from different starting points: averaging them is the same
    gamble as averaging any other tensor). A tensor that some members froze and others trained must be bit-identical
    in every member, as it is in frozen StarSSE (cycles 2..M keep model 1's prefix, which model 1 trained): else the
    soup would average a frozen value with a trained one from another basin, which no training run produced.
    smap: the members' lib.models.backbones.StageMap (stage_map(model)), which says which stage each tensor belongs
    to."""
    check(len(states) >= 1, "a soup needs at least one member")
    first = states[0]
    for j, s in enumerate(states[1:], start=2):
        for k, v in first.items():  # in member 1's order: the first mismatch is named
            check(k in s, f"members 1 and {j} have different tensors (first: {k}, only in member 1): different "
                          f"architectures cannot be souped")
            check(v.shape == s[k].shape, f"members 1 and {j} differ in tensor {k}: shape {tuple(v.shape)} vs "
                                         f"{tuple(s[k].shape)} (different architectures cannot be souped)")
            check(v.dtype == s[k].dtype, f"members 1 and {j} differ in tensor {k}: dtype {v.dtype} vs {s[k].dtype}")
        extra = [k for k in s if k not in first]
        check(not extra, f"members 1 and {j} have different tensors (first: {extra[0] if extra else ''}, only in "
                         f"member {j}): different architectures cannot be souped")
    if not records or all(r.get("freeze", "none") == "none" for r in records):
        return
    if smap is None:
        raise ValueError("check_compatible: members trained with frozen stages need the stage map (smap)")
    frozen_in = [frozen_keys(first, smap, r.get("freeze", "none"), r.get("frozen_bn", "eval")) for r in records]
    for k in first:
        froze = [j for j, keys in enumerate(frozen_in, start=1) if k in keys]
        if not froze or len(froze) == len(states):
            continue
        for j, s in enumerate(states[1:], start=2):
            if not torch.equal(s[k], first[k]):
                trained = next(i for i in range(1, len(states) + 1) if i not in froze)
                raise UserError(f"different frozen masks: tensor {k} is frozen in member {froze[0]} "
                                f"(--freeze {records[froze[0] - 1].get('freeze')}) but trained in member {trained}, "
                                f"and members 1 and {j} differ in it: such members cannot be souped")


def frozen_keys(state, smap, stage, frozen_bn="eval"):
    """The keys of `state` that `--freeze stage` kept fixed (BatchNorm statistics only with frozen_bn='eval'), as
    lib.core.freeze.freeze chooses them: the tensors of every part before `stage` in the stage map `smap`."""
    if stage == "none":
        return set()
    parts = smap.frozen_parts(stage)
    return {k for k in state if smap.part_of(k) in parts and (frozen_bn == "eval" or not k.endswith(BN_BUFFERS))}


def uniform_soup(states):
    """The mean of the members' floating-point tensors (accumulated in float64, stored in their dtype); integer
    tensors (BatchNorm's num_batches_tracked counters) are member 1's."""
    out = {}
    for k, v in states[0].items():
        if v.is_floating_point():
            out[k] = (sum(s[k].double() for s in states) / len(states)).to(v.dtype)
        else:
            out[k] = v.clone()
    return out


def greedy_soup(states, score, own_scores):
    """Wortsman et al.'s greedy soup: members sorted by their own validation score (best first; ties in member
    order); the soup starts as the best member, and each next member joins if the uniform soup of the kept members
    and it scores at least as well (>=) as the soup so far. score(state) -> validation score of a soup of >= 2
    members (higher is better); own_scores: each member's own score. Returns (state, kept member numbers (1-based,
    in the order they joined), [(member, candidate score, kept)])."""
    order = sorted(range(len(states)), key=lambda i: (-own_scores[i], i))
    kept, best, soup = [order[0]], own_scores[order[0]], states[order[0]]
    steps = [(order[0] + 1, own_scores[order[0]], True)]
    for i in order[1:]:
        candidate = uniform_soup([states[j] for j in kept + [i]])
        s = score(candidate)
        steps.append((i + 1, s, s >= best))
        if s >= best:
            kept, best, soup = kept + [i], s, candidate
    return soup, [k + 1 for k in kept], steps


# ----------------------------------------------------------------------------------------------------------------
# BatchNorm statistics

def has_batchnorm(model):
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def identical_bn_layers(states):
    """Names of the BatchNorm layers whose running statistics are bit-identical in every member (the frozen stages
    of frozen StarSSE): the soup's statistics there are already exact, since everything before them is identical."""
    names = [k[:-len(".running_mean")] for k in states[0] if k.endswith(".running_mean")]
    return {n for n in names if all(torch.equal(s[f"{n}.running_mean"], states[0][f"{n}.running_mean"]) and
                                    torch.equal(s[f"{n}.running_var"], states[0][f"{n}.running_var"])
                                    for s in states[1:])}


def take_batches(loader, n, set_epoch=True):
    """The first n batches of a training loader, going through as many epochs as needed (loader.sampler.set_epoch)."""
    epoch = 0
    while n > 0:
        if set_epoch and hasattr(getattr(loader, "sampler", None), "set_epoch"):
            loader.sampler.set_epoch(epoch)
        got = 0
        for batch in loader:
            yield batch
            got += 1
            n -= 1
            if n == 0:
                return
        check(got > 0, "the training loader is empty: no batch to re-estimate BatchNorm statistics on")
        epoch += 1


def recalibrate_bn(model, batches, device=None, keep=()):
    """Re-estimate every BatchNorm layer's running statistics on `batches` (torch.optim.swa_utils.update_bn: statistics
    reset, momentum None = the cumulative average over the batches of each batch's mean and unbiased variance, the
    model in train mode without gradients; mode and momenta restored), except the layers named in `keep`, which keep
    their statistics."""
    modules = dict(model.named_modules())
    kept = {name: {b: getattr(modules[name], b).clone() for b in BN_BUFFERS} for name in keep}
    update_bn(batches, model, device)
    with torch.no_grad():
        for name, buffers in kept.items():
            for b, value in buffers.items():
                getattr(modules[name], b).copy_(value)
    return model
