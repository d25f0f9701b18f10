"""Data: the fine-tuning task named by --dataset, its validation split, evaluation sets beyond the test set, loaders.

Tasks: the embedded default (scikit-learn's digits), CIFAR-10 / CIFAR-100 as the python pickles, a Hugging Face data
set (`--dataset hf`) and a folder of images with one sub-folder per class (`--dataset imagefolder`; lib/data/sources.py
reads these two). Each comes in two pipelines: `torchvision` (per-sample transforms in DataLoader workers) and `device`
(a uint8 tensor in memory, augmented in batches on the training device: lib/data/device.py).

The embedded default is a transfer-learning setting made from real handwritten digits that ship inside
scikit-learn (no download): a fixed stratified test set, a few labelled images per class to fine-tune on, and
the remaining images, without their labels, as the pre-training pool for self-supervised pre-training
(scripts/pretrain.py). The three parts are disjoint.

The validation split (`--val_split F`) is a stratified fraction of the training set, drawn with a fixed seed
(VAL_SEED, not --seed), so every method, seed and member holds out the same images; they are removed from training
and evaluated in the test transform (`TaskData.val`).
"""
import copy
import hashlib
import json
import math
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms as T
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from lib.data import sources
from lib.data.device import DeviceImages, DeviceLoader
from lib.infra.errors import UserError, check
from lib.models.backbones import data_config

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
DIGITS_SIZE = 16          # 8x8 digits are upsampled once to 16x16 so that crops and strides have room (--image_size)
DIGITS_TEST_FRACTION = 0.3  # 540 of the 1797 images, stratified, fixed (random_state 0) for every run
IMAGE_AUGMENTS = ["reference", "cifar", "model"]
AUGMENTS = {"digits": ["digits"], "cifar10": IMAGE_AUGMENTS, "cifar100": IMAGE_AUGMENTS, "hf": IMAGE_AUGMENTS,
            "imagefolder": IMAGE_AUGMENTS}
VAL_SEED = 0              # the validation split's seed: the same held-out images for every method, --seed and member
EVAL_SEED = 0             # the synthetic evaluation sets' seed (noise, the pixel permutation)
# the python pickles: folder name, files, meta file and its key of class names
CIFAR_FILES = {"cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"],
                           "batches.meta", "label_names"),
               "cifar100": ("cifar-100-python", ["train", "test"], "meta", "fine_label_names")}
CIFAR_STATS = {"cifar10": (CIFAR10_MEAN, CIFAR10_STD), "cifar100": (CIFAR100_MEAN, CIFAR100_STD)}


@dataclass
class TaskData:
    train: Dataset
    test: Dataset
    num_classes: int
    test_labels: np.ndarray  # in test-loader order, for metrics from saved probabilities
    val: Dataset = None      # the validation split in the test transform (same kind as `test`); None without one
    val_labels: np.ndarray = None  # np.int64 in val-loader order
    class_names: list = None  # class names (str) in label order, or None
    train_key: str = None    # what identifies the training data beyond the phase-I settings (data set fingerprint,
    #                          validation split, --auto_augment / --reprob, a model's data config); None for the
    #                          default data of digits / cifar10 / cifar100, so their cache keys stay as they were
    test_size: tuple = None  # (H, W) of the images the test transform takes as they are (digits, --augment cifar);
    #                          None when the test transform resizes (reference, model): evaluation sets follow it


class TensorImages(Dataset):
    """Images held in memory as a (N, 3, H, W) float tensor in [0, 1], with a per-sample transform."""

    def __init__(self, images, labels, transform=None):
        self.images, self.labels, self.transform = images, torch.as_tensor(labels, dtype=torch.long), transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        x = self.images[i]
        return (self.transform(x) if self.transform else x), self.labels[i]


class ArrayImages(Dataset):
    """Images held as a uint8 (N, 3, H, W) tensor, each given to a PIL-image transform (evaluation sets of a
    torchvision pipeline)."""

    def __init__(self, images, labels, transform):
        self.images, self.labels, self.transform = images, torch.as_tensor(labels, dtype=torch.long), transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i].permute(1, 2, 0).numpy())), self.labels[i]


class SourceImages(Dataset):
    """Images of a lib.data.sources source (all, or those at `indices`), read and decoded one at a time as RGB PIL
    images and given to `transform`. `size`: the (H, W) at which `raw_images` decodes them all (evaluation sets)."""

    def __init__(self, source, indices, transform, size, cache_dir):
        self.source, self.transform, self.size, self.cache_dir = source, transform, size, cache_dir
        self.indices = np.arange(len(source)) if indices is None else np.asarray(indices)
        self.labels = torch.as_tensor(source.labels[self.indices], dtype=torch.long)

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, k):
        return self.transform(self.source.image(int(self.indices[k]))), self.labels[k]

    def raw_images(self):
        return sources.decode(self.source, self.size, self.cache_dir)[torch.as_tensor(self.indices)]


# ----------------------------------------------------------------------------------------------------------------
# the validation split

def val_indices(labels, fraction, class_names, where="the training set"):
    """(train, val): sorted index arrays of a stratified split holding out `fraction` of `labels`, drawn with
    VAL_SEED (scikit-learn's train_test_split), the same for every method, seed and member."""
    from sklearn.model_selection import train_test_split
    check(0 < fraction < 0.5, f"--val_split must be in (0, 0.5), got {fraction}")
    labels = np.asarray(labels)
    counts = np.bincount(labels, minlength=len(class_names))
    small = [class_names[c] for c in np.flatnonzero((counts > 0) & (counts < 2))]
    check(not small, f"--val_split {fraction}: class {sources._few(map(repr, small))} has 1 image in {where}; a "
                     f"stratified split needs 2 or more (one stays for training)")
    n_val, n_classes = math.ceil(fraction * len(labels)), int((counts > 0).sum())
    check(n_val >= n_classes, f"--val_split {fraction} holds out {n_val} of the {len(labels)} images of {where}, "
                              f"fewer than its {n_classes} classes: a stratified split needs one of each "
                              f"(a larger fraction, or more images)")
    check(len(labels) - n_val >= n_classes, f"--val_split {fraction} leaves {len(labels) - n_val} of the "
                                            f"{len(labels)} images of {where} for training, fewer than its "
                                            f"{n_classes} classes (a smaller fraction)")
    train, val = train_test_split(np.arange(len(labels)), test_size=fraction, stratify=labels, random_state=VAL_SEED)
    sources._check_every_class_trained(labels[train], class_names, where, f" after --val_split {fraction}")
    return np.sort(train), np.sort(val)


# ----------------------------------------------------------------------------------------------------------------
# digits (embedded default)

def digits_arrays(size=DIGITS_SIZE):
    """All 1797 digits as (N, 3, size, size) float images in [0, 1] (upsampled once from 8x8) and their labels."""
    from sklearn.datasets import load_digits
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False).clamp(0, 1)
    return x.repeat(1, 3, 1, 1), d.target.astype(np.int64)


def digits_splits(labels, labels_per_class):
    """Disjoint index sets (finetune, test, pretrain_pool): a fixed test set, `labels_per_class` labelled
    images of each class to fine-tune on (fixed, random_state 0), and the rest as the unlabelled pre-training pool."""
    from sklearn.model_selection import train_test_split
    idx = np.arange(len(labels))
    rest, test = train_test_split(idx, test_size=DIGITS_TEST_FRACTION, stratify=labels, random_state=0)
    rng = np.random.RandomState(0)
    per_class = [rest[labels[rest] == c] for c in range(10)]
    check(0 < labels_per_class <= min(map(len, per_class)) // 2,
          f"--labels_per_class must be between 1 and {min(map(len, per_class)) // 2}, got {labels_per_class}")
    finetune = np.sort(np.concatenate([rng.choice(p, labels_per_class, replace=False) for p in per_class]))
    pool = np.setdiff1d(rest, finetune)
    return finetune, np.sort(test), pool


def digits_normalize():
    # mean/std of the digits images (all channels equal), measured once on the whole set
    return T.Normalize((0.3053,) * 3, (0.3189,) * 3)


def digits_train_transform(size=DIGITS_SIZE):
    # small crops and rotations; no flips: mirrored digits are other symbols
    return T.Compose([T.RandomResizedCrop(size, scale=(0.6, 1.0), antialias=True),
                      T.RandomRotation(10), digits_normalize()])


def load_digits_task(labels_per_class, pipeline="torchvision", image_size=DIGITS_SIZE, val_split=None):
    """The embedded default at `image_size`; `val_split`: a stratified fraction of the labelled images held out."""
    x, y = digits_arrays(image_size)
    finetune, test, _ = digits_splits(y, labels_per_class)
    names = [str(c) for c in range(10)]
    val = None
    if val_split:
        keep, held = val_indices(y[finetune], val_split, names, f"the {len(finetune)} labelled digits")
        finetune, val = finetune[keep], finetune[held]
    if pipeline == "device":
        u8 = (x * 255).round().to(torch.uint8)
        norm = digits_normalize()
        train = DeviceImages(u8[finetune], y[finetune], "digits", image_size, norm.mean, norm.std)
        test_ds = DeviceImages(u8[test], y[test], "test", image_size, norm.mean, norm.std)
        val_ds = None if val is None else test_ds.like(u8[val], y[val])
    else:
        train = TensorImages(x[finetune], y[finetune], digits_train_transform(image_size))
        test_ds = TensorImages(x[test], y[test], digits_normalize())
        val_ds = None if val is None else TensorImages(x[val], y[val], digits_normalize())
    return TaskData(train, test_ds, 10, y[test], val_ds, None if val is None else y[val], names,
                    test_size=(image_size, image_size))


# ----------------------------------------------------------------------------------------------------------------
# augmentations: one description, both pipelines

@dataclass(frozen=True)
class Augment:
    """An augmentation in both pipelines' terms. kind "reference" / "model": RandomResizedCrop(size) + flip; test
    Resize(resize) of the short side + CenterCrop(size). kind "cifar": random crop of the `size`-pixel image with
    4-pixel padding + flip; test: the image as it is. `interpolation`: torchvision pipeline only (the device
    pipeline resamples bilinearly)."""
    kind: str
    size: int
    mean: tuple
    std: tuple
    resize: int = None
    interpolation: str = "bilinear"


def augment_spec(augment, image_size, native=32, stats=(IMAGENET_MEAN, IMAGENET_STD), data_config=None,
                 test_resize=None):
    """The Augment of --augment: `reference` (the reference code: ImageNet statistics, test Resize(size * 256/224) +
    CenterCrop), `cifar` (native `native`-pixel images, `stats`), `model` (a model's data config dict, as
    lib.models.backbones.data_config / timm.data.resolve_model_data_config give it: input_size (3, H, W),
    interpolation, crop_pct, mean, std; test Resize(floor(H / crop_pct)) + CenterCrop(H), as timm's eval transform).
    test_resize (--test_resize): the test Resize of reference / model instead (the reference code's Swin: 256)."""
    check(test_resize is None or augment in ("reference", "model"),
          f"--test_resize is for --augment reference or model (a resize before the centre crop), not {augment}")
    check(test_resize is None or test_resize >= image_size,
          f"--test_resize {test_resize} must be at least --image_size {image_size} (it is cropped to it)")
    if augment == "reference":
        return Augment("reference", image_size, IMAGENET_MEAN, IMAGENET_STD,
                       test_resize or round(image_size * 256 / 224))
    if augment == "cifar":
        return Augment("cifar", native, tuple(stats[0]), tuple(stats[1]))
    check(augment == "model", f"unknown --augment {augment}")
    missing = [k for k in ("input_size", "interpolation", "crop_pct", "mean", "std") if k not in data_config]
    check(not missing, f"--augment model: the model's data config lacks {', '.join(missing)}")
    _, height, width = data_config["input_size"]
    check(height == width, f"--augment model: input size {height}x{width} is not square")
    interpolation = data_config["interpolation"] if data_config["interpolation"] in ("bilinear", "bicubic",
                                                                                     "nearest") else "bilinear"
    return Augment("model", int(height), tuple(data_config["mean"]), tuple(data_config["std"]),
                   test_resize or math.floor(height / data_config["crop_pct"]), interpolation)


def torchvision_transforms(aug, auto_augment=None, reprob=0.0, first=()):
    """(train, test) per-sample transforms of PIL images. `first`: transforms applied before both (a resize of mixed
    sizes). --auto_augment / --reprob go through timm (RandAugment / AutoAugment / AugMix policies, RandomErasing
    in pixel mode, as timm's training script)."""
    norm = T.Normalize(aug.mean, aug.std)
    if aug.kind == "cifar":
        crop = [T.RandomCrop(aug.size, padding=4), T.RandomHorizontalFlip()]
        test = [T.ToTensor(), norm]
    else:
        interpolation = T.InterpolationMode(aug.interpolation)
        crop = [T.RandomResizedCrop(aug.size, interpolation=interpolation), T.RandomHorizontalFlip()]
        test = [T.Resize(aug.resize, interpolation=interpolation), T.CenterCrop(aug.size), T.ToTensor(), norm]
    if auto_augment or reprob:
        from timm.data import create_transform  # its policy and erasing stages; the crops stay the ones above
        _, policy, final = create_transform(aug.size, is_training=True, separate=True, color_jitter=None,
                                            auto_augment=auto_augment or None, interpolation=aug.interpolation,
                                            mean=aug.mean, std=aug.std, re_prob=reprob, re_mode="pixel")
        train = [*crop, policy, final]
    else:
        train = [*crop, T.ToTensor(), norm]
    return T.Compose([*first, *train]), T.Compose([*first, *test])


def device_modes(aug):
    """(train mode, test mode, resize) of DeviceImages for an Augment."""
    return ("cifar", "test", None) if aug.kind == "cifar" else ("reference", "test_reference", aug.resize)


def device_pair(aug, train_u8, train_y, test_u8, test_y):
    """(train, test) DeviceImages of uint8 (N, 3, H, W) tensors with an Augment."""
    train_mode, test_mode, resize = device_modes(aug)
    size = aug.size if aug.kind != "cifar" else train_u8.shape[-1]
    return (DeviceImages(train_u8, train_y, train_mode, size, aug.mean, aug.std, resize),
            DeviceImages(test_u8, test_y, test_mode, size, aug.mean, aug.std, resize))


def cifar_transforms(augment, image_size, stats=(CIFAR100_MEAN, CIFAR100_STD)):
    """(train, test) torchvision transforms of --augment reference / cifar on 32x32 CIFAR images."""
    return torchvision_transforms(augment_spec(augment, image_size, 32, stats))


# ----------------------------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 (python pickles)

def cifar_root(kind, data_dir):
    """The folder that holds `cifar-10-batches-py/` or `cifar-100-python/` (accepts that folder itself too)."""
    folder = CIFAR_FILES[kind][0]
    check(data_dir is not None, f"--data_dir is required for --dataset {kind} (the folder holding {folder}/)")
    if os.path.basename(os.path.normpath(data_dir)) == folder:
        data_dir = os.path.dirname(os.path.normpath(data_dir))
    return data_dir


def _cifar_class(kind="cifar100"):
    from torchvision.datasets import CIFAR10, CIFAR100

    class CIFARFolder(CIFAR100 if kind == "cifar100" else CIFAR10):
        """torchvision's CIFAR reader without its md5 checks: the files are read in the same standard format,
        and a truncated or foreign file still fails when it is unpickled. (Hashing 180 MB at every start is slow,
        and tests use tiny files in the real format.)"""

        def _check_integrity(self):
            return all(os.path.isfile(os.path.join(self.root, self.base_folder, f))
                       for f, _ in (self.train_list if self.train else []) + self.test_list)

        def _load_meta(self):
            import pickle
            with open(os.path.join(self.root, self.base_folder, self.meta["filename"]), "rb") as f:
                self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    return CIFARFolder


def read_cifar(kind, data_dir, train, download=False, transform=None, test_only=False):
    """torchvision's CIFAR-10 / CIFAR-100 data set (train or test pickles) in `data_dir`; UserError when missing
    or damaged. The files of both splits must be there, or only the test split's (test_only)."""
    root = cifar_root(kind, data_dir)
    folder, files, meta, _ = CIFAR_FILES[kind]
    path = os.path.join(root, folder)
    if not download:
        check(os.path.isdir(data_dir), f"data directory not found: {data_dir}")
        needed = (files[-1:] if test_only else files) + [meta]
        missing = [f for f in needed if not os.path.isfile(os.path.join(path, f))]
        check(not missing, f"{'CIFAR-10' if kind == 'cifar10' else 'CIFAR-100'} not found: {path} lacks "
                           f"{', '.join(missing)} (the standard python version; pass --download to fetch it)")
    try:
        return _cifar_class(kind)(root, train=train, transform=transform, download=download)
    except Exception as e:  # corrupted pickles, failed download
        raise UserError(f"{kind} in {path} could not be loaded ({type(e).__name__}: {e})") from None


def _cifar_subset(ds, indices, transform):
    """A copy of a torchvision CIFAR data set holding only `indices`, with `transform`."""
    sub = copy.copy(ds)
    sub.data, sub.targets, sub.transform = ds.data[indices], [ds.targets[i] for i in indices], transform
    return sub


def load_cifar_task(kind, data_dir, augment, image_size, download=False, pipeline="torchvision", val_split=None,
                    data_config=None, auto_augment=None, reprob=0.0, test_resize=None):
    """CIFAR-10 or CIFAR-100 from the python pickles in `data_dir`. Its parameters are the data settings of
    lib/settings/schema.py that shape the task, given one by one so that the loader can be called without a run."""
    aug = augment_spec(augment, image_size, 32, CIFAR_STATS[kind], data_config, test_resize)
    train_tf, test_tf = torchvision_transforms(aug, auto_augment, reprob)
    train = read_cifar(kind, data_dir, True, download, train_tf)
    test = read_cifar(kind, data_dir, False, download, test_tf)
    targets = np.asarray(train.targets, dtype=np.int64)
    names, num_classes = list(train.classes), len(train.classes)
    keep = val = None
    if val_split:
        keep, val = val_indices(targets, val_split, names, f"the {kind} training set")
    test_size = (32, 32) if aug.kind == "cifar" else None
    if pipeline == "device":  # uint8 tensors in memory, augmented in batches on the training device
        to_u8 = lambda d: torch.from_numpy(np.ascontiguousarray(d.data.transpose(0, 3, 1, 2)))
        u8 = to_u8(train)
        if val is None:
            train_ds, test_ds = device_pair(aug, u8, train.targets, to_u8(test), test.targets)
            return TaskData(train_ds, test_ds, num_classes, test_ds.labels.numpy(), class_names=names,
                            test_size=test_size)
        train_ds, test_ds = device_pair(aug, u8[torch.as_tensor(keep)], targets[keep], to_u8(test), test.targets)
        return TaskData(train_ds, test_ds, num_classes, test_ds.labels.numpy(),
                        test_ds.like(u8[torch.as_tensor(val)], targets[val]),
                        targets[val], names, test_size=test_size)
    test_labels = np.asarray(test.targets, dtype=np.int64)
    if val is None:
        return TaskData(train, test, num_classes, test_labels, class_names=names, test_size=test_size)
    return TaskData(_cifar_subset(train, keep, train_tf), test, num_classes, test_labels,
                    _cifar_subset(train, val, test_tf), targets[val], names, test_size=test_size)


def load_cifar100_task(data_dir, augment, image_size, download=False, pipeline="torchvision"):
    return load_cifar_task("cifar100", data_dir, augment, image_size, download, pipeline)


# ----------------------------------------------------------------------------------------------------------------
# Hugging Face data sets and image folders

def load_source_task(srcs, augment, image_size, pipeline, cache_dir, val_split=None, data_config=None,
                     auto_augment=None, reprob=0.0, test_resize=None):
    """A task from lib.data.sources.TaskSources. Every image is checked once (cached); images keep their native size
    when all images of all splits share one, else they are resized to image_size x image_size when decoded for the
    device pipeline (the torchvision pipeline's reference / model transforms take any size; --augment cifar resizes).
    Its parameters are the data settings that shape the task, as load_cifar_task's."""
    parts = [s for s in (srcs.train, srcs.test, srcs.val) if s is not None]
    native = sources.shared_size(*[sources.scan(s, cache_dir) for s in parts])
    size = native or (image_size, image_size)
    check(augment != "cifar" or size[0] == size[1],
          f"--augment cifar needs square images; all images here are {size[1]}x{size[0]} (use --augment reference)")
    aug = augment_spec(augment, image_size, size[0], (IMAGENET_MEAN, IMAGENET_STD), data_config, test_resize)
    keep = held = None
    if val_split:
        keep, held = val_indices(srcs.train.labels, val_split, srcs.class_names, srcs.train.name)
    # the validation images: held out of training, or an existing split (--val_split_name)
    val_src, val_idx = (srcs.train, held) if held is not None else (srcs.val, None)
    test_labels = srcs.test.labels
    val_labels = None if val_src is None else val_src.labels[val_idx if val_idx is not None else slice(None)]
    test_size = size if aug.kind == "cifar" else None
    if pipeline == "device":
        train_u8 = sources.decode(srcs.train, size, cache_dir)
        train_y = srcs.train.labels
        val_u8 = None
        if val_src is srcs.train:
            val_u8, train_u8, train_y = train_u8[torch.as_tensor(held)], train_u8[torch.as_tensor(keep)], train_y[keep]
        elif val_src is not None:
            val_u8 = sources.decode(val_src, size, cache_dir)
        train, test = device_pair(aug, train_u8, train_y, sources.decode(srcs.test, size, cache_dir), test_labels)
        val = None if val_u8 is None else test.like(val_u8, val_labels)
    else:
        first = [T.Resize(size)] if aug.kind == "cifar" and native is None else []
        train_tf, test_tf = torchvision_transforms(aug, auto_augment, reprob, first)
        train = SourceImages(srcs.train, keep, train_tf, size, cache_dir)
        test = SourceImages(srcs.test, None, test_tf, size, cache_dir)
        val = None if val_src is None else SourceImages(val_src, val_idx, test_tf, size, cache_dir)
    return TaskData(train, test, srcs.num_classes, test_labels, val, val_labels, list(srcs.class_names),
                    test_size=test_size)


# ----------------------------------------------------------------------------------------------------------------
# settings and the task

def _get(cfg, key, default=None):
    """A setting that runs saved before it existed may lack."""
    value = getattr(cfg, key, default)
    return default if value is None else value


def check_settings(args):
    """Check the data flags before anything is built or written (UserError on bad input); lib.cli.parser.parse calls it
    with every default filled in, load_task again (saved settings)."""
    dataset, augment = args.dataset, args.augment
    check(dataset in AUGMENTS, f"unknown --dataset {dataset} (choose from {', '.join(AUGMENTS)})")
    check(augment in AUGMENTS[dataset],
          f"--augment {augment} is not available for {dataset} (choose from {', '.join(AUGMENTS[dataset])})")
    own = {"hf": ["dataset_name", "data_files", "image_column", "label_column", "val_split_name"],
           "imagefolder": ["train_dir", "test_dir"]}
    for name, flags in own.items():
        for flag in flags:
            check(dataset == name or _get(args, flag) is None, f"--{flag} is for --dataset {name}")
    if dataset in ("cifar10", "cifar100") and not _get(args, "download", False):
        folder = CIFAR_FILES[dataset][0]
        check(_get(args, "data_dir") is not None, f"--data_dir is required for --dataset {dataset} (the folder "
                                                  f"holding {folder}/)")
        check(os.path.isdir(args.data_dir), f"data directory not found: {args.data_dir}")
    if dataset == "hf":
        name, files = _get(args, "dataset_name"), _get(args, "data_files")
        check((name is None) != (files is None), "--dataset hf needs --dataset_name NAME_OR_PATH (a hub id or a "
                                                 "save_to_disk folder) or --data_files FILE..., one of the two")
        if files:
            sources.parse_data_files(files)
    if dataset == "imagefolder":
        for flag in ("train_dir", "test_dir"):
            path = _get(args, flag)
            check(path is not None, "--dataset imagefolder needs --train_dir and --test_dir (one sub-folder of "
                                    "images per class)")
            check(os.path.isdir(path), f"--{flag} {path}: folder not found")
    val_split = _get(args, "val_split")
    if val_split is not None:
        check(isinstance(val_split, (int, float)) and 0 < val_split < 0.5,
              f"--val_split must be in (0, 0.5), got {val_split}")
        check(_get(args, "val_split_name") is None, "--val_split and --val_split_name exclude each other")
    auto_augment, reprob = _get(args, "auto_augment"), _get(args, "reprob", 0.0)
    check(0 <= reprob <= 1, f"--reprob must be in [0, 1], got {reprob}")
    if auto_augment or reprob:
        flags = " / ".join(f for f, v in (("--auto_augment", auto_augment), ("--reprob", reprob)) if v)
        check(dataset != "digits", f"{flags}: not for --dataset digits (its own augmentation)")
        check(_get(args, "data_pipeline", "torchvision") == "torchvision",
              f"{flags} apply to the torchvision pipeline only: add --data_pipeline torchvision")
    if auto_augment:
        from timm.data import create_transform
        try:
            create_transform(32, is_training=True, auto_augment=auto_augment)
        except Exception as e:  # timm's parser asserts or raises on an unknown policy
            raise UserError(f"--auto_augment {auto_augment}: not a timm policy such as rand-m9-mstd0.5-inc1, "
                            f"augmix-m5-w4-d2 or v0 ({type(e).__name__}: {e})") from None


def model_data_config(cfg):
    """The model's data config for --augment model (lib.models.backbones.data_config)."""
    pretrained = cfg.pretrained[0] if isinstance(cfg.pretrained, (list, tuple)) else cfg.pretrained
    return data_config(cfg.arch, pretrained, cfg.image_size)  # models are built at --image_size


def load_task(cfg):
    """The fine-tuning task named by --dataset, with its augmentation and validation split. Every check runs before
    anything is returned, so a caller that writes nothing before it leaves nothing written on bad input."""
    check_settings(cfg)
    dataset, augment, image_size = cfg.dataset, cfg.augment, cfg.image_size
    pipeline = _get(cfg, "data_pipeline", "torchvision")
    val_split, val_split_name = _get(cfg, "val_split"), _get(cfg, "val_split_name")
    auto_augment, reprob = _get(cfg, "auto_augment"), _get(cfg, "reprob", 0.0)
    test_resize = _get(cfg, "test_resize")
    data_config = model_data_config(cfg) if augment == "model" else None
    identity = {}
    if dataset == "digits":
        check(test_resize is None, "--test_resize is for --augment reference or model, not digits")
        task = load_digits_task(cfg.labels_per_class, pipeline, image_size, val_split)
    elif dataset in ("cifar10", "cifar100"):
        task = load_cifar_task(dataset, cfg.data_dir, augment, image_size, _get(cfg, "download", False), pipeline,
                               val_split, data_config, auto_augment, reprob, test_resize)
    else:
        if dataset == "hf":
            srcs = sources.hf_task(_get(cfg, "dataset_name"), _get(cfg, "data_files"), _get(cfg, "image_column"),
                                   _get(cfg, "label_column"), _get(cfg, "train_split", "train"),
                                   _get(cfg, "test_split", "test"), val_split_name)
        else:
            srcs = sources.folder_task(cfg.train_dir, cfg.test_dir)
        identity["train_images"] = srcs.train.fingerprint
        task = load_source_task(srcs, augment, image_size, pipeline, _get(cfg, "cache_dir", "runs/cache"), val_split,
                                data_config, auto_augment, reprob, test_resize)
    check(task.num_classes >= 2, f"the task has {task.num_classes} class"
                                 f"{' (' + str(task.class_names[0]) + ')' if task.class_names else ''}: a classifier "
                                 f"needs at least two (an image folder holds one sub-folder per class)")
    extras = {"val_split": val_split, "val_split_name": val_split_name, "auto_augment": auto_augment,
              "reprob": reprob or None, "data_config": data_config}
    identity.update({k: v for k, v in extras.items() if v is not None})
    if identity:
        task.train_key = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:20]
    return task


# ----------------------------------------------------------------------------------------------------------------
# evaluation sets beyond the test set (out-of-distribution and shifted data)

@dataclass
class EvalPart:
    """One part of an evaluation set: name ("all" for a set of one part; "<corruption>/<severity>" for CIFAR-C),
    dataset (the images in the run's test transform: lib.data.tasks.test_loader and lib.evaluation.predict.predict_many
    work on it; its labels are -1 when there are none), labels (np.int64 in dataset order, or None: labelled=False)."""
    name: str
    dataset: Dataset
    labels: np.ndarray


@dataclass
class EvalSet:
    """An evaluation set: name (short, without slashes: "svhn", "cifar10", the folder's or data set's own name, or
    the synthetic set's), parts (a list of EvalPart: one, or one per corruption and severity for CIFAR-C), note (what
    was done to the images to fit the run's test input: "resized 32x32 -> 16x16", "converted 3 images to RGB"; or
    None)."""
    name: str
    parts: list
    note: str


SYNTHETIC = ("noise", "permuted", "flipped")
EVAL_KINDS = ("imagefolder", "hf", "cifar10", "cifar100", "svhn", "cifar-c")
EVAL_FORMS = ("imagefolder:DIR, hf:NAME_OR_PATH, cifar10:DIR, cifar100:DIR, svhn:DIR, cifar-c:DIR, noise, permuted, "
              "flipped")
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def load_eval_set(spec, cfg, labelled, task=None):
    """The evaluation set `spec` as an EvalSet (name, parts, note) in the test transform of the run whose settings
    are `cfg` (task: its already loaded TaskData, else it is loaded here); labelled: with labels (a shifted set) or
    without (an out-of-distribution set).

    spec:
      imagefolder:DIR   every image under DIR (any depth); labelled: DIR holds one sub-folder per class, the task's
                        classes (sorted folder names = the task's class names)
      hf:NAME_OR_PATH   the 'test' split of a Hugging Face data set (hub id from the local cache, save_to_disk folder),
                        columns image/img and label/fine_label
      cifar10:DIR, cifar100:DIR   the test pickles (cifar-10-batches-py/test_batch, cifar-100-python/test)
      svhn:DIR          torchvision's SVHN test file DIR/test_32x32.mat (digit 0 is label 0)
      cifar-c:DIR       CIFAR-10-C / CIFAR-100-C as published: DIR/<corruption>.npy (5 severities x N images,
                        uint8 NHWC, severity 1 first) and DIR/labels.npy; one part per corruption and severity, named
                        "<corruption>/<severity>"; labelled: as many classes as the task
      noise             uniform noise in the shape of the run's test images (as many; seed EVAL_SEED); no labels
      permuted          the run's test images with their pixel positions permuted by one fixed permutation (pixel
                        statistics kept, structure lost); no labels
      flipped           the run's test images upside down (labels: the test labels)
    Images are converted to RGB; when the run's test transform takes its images as they are (digits, --augment
    cifar), they are resized (bilinear, antialiased) to the test images' size; images of mixed sizes are resized
    to --image_size. An empty set, a set without labels asked for labels, and a labelled set whose classes differ
    from the task's are errors. One branch per kind of set reads its images; the checks after them are shared, which
    is why this function is longer than most."""
    kind, arg = check_eval_spec(spec)
    task = task if task is not None else load_task(cfg)
    cache_dir = _get(cfg, "cache_dir", "runs/cache")
    if kind in SYNTHETIC:
        check(not labelled or kind == "flipped", f"evaluation set '{kind}' has no labels: use it as an "
                                                 f"out-of-distribution set")
        return _synthetic(kind, task, labelled)
    name = _short_name(kind, arg)
    notes = []
    if kind in ("imagefolder", "hf"):
        if kind == "hf":
            src, names = sources.hf_test_set(arg, labelled)
        elif labelled:
            classes = sources.folder_classes(arg, "imagefolder:")
            src, names = sources.folder_images(arg, classes, f"evaluation set {spec}"), classes
        else:
            src, names = sources.all_images(arg, f"evaluation set {spec}"), None
        scan = sources.scan(src, cache_dir)
        native = sources.shared_size(scan)
        size = task.test_size or native or (cfg.image_size, cfg.image_size)
        if scan.converted:
            notes.append(f"converted {scan.converted} images to RGB")
        if native is None:
            notes.append(f"resized images of mixed sizes to {size[1]}x{size[0]}")
        elif native != size:
            notes.append(f"resized {native[1]}x{native[0]} -> {size[1]}x{size[0]}")
        parts = [("all", sources.decode(src, size, cache_dir), src.labels if labelled else None)]
    elif kind in ("cifar10", "cifar100"):
        ds = read_cifar(kind, arg, train=False, test_only=True)
        names = list(ds.classes)
        parts = [("all", torch.from_numpy(ds.data).permute(0, 3, 1, 2),
                  np.asarray(ds.targets, dtype=np.int64) if labelled else None)]
    elif kind == "svhn":
        images, labels = _read_svhn(arg)
        names = [str(c) for c in range(10)]
        parts = [("all", images, labels if labelled else None)]
    else:
        parts, names = _read_cifar_c(arg, labelled, task)
    out = []
    for part_name, images, labels in parts:
        check(len(images) > 0, f"evaluation set '{spec}' has no images")
        if labelled:
            _check_eval_classes(spec, labels, names, task)
        images, resized = _fit_size(images, task.test_size)
        if resized and resized not in notes:
            notes.append(resized)
        out.append(EvalPart(part_name, _like_test(task, images, labels), labels))
    return EvalSet(name, out, "; ".join(notes) or None)


def check_eval_spec(spec):
    """(kind, argument) of an evaluation-set spec, checked for its form and, for folders, that the folder exists
    (UserError otherwise): parse runs it on every --ood_dataset / --shift_dataset before anything is built."""
    check(isinstance(spec, str), f"evaluation set {spec!r}: a spec is a string (forms: {EVAL_FORMS})")
    kind, sep, arg = spec.partition(":")
    check(kind in (EVAL_KINDS if sep else SYNTHETIC), f"unknown evaluation set '{spec}' (forms: {EVAL_FORMS})")
    check(not sep or arg, f"evaluation set '{spec}': the folder or name after '{kind}:' is missing")
    if kind in ("imagefolder", "cifar10", "cifar100", "svhn", "cifar-c"):
        check(os.path.isdir(arg), f"evaluation set '{spec}': folder not found: {arg}")
    return kind, arg


def _short_name(kind, arg):
    """A set's name without slashes: the kind for the pickles and SVHN, else the folder's or data set's name."""
    if kind in ("cifar10", "cifar100", "svhn"):
        return kind
    return os.path.basename(os.path.normpath(arg)).replace(":", "_") or kind


def _read_svhn(root):
    from torchvision.datasets import SVHN

    class SVHNFolder(SVHN):
        """torchvision's SVHN reader without its md5 check (the file is read in the same format)."""

        def _check_integrity(self):
            return os.path.isfile(os.path.join(self.root, self.filename))

    check(os.path.isfile(os.path.join(root, "test_32x32.mat")), f"svhn:{root}: test_32x32.mat not found there")
    try:
        ds = SVHNFolder(root, split="test")
    except Exception as e:
        raise UserError(f"svhn:{root}: test_32x32.mat could not be read ({type(e).__name__}: {e})") from None
    return torch.from_numpy(np.ascontiguousarray(ds.data)), np.asarray(ds.labels, dtype=np.int64)


def _read_cifar_c(root, labelled, task):
    """CIFAR-10-C / CIFAR-100-C parts [(name, images, labels)], memory-mapped (a part is read when used)."""
    check(os.path.isdir(root), f"cifar-c:{root}: folder not found")
    check(os.path.isfile(os.path.join(root, "labels.npy")), f"cifar-c:{root}: labels.npy not found there")
    labels = _read_npy(os.path.join(root, "labels.npy"), f"cifar-c:{root}")
    check(labels.ndim == 1 and np.issubdtype(labels.dtype, np.integer),
          f"cifar-c:{root}: labels.npy holds {labels.dtype} {labels.shape}, not one integer label per image")
    check(len(labels) == 0 or labels.min() >= 0, f"cifar-c:{root}: labels.npy holds negative labels")
    labels = labels.astype(np.int64)
    check(len(labels) % 5 == 0 and len(labels) > 0, f"cifar-c:{root}: labels.npy holds {len(labels)} labels, not "
                                                    f"5 severities x N")
    n = len(labels) // 5
    corruptions = sorted(f[:-4] for f in os.listdir(root) if f.endswith(".npy") and f != "labels.npy")
    check(corruptions, f"cifar-c:{root}: no <corruption>.npy files there")
    parts = []
    for c in corruptions:
        arr = _read_npy(os.path.join(root, c + ".npy"), f"cifar-c:{root}", mmap_mode="c")
        check(arr.dtype == np.uint8 and arr.ndim == 4 and arr.shape[0] == len(labels) and arr.shape[3] == 3,
              f"cifar-c:{root}: {c}.npy holds {arr.dtype} {arr.shape}, not uint8 ({len(labels)}, H, W, 3)")
        for s in range(1, 6):
            part = torch.from_numpy(arr[(s - 1) * n:s * n]).permute(0, 3, 1, 2)
            parts.append((f"{c}/{s}", part, labels[(s - 1) * n:s * n] if labelled else None))
    classes = len(np.unique(labels))
    check(not labelled or classes == task.num_classes,
          f"cifar-c:{root} has {classes} classes, the task {task.num_classes}")
    return parts, CIFAR10_CLASSES if classes == 10 else None  # CIFAR-10-C: CIFAR-10's classes; -100-C: unnamed


def _read_npy(path, what, mmap_mode=None):
    """np.load of a data file (no pickles), with one line naming it when it is not a readable .npy array."""
    try:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise UserError(f"{what}: {os.path.basename(path)} is not a readable .npy array ({str(e).splitlines()[0]})") \
            from None


def _check_eval_classes(spec, labels, names, task):
    if names is not None and task.class_names is not None:
        check(list(names) == list(task.class_names), f"evaluation set '{spec}' has other classes than the task: "
                                                     f"{sources._few(names)} against {sources._few(task.class_names)}")
    check(labels.max() < task.num_classes, f"evaluation set '{spec}' has labels up to {labels.max()}, the task "
                                           f"{task.num_classes} classes")


def raw_test_images(task):
    """The run's test images before the test transform: uint8 (N, 3, H, W) (float in [0, 1] for digits with the
    torchvision pipeline)."""
    t = task.test
    if isinstance(t, DeviceImages):
        return t.images
    if isinstance(t, TensorImages):
        return t.images
    if isinstance(t, SourceImages):
        return t.raw_images()
    return torch.from_numpy(np.ascontiguousarray(t.data.transpose(0, 3, 1, 2)))  # torchvision's CIFAR


def _synthetic(kind, task, labelled):
    images = raw_test_images(task)
    g = torch.Generator().manual_seed(EVAL_SEED)
    if kind == "noise":
        images = torch.randint(0, 256, images.shape, generator=g, dtype=torch.uint8) if images.dtype == torch.uint8 \
            else torch.rand(images.shape, generator=g)
    elif kind == "permuted":
        perm = torch.randperm(images.shape[2] * images.shape[3], generator=g)
        images = images.flatten(2)[:, :, perm].reshape(images.shape)
    else:
        images = images.flip(2)
    labels = task.test_labels if labelled else None
    return EvalSet(kind, [EvalPart("all", _like_test(task, images, labels), labels)], None)


def _fit_size(images, size):
    """(images resized to size (H, W) when given and different, the note saying so)."""
    if size is None or tuple(images.shape[-2:]) == tuple(size):
        return images, None
    out = []
    for start in range(0, len(images), 1024):
        x = images[start:start + 1024].float()
        x = F.interpolate(x, size=tuple(size), mode="bilinear", antialias=True, align_corners=False)
        out.append(x.round().clamp(0, 255).to(torch.uint8) if images.dtype == torch.uint8 else x.clamp(0, 1))
    h, w = images.shape[-2:]
    return torch.cat(out), f"resized {w}x{h} -> {size[1]}x{size[0]}"


def _like_test(task, images, labels):
    """A data set of `images` (uint8, or float in [0, 1]) in the run's test transform."""
    labels = np.full(len(images), -1, dtype=np.int64) if labels is None else labels
    t = task.test
    if isinstance(t, TensorImages):
        return TensorImages(images.float() / 255 if images.dtype == torch.uint8 else images, labels, t.transform)
    if images.dtype != torch.uint8:
        images = (images * 255).round().to(torch.uint8)
    if isinstance(t, DeviceImages):
        return t.like(images, labels)
    return ArrayImages(images, labels, t.transform)


# ----------------------------------------------------------------------------------------------------------------
# loaders

def iterations_per_epoch(samples, batch_size, num_processes=1, drop_last=False):
    """Training iterations per epoch of train_loader: each process reads ceil(samples / P) samples (its
    DistributedSampler shard) in batches of batch_size / P; the last short batch counts (ceil) unless drop_last
    (floor: the reference code's Swin loader)."""
    per_process, per_batch = math.ceil(samples / num_processes), batch_size // num_processes
    return per_process // per_batch if drop_last else math.ceil(per_process / per_batch)


def train_loader(dataset, batch_size, num_processes, process_index, seed, num_workers=0, device="cpu",
                 drop_last=False):
    """A training loader whose order depends only on (seed, epoch): call `loader.sampler.set_epoch(e)` each epoch.

    Each process reads its own shard (DistributedSampler), so the loader is not passed through
    accelerator.prepare; `batch_size` is the global batch, split evenly over the processes. A DeviceImages
    data set gets a DeviceLoader, which yields batches already augmented on `device`. drop_last: leave out each
    epoch's last short batch (--drop_last); its length is iterations_per_epoch's.
    """
    check(batch_size % num_processes == 0,
          f"--batch_size {batch_size} must be divisible by the number of processes ({num_processes})")
    check(not drop_last or len(dataset) >= batch_size,
          f"--drop_last with {len(dataset)} training samples and --batch_size {batch_size} leaves no batch")
    if isinstance(dataset, DeviceImages):
        return DeviceLoader(dataset, batch_size // num_processes, num_processes, process_index, seed, device,
                            drop_last)
    sampler = DistributedSampler(dataset, num_replicas=num_processes, rank=process_index, shuffle=True,
                                 seed=seed, drop_last=False)
    return DataLoader(dataset, batch_size=batch_size // num_processes, sampler=sampler, num_workers=num_workers,
                      pin_memory=torch.cuda.is_available(), drop_last=drop_last, persistent_workers=num_workers > 0)


def test_loader(dataset, batch_size, num_workers=0):
    """The evaluation loader in dataset order; pass it through accelerator.prepare and use gather_for_metrics.
    (A DeviceImages test set is transformed on the device by lib.evaluation.predict.predict_many: no workers needed.)"""
    if isinstance(dataset, DeviceImages):
        num_workers = 0
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      pin_memory=torch.cuda.is_available())
