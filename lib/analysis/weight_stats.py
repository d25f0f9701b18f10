"""Weight-space statistics of saved members (thesis sections 4 and 6): read from safetensors one tensor at a time."""
import numpy as np
import torch
from safetensors import safe_open

from lib.models.backbones import arch_stages, meta_model

REPR_STAGES = ["stage2", "stage3", "stage4", "stage5", "avgpool"]  # ResNets'; any arch: repr_stages(arch)
# The AvgPool layer has no weights: the thesis' "AvgPool layer weights" are read here as those of fc, the linear
# layer that reads the AvgPool output. Every model: the pool stage's weights are the parameters from its last stage
# to the logits (final norms, the head).


def repr_stages(arch):
    """The stages the representation analysis compares for `arch`: stage2..stageK and its pool (ResNets: avgpool)."""
    return arch_stages(arch).feature_layers


def parameter_keys(arch, num_classes, image_size=None):
    """{stage: its parameter names} for repr_stages(arch) (the pool stage: every parameter from the last stage to the
    logits), and 'all': every parameter. BatchNorm running statistics are buffers, not weights, and are left out."""
    model = meta_model(arch, num_classes, image_size)
    smap = arch_stages(arch)
    names = [n for n, _ in model.named_parameters()]
    keys = {s: [n for n in names if smap.part_of(n) == s or (s == smap.pool and smap.part_of(n) == smap.head)]
            for s in smap.feature_layers}
    keys["all"] = names
    return keys


def weight_stats(paths, keys):
    """The weights of members `paths` (safetensors, read one tensor at a time, so 15 ResNet-50s never sit in memory
    together): the (M, M) Gram matrix of all flattened parameters keys['all'], and for each other entry of `keys`
    the (M,) mean squared difference of those parameters to the first path's. Float64 throughout: fine-tunes of one
    checkpoint have cosines within 1e-4 of 1."""
    files = [safe_open(p, framework="pt") for p in paths]
    stage_of = {k: s for s, ks in keys.items() if s != "all" for k in ks}
    gram = np.zeros((len(files), len(files)))
    sq = {s: np.zeros(len(files)) for s in keys if s != "all"}
    size = dict.fromkeys(sq, 0)
    for key in keys["all"]:
        x = torch.stack([f.get_tensor(key).double().flatten() for f in files])
        gram += (x @ x.T).numpy()
        if key in stage_of:
            sq[stage_of[key]] += ((x - x[0]) ** 2).sum(1).numpy()
            size[stage_of[key]] += x.shape[1]
    return gram, {s: sq[s] / max(size[s], 1) for s in sq}


def cosine_from_gram(gram):
    norm = np.sqrt(np.diag(gram))
    return gram / np.outer(norm, norm)
