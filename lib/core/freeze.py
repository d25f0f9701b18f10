"""Frozen stages (thesis section 5, PEFT StarSSE): train only the stages from a chosen one on, with the frozen
stages' BatchNorm locked in eval mode (or updating, as the reference code did), and a check at the member's end
that no frozen tensor moved. Also the SyncBatchNorm conversion for DDP, which leaves eval-locked layers alone.
"""
from dataclasses import dataclass

import torch
import torch.nn as nn

from lib.infra.errors import check
from lib.models.backbones import stage_map, timm_module

BN_MODES = ("eval", "train")


@dataclass
class Freeze:
    """What `freeze` did to a model, as one value: the training loop optimises `params` and, when the member ends,
    calls `verify`, which fails if any tensor of `frozen` (the frozen stages' weights, and their BatchNorm buffers
    unless bn="train") is not bit-identical to its value at freezing time."""
    stage: str
    bn: str
    params: list
    frozen: dict
    trainable: int
    total: int

    @property
    def trainable_fraction(self):
        return self.trainable / self.total

    def verify(self, model, what="training"):
        state = model.state_dict()
        moved = [k for k, v in self.frozen.items() if not torch.equal(state[k].cpu(), v)]
        if moved:  # a frozen tensor moved: a bug, never a result
            raise RuntimeError(f"{what}: frozen tensors changed during training: {moved[:5]} ({len(moved)} in all)")


class _KeepsEval:
    """Mixin of the BatchNorm layers of frozen stages (bn="eval"): they stay in eval mode whatever .train() calls
    reach them (a plain model.train() in anyone's loop), so their running statistics never move."""

    def train(self, mode=True):
        return super().train(False)


_EVAL_CLASSES = {}


def _keep_eval(module):
    """Turn a BatchNorm layer (of any BatchNorm class, e.g. timm's BatchNormAct2d) into its eval-locked twin: the
    same class with _KeepsEval mixed in, so parameters, buffers, state-dict keys and forward are unchanged."""
    cls = type(module)
    if not issubclass(cls, _KeepsEval):
        if cls not in _EVAL_CLASSES:
            twin = type(f"EvalLocked{cls.__name__}", (_KeepsEval, cls), {"__module__": __name__})
            globals()[twin.__name__] = twin  # importable by name, so deep copies and pickles work
            _EVAL_CLASSES[cls] = twin
        module.__class__ = _EVAL_CLASSES[cls]
    module.train(False)


def freeze(model, stage="none", bn="eval"):
    """Freeze every stage before `stage` (none, stage2..stageK, pool, head: stage_map(model).freeze_choices) and
    return the Freeze (parameters left to train, tensors that must not move). Frozen: requires_grad=False (the
    optimizer never sees them and the frozen prefix builds no autograd graph) and, with bn="eval" (default),
    BatchNorm layers of frozen stages locked in eval mode so their running statistics stay fixed; bn="train" keeps
    updating them, as the reference code did."""
    check(bn in BN_MODES, f"--frozen_bn must be eval or train, got {bn!r}")
    if stage == "none":  # nothing frozen: any module will do, even one without stages (a bare nn.Linear)
        smap, parts = None, ()
    else:
        smap = stage_map(model)
        check(stage in smap.freeze_choices,
              f"unknown --freeze '{stage}' (choose from {', '.join(smap.freeze_choices)})")
        parts = smap.frozen_parts(stage)
    param_names = set()
    for name, p in model.named_parameters():
        param_names.add(name)
        if parts and smap.part_of(name) in parts:
            p.requires_grad_(False)
    if bn == "eval" and parts:
        for name, m in model.named_modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and smap.part_of(name) in parts:
                _keep_eval(m)
    params = [p for p in model.parameters() if p.requires_grad]
    check(params, f"--freeze {stage} leaves nothing to train")
    frozen = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()
              if parts and smap.part_of(k) in parts and (bn == "eval" or k in param_names)}
    return Freeze(stage, bn, params, frozen, sum(p.numel() for p in params), sum(p.numel() for p in model.parameters()))


def _is_timm_bn_act(module):
    return type(module).__module__.startswith("timm.") and hasattr(module, "act")


def to_sync_batchnorm(model):
    """BatchNorm -> SyncBatchNorm (statistics over the global batch under DDP), in place; timm's BatchNormAct2d
    becomes timm's SyncBatchNormAct (keeping its activation). The eval-locked layers of frozen stages stay as they
    are (they use fixed statistics, nothing to synchronise)."""
    for name, child in model.named_children():
        if isinstance(child, _KeepsEval):
            continue
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            if _is_timm_bn_act(child):
                sync = timm_module().layers.convert_sync_batchnorm(child)
                sync._bn_class = type(child)  # from_sync_batchnorm turns it back into this class
            else:
                sync = nn.SyncBatchNorm.convert_sync_batchnorm(child)
            setattr(model, name, sync)
        else:
            to_sync_batchnorm(child)
    return model


def from_sync_batchnorm(model):
    """SyncBatchNorm -> BatchNorm2d (timm's SyncBatchNormAct -> BatchNormAct2d) in place, with the same parameters
    and buffers: saved members are plain models."""
    for name, child in model.named_children():
        if isinstance(child, nn.SyncBatchNorm) and getattr(child, "_bn_class", None) is not None:
            child.__class__ = child.__dict__.pop("_bn_class")  # the same attributes (act, drop), module and all
        elif isinstance(child, nn.SyncBatchNorm):
            bn = nn.BatchNorm2d(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
            bn.load_state_dict(child.state_dict())
            if child.affine:  # keep the Parameter objects (and their requires_grad)
                bn.weight, bn.bias = child.weight, child.bias
            bn.train(child.training)
            setattr(model, name, bn)
        else:
            from_sync_batchnorm(child)
    return model
