"""Pre-training for the embedded default: BYOL (Grill et al. 2020) on the unlabelled digits pool.

Produces what the paper starts from, at CPU size: an independently pre-trained self-supervised backbone per
seed, saved with torchvision's key names and no `fc` (like a BYOL ResNet-50 export), so Global DE has several
checkpoints to fine-tune. `method="supervised"` pre-trains on the pool's labels instead (a source-task option).
"""
import copy
import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from lib.data.tasks import digits_arrays, digits_normalize, digits_splits
from lib.infra.files import save_weights, seal
from lib.models.backbones import build_model

# BYOL hyper-parameters for the digits pool (1217 images), chosen on fine-tuning accuracy with 4 labels per class
BYOL_DEFAULTS = dict(
    epochs=60,            # ~40 s on 2 CPU cores
    batch_size=64,        # small batches: BYOL needs many steps more than large batches
    lr=0.1,               # SGD, momentum 0.9, cosine to 0
    weight_decay=1e-4,
    tau=0.98,             # target EMA rate at the start, cosine-increased to 1 (0.99-0.996 in BYOL's long runs)
    proj_dim=128, hidden_dim=512,
)


def default_checkpoint(cache_dir, seed, method="byol"):
    return os.path.join(cache_dir, "pretrained", f"digits-{method}-seed{seed}.safetensors")


def augment_batch(x, generator=None):
    """Two BYOL views need independent random transforms per image: random scale/rotation/shear/translation
    (one affine_grid + grid_sample call for the whole batch), brightness/contrast jitter and a 6x6 cutout."""
    n, dev = len(x), x.device
    u = lambda *shape: torch.rand(*shape, generator=generator, device=dev)
    scale = 0.7 + 0.45 * u(n)
    angle = (u(n) * 2 - 1) * math.radians(20)
    shear = (u(n) * 2 - 1) * 0.15
    shift = (u(n, 2) * 2 - 1) * 0.3
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([torch.stack([cos / scale, (shear - sin) / scale, shift[:, 0]], 1),
                         torch.stack([sin / scale, cos / scale, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, align_corners=False, padding_mode="border")
    out = out * (0.6 + 0.8 * u(n, 1, 1, 1)) + (u(n, 1, 1, 1) - 0.5) * 0.8
    h, w = x.shape[-2:]
    cy, cx = (u(n) * h).long(), (u(n) * w).long()
    ys, xs = torch.arange(h, device=dev), torch.arange(w, device=dev)
    hole = ((ys[None, :, None] - cy[:, None, None]).abs() < 3) & ((xs[None, None, :] - cx[:, None, None]).abs() < 3)
    hole &= (u(n) < 0.5)[:, None, None]
    return out * (~hole)[:, None].to(out.dtype)


def _mlp(i, h, o):
    return nn.Sequential(nn.Linear(i, h), nn.BatchNorm1d(h), nn.ReLU(inplace=True), nn.Linear(h, o))


def pretrain_digits(out_path, seed=0, method="byol", epochs=None, verbose=True):
    """Pre-train a resnet_mini on the digits pool and save its backbone (no fc) to out_path (atomically).
    verbose: a progress bar with its ETA (the 200 BYOL epochs take about a minute on two CPU cores). One function,
    as BYOL's step is short and reads best in one place: views, online and target networks, the EMA update."""
    cfg = dict(BYOL_DEFAULTS, **({"epochs": epochs} if epochs else {}))
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    x, y = digits_arrays()
    _, _, pool = digits_splits(y, 4)  # the pool never contains test images (nor the default 4 labels per class)
    data = digits_normalize()(x[pool])
    labels = torch.as_tensor(y[pool])
    backbone = build_model("resnet_mini", 10)
    feat_dim = backbone.fc.in_features
    if method == "byol":
        backbone.fc = nn.Identity()
        online = nn.Sequential(backbone, _mlp(feat_dim, cfg["hidden_dim"], cfg["proj_dim"]))
        predictor = _mlp(cfg["proj_dim"], cfg["hidden_dim"], cfg["proj_dim"])
        target = copy.deepcopy(online).requires_grad_(False)
        params = list(online.parameters()) + list(predictor.parameters())
    elif method == "supervised":
        online, params = backbone, list(backbone.parameters())
    else:
        raise ValueError(f"unknown pre-training method {method}")
    opt = torch.optim.SGD(params, lr=cfg["lr"], momentum=0.9, weight_decay=cfg["weight_decay"])
    bs = cfg["batch_size"]
    steps_per_epoch = len(data) // bs
    total, step = cfg["epochs"] * steps_per_epoch, 0
    bar = tqdm(total=cfg["epochs"], desc=f"pre-training ({method}, seed {seed})", unit="epoch", disable=not verbose,
               dynamic_ncols=True)
    for epoch in range(cfg["epochs"]):
        perm = torch.randperm(len(data), generator=g)
        for k in range(steps_per_epoch):
            idx = perm[k * bs:(k + 1) * bs]
            progress = step / total
            for group in opt.param_groups:
                group["lr"] = cfg["lr"] * 0.5 * (1 + math.cos(math.pi * progress))
            if method == "byol":
                views = torch.cat([augment_batch(data[idx], g), augment_batch(data[idx], g)])
                p = predictor(online(views))
                with torch.no_grad():
                    z = target(views).roll(len(idx), 0)  # each view predicts the target of the other view
                loss = (2 - 2 * F.cosine_similarity(p, z, dim=-1)).mean()
            else:
                loss = F.cross_entropy(online(augment_batch(data[idx], g)), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if method == "byol":
                tau = 1 - (1 - cfg["tau"]) * (math.cos(math.pi * progress) + 1) / 2
                with torch.no_grad():
                    for pt, po in zip(target.parameters(), online.parameters()):
                        pt.lerp_(po, 1 - tau)
                    for bt, bo in zip(target.buffers(), online.buffers()):
                        bt.copy_(bo)
            step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()
    state = {k: v for k, v in backbone.state_dict().items() if not k.startswith("fc.")}
    save_weights(out_path, state)
    seal(out_path)  # its digest beside it: a damaged cached checkpoint is made again (lib/training/experiment.py)
    return out_path
