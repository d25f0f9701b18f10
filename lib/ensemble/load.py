"""A trained ensemble as one torch.nn.Module, read from a run folder or from a folder scripts/export.py wrote:

    from lib.ensemble.load import load_ensemble
    ens = load_ensemble("runs/starsse/digits-seed0")      # every member checked against its record's digests
    probs = ens.predict(["a.png", "b.png"])               # (2, classes): the mean of the members' softmax

ens(x) is the mean of the members' softmax probabilities, (batch, classes) float32, for a batch x of images already
in the members' input form (ens.transform(image) of each); ens(x, members=True) also gives the members' own,
(members, batch, classes). ens.class_names (in label order), ens.transform (an image or an image file's path -> the
(3, H, W) tensor the run's test transform gives), ens.spec (that transform as data), ens.info (arch, method, the
run's settings and metrics.json, the soup it is, where it came from).

With soup="uniform" or "greedy" the module holds one network, the run's soup (lib/ensemble/soup.py): the members'
average weights with their BatchNorm statistics re-estimated on the run's training data, which must be at hand.
"""
import dataclasses
import json
import os

import numpy as np
import torch
import torch.nn as nn
import torchvision.transforms as T

from lib.data import sources
from lib.data.tasks import (
    CIFAR_STATS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Augment,
    augment_spec,
    digits_normalize,
    load_task,
    model_data_config,
    torchvision_transforms,
)
from lib.ensemble.soup import run_soup
from lib.evaluation.evaluate import member_models, run_settings
from lib.infra.errors import UserError, check
from lib.infra.files import file_sha256, load_json, load_weights
from lib.models.backbones import build_model
from lib.runs.rundir import open_run

EXPORT_FORMAT = "ens-transfer-ensemble"   # config.json "format" of a folder scripts/export.py wrote
EXPORT_VERSION = 1                        # its layout's version: a later layout gets a new number
WEIGHTS = "model.safetensors"             # an export's weights: every network's tensors, as Ensemble.state_dict()
CONFIG = "config.json"                    # an export's config, and a run's settings
CLASSES = "classes.json"                  # a run's class names in label order (written at finish: lib/ensemble/card.py)


# ----------------------------------------------------------------------------------------------------------------
# the run's test transform, as data

def input_spec(cfg, task=None):
    """How an image becomes the members' input, as the run's test transform makes it: lib.data.tasks.Augment's fields
    (kind, size, mean, std, resize, interpolation) and `fit`, the (H, W) every image is resized to first when the
    test transform takes its images as they are (digits at --image_size, --augment cifar at the images' own size),
    else None (Resize of the short side + CenterCrop). task: the run's TaskData when already loaded (needed only for
    the native size of a Hugging Face / image-folder task with --augment cifar)."""
    if cfg.dataset == "digits":
        norm = digits_normalize()  # the test digits are normalised as they are (lib.data.tasks.load_digits_task)
        aug = Augment("cifar", cfg.image_size, tuple(norm.mean), tuple(norm.std))
    else:
        stats = CIFAR_STATS.get(cfg.dataset, (IMAGENET_MEAN, IMAGENET_STD))
        native = 32
        if cfg.dataset in ("hf", "imagefolder") and cfg.augment == "cifar":
            native = (task or load_task(cfg)).test_size[0]
        aug = augment_spec(cfg.augment, cfg.image_size, native, stats,
                           model_data_config(cfg) if cfg.augment == "model" else None)
    spec = dataclasses.asdict(aug)
    spec.update(mean=[float(v) for v in aug.mean], std=[float(v) for v in aug.std],
                fit=[aug.size, aug.size] if aug.kind == "cifar" else None)
    return spec


class ImageTransform:
    """An image (PIL, or a file path) -> the (3, H, W) float tensor the members take: RGB, then the spec's test
    transform (lib.data.tasks.torchvision_transforms, with a resize to `fit` first where the run's test images all
    had that size). Picklable, for DataLoader workers."""

    def __init__(self, spec):
        self.spec = dict(spec)
        aug = Augment(**{f.name: spec[f.name] for f in dataclasses.fields(Augment)})
        first = [T.Resize(tuple(spec["fit"]), interpolation=T.InterpolationMode(aug.interpolation))] \
            if spec.get("fit") else []
        self.compose = torchvision_transforms(aug, first=first)[1]

    def __call__(self, image):
        if isinstance(image, (str, os.PathLike)):
            image = sources.FileImages([image], [0], os.path.dirname(os.path.abspath(image)) or ".",
                                       str(image)).image(0)  # a broken file: one line naming it
        return self.compose(sources.to_rgb(image))


# ----------------------------------------------------------------------------------------------------------------
# the module

class Ensemble(nn.Module):
    """Networks whose softmax probabilities are averaged (a run's members, or one soup). Built in eval mode."""

    def __init__(self, networks, class_names, spec, info=None):
        super().__init__()
        self.members = nn.ModuleList(networks)
        self.class_names = [str(c) for c in class_names]
        self.spec = dict(spec)
        self.transform = ImageTransform(spec)
        self.info = dict(info or {})
        self.eval()

    def forward(self, x, members=False):
        probs = torch.stack([m(x).float().softmax(dim=-1) for m in self.members])
        mean = probs.mean(dim=0)
        return (mean, probs) if members else mean

    @torch.inference_mode()
    def predict(self, images, members=False):
        """forward on a list of images (PIL images or file paths), each through ens.transform first."""
        device = next(self.parameters()).device
        return self(torch.stack([self.transform(im) for im in images]).to(device), members=members)


# ----------------------------------------------------------------------------------------------------------------
# loading

def is_export(path):
    """Whether `path` is a folder scripts/export.py wrote (its config.json says so)."""
    try:
        return load_json(os.path.join(path, CONFIG)).get("format") == EXPORT_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def load_ensemble(path, soup=None, device="cpu", log=print):
    """The Ensemble of a run folder (every finished member; soup: its "uniform" or "greedy" soup instead) or of an
    exported folder (what was exported), on `device`, in eval mode. Damaged or altered weights: one line (UserError)
    naming the file. log: where notes go (an unfinished run, class names that are not recorded)."""
    check(os.path.isdir(path), f"not found: {path} (a run folder or a folder scripts/export.py wrote)")
    if is_export(path):
        check(soup is None, f"{path} is an exported ensemble, which holds what was exported: a soup is made from a "
                            f"run folder (scripts/export.py RUN --soup MODE exports one)")
        return _load_export(path).to(device)
    run = open_run(path)
    cfg = run_settings(run)
    n = run.completed_members()
    if n < cfg.members:
        log(f"note: {path} is unfinished ({n} of {cfg.members} members): its finished members are used")
    metrics_path = run.file("metrics.json")
    info = {"arch": cfg.arch, "image_size": cfg.image_size, "method": cfg.method, "members": n,
            "planned_members": cfg.members, "soup": soup, "soup_members": None, "settings": run.config,
            "metrics": load_json(metrics_path) if os.path.exists(metrics_path) else {}, "source": os.path.abspath(path),
            "test_samples": int(len(np.load(run.file("labels.npy"), mmap_mode="r")))}
    task = None
    if soup:
        task = load_task(cfg)  # the soup's BatchNorm statistics are re-estimated on the training data
        model, info["soup_members"] = run_soup(run, cfg, soup, device, task)
        networks, names = [model], task.class_names
    else:
        num_classes = np.load(run.probs(1), mmap_mode="r").shape[-1]
        networks = member_models(run, cfg.arch, num_classes, n, device, image_size=cfg.image_size)
        names = run_class_names(run, cfg, num_classes, log)
    info["num_classes"] = len(names)
    return Ensemble(networks, names, input_spec(cfg, task), info).to(device)


def run_class_names(run, cfg, num_classes, log=print):
    """A run's class names: classes.json (written when the run finished), else its task's (the data must be at
    hand), else the label numbers, with a note."""
    path = run.file(CLASSES)
    if os.path.exists(path):
        names = load_json(path)
        check(isinstance(names, list) and len(names) == num_classes,
              f"{path} does not hold the run's {num_classes} class names; delete it and re-run scripts/soup.py or "
              f"the training command to write it again")
        return names
    try:
        names = load_task(cfg).class_names
    except UserError as e:
        log(f"note: {run.path} records no class names and its data cannot be read ({e}): classes are named by "
            f"their label numbers")
        names = None
    return names or [str(c) for c in range(num_classes)]


def _load_export(path):
    config = load_json(os.path.join(path, CONFIG))
    check(config.get("version") == EXPORT_VERSION, f"{path}: export layout version {config.get('version')}, this "
                                                   f"code reads version {EXPORT_VERSION}")
    weights = os.path.join(path, WEIGHTS)
    check(os.path.isfile(weights), f"{weights} is missing")
    check(file_sha256(weights) == config["weights_sha256"],
          f"{weights} is damaged (its content does not match the digest in {CONFIG}); export the run again")
    with torch.random.fork_rng(devices=[]):  # the networks' random initialisation, overwritten next
        networks = [build_model(config["arch"], config["num_classes"], config["image_size"])
                    for _ in range(config["networks"])]
    ens = Ensemble(networks, config["class_names"], config["transform"], config["info"])
    try:
        ens.load_state_dict(load_weights(weights))
    except RuntimeError as e:
        raise UserError(f"{weights} does not fit {config['arch']} ({str(e).splitlines()[0][:200]})") from None
    return ens


def export_config(ens):
    """What an export's config.json records besides the digest of its weights (lib/ensemble/export.py)."""
    return {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "arch": ens.info["arch"],
            "num_classes": len(ens.class_names), "image_size": ens.info["image_size"], "networks": len(ens.members),
            "class_names": ens.class_names, "transform": ens.spec, "info": json.loads(json.dumps(ens.info))}
