"""Stages of any model by name (thesis figure 4.1; lib/models/backbones.py maps every family): the module behind a
stage, hooks that read stage outputs during a forward pass, and the names the --layers / --stages flags take.

ResNets: stage1 = stem (conv1, bn1, relu, maxpool), stage2..stage5 = layer1..layer4, then avgpool, fc; other models
stage1..stageK, pool, head.
"""
import contextlib

import torch

from lib.infra.errors import check
from lib.models.backbones import RESNET_MAP, RESNET_STAGES, check_stage, stage_map, unwrap

# ResNet-50's names (the thesis'); every other model's come from stage_map(model) / arch_stages(arch)
STAGES = RESNET_STAGES
FREEZE_CHOICES = RESNET_MAP.freeze_choices


def feature_layer(smap, name, flag="layer"):
    """The part a --layers / --stages name means for this model (stage2..stageK, pool; aliases avgpool = pool)."""
    part = smap.resolve(name)
    check(part in smap.feature_layers, f"unknown {flag} '{name}' "
                                       f"(choose from {', '.join(smap.feature_layers)} for {smap.label})")
    return part


def stage_module(model, name):
    """The module whose output is stage `name`'s output (pool without a module of its own: the head, whose input
    it is)."""
    model = unwrap(model)
    smap = stage_map(model)
    part = check_stage(smap, name)
    if part == smap.head or (part == smap.pool and smap.pool_module is None):
        return model.get_submodule(smap.head_module)
    return model.get_submodule(smap.pool_module if part == smap.pool else smap.outputs[part])


@contextlib.contextmanager
def taps(model, names):
    """Inside the block, `feats[name]` holds the output of each named stage for the last forward pass.

    Hooks only read, so the model and its gradients are unchanged. Names: stage1..stageK, pool (alias avgpool:
    the pooled features, the head's input; ResNets: avgpool's output), head (alias fc: the logits).
        with taps(model, ["stage5", "avgpool"]) as feats:
            logits = model(x)
        feats["avgpool"]  # (batch, 2048, 1, 1) for ResNet-50; (batch, 768) for Swin-T's pool
    Swin's stage outputs are NHWC, ViT's are token sequences: users flatten them per sample.
    """
    model = unwrap(model)  # DDP / compiled wrappers
    smap = stage_map(model) if names else None  # no taps: any module, even one without stages
    feats, handles = {}, []
    for name in names:
        part = check_stage(smap, name)
        if part == smap.pool and smap.pool_module is None:
            def pre_hook(_module, args, name=name):
                feats[name] = args[0]
            handles.append(model.get_submodule(smap.head_module).register_forward_pre_hook(pre_hook))
            continue

        def hook(_module, _inp, out, name=name):
            feats[name] = out[0] if isinstance(out, (tuple, list)) else out
        path = smap.head_module if part == smap.head else smap.pool_module if part == smap.pool else smap.outputs[part]
        handles.append(model.get_submodule(path).register_forward_hook(hook))
    try:
        yield feats
    finally:
        for h in handles:
            h.remove()




def features_only(model, x, names):
    """{name: output of each named stage} for input x, from a forward pass that changes nothing: no gradients,
    BatchNorm layers in training mode normalise with the batch's statistics as in training but leave their running
    statistics (and batch counts) as they were, and the random streams (dropout, drop path) are restored after it.
    The features a training step's forward would give, before that step (--rtd_pipeline's look-ahead)."""
    model = unwrap(model)
    tracking = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training
                and m.track_running_stats]
    for m in tracking:  # training mode without tracking: batch statistics, no update (BatchNorm.forward's own rule)
        m.track_running_stats = False
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []), \
                taps(model, names) as feats:
            model(x)
    finally:
        for m in tracking:
            m.track_running_stats = True
    return feats
