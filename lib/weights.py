"""Weight-space statistics of saved members (thesis sections 4 and 6): read from safetensors one tensor at a time."""
import numpy as np
import torch
from safetensors import safe_open

from .models import STAGE_MODULES, build_model

REPR_STAGES = ["stage2", "stage3", "stage4", "stage5", "avgpool"]
# The AvgPool layer has no weights: the thesis' "AvgPool layer weights" are read here as those of fc, the linear
# layer that reads the AvgPool output.
WEIGHT_MODULES = {**{s: STAGE_MODULES[s] for s in REPR_STAGES[:4]}, "avgpool": ["fc"]}


def parameter_keys(arch, num_classes):
    """{stage: its parameter names} for REPR_STAGES, and 'all': every parameter. BatchNorm running statistics are
    buffers, not weights, and are left out."""
    names = [n for n, _ in build_model(arch, num_classes).named_parameters()]
    keys = {s: [n for n in names if n.split(".")[0] in mods] for s, mods in WEIGHT_MODULES.items()}
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
