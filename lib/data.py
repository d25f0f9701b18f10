"""Data: CIFAR-100 from a local folder (the paper's task) and the embedded default, scikit-learn's digits.

The embedded default is a transfer-learning setting made from real handwritten digits that ship inside
scikit-learn (no download): a fixed stratified test set, a few labelled images per class to fine-tune on, and
the remaining images, without their labels, as the pre-training pool for self-supervised pre-training
(scripts/pretrain.py). The three parts are disjoint.
"""
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms as T
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from .device_data import DeviceImages, DeviceLoader
from .errors import check

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
DIGITS_SIZE = 16          # 8x8 digits are upsampled once to 16x16 so that crops and strides have room
DIGITS_TEST_FRACTION = 0.3  # 540 of the 1797 images, stratified, fixed (random_state 0) for every run
AUGMENTS = {"digits": ["digits"], "cifar100": ["reference", "cifar"]}


@dataclass
class TaskData:
    train: Dataset
    test: Dataset
    num_classes: int
    test_labels: np.ndarray  # in test-loader order, for metrics from saved probabilities


class TensorImages(Dataset):
    """Images held in memory as a (N, 3, H, W) float tensor in [0, 1], with a per-sample transform."""

    def __init__(self, images, labels, transform=None):
        self.images, self.labels, self.transform = images, torch.as_tensor(labels, dtype=torch.long), transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        x = self.images[i]
        return (self.transform(x) if self.transform else x), self.labels[i]


# ----------------------------------------------------------------------------------------------------------------
# digits (embedded default)

def digits_arrays():
    """All 1797 digits as (N, 3, 16, 16) float images in [0, 1] and their labels."""
    from sklearn.datasets import load_digits
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    x = F.interpolate(x, size=DIGITS_SIZE, mode="bilinear", align_corners=False).clamp(0, 1)
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


def digits_train_transform():
    # small crops and rotations; no flips: mirrored digits are other symbols
    return T.Compose([T.RandomResizedCrop(DIGITS_SIZE, scale=(0.6, 1.0), antialias=True),
                      T.RandomRotation(10), digits_normalize()])


def load_digits_task(labels_per_class, pipeline="torchvision"):
    x, y = digits_arrays()
    finetune, test, _ = digits_splits(y, labels_per_class)
    if pipeline == "device":
        u8 = (x * 255).round().to(torch.uint8)
        norm = digits_normalize()
        train = DeviceImages(u8[finetune], y[finetune], "digits", DIGITS_SIZE, norm.mean, norm.std)
        test_ds = DeviceImages(u8[test], y[test], "test", DIGITS_SIZE, norm.mean, norm.std)
        return TaskData(train, test_ds, 10, y[test])
    train = TensorImages(x[finetune], y[finetune], digits_train_transform())
    test_ds = TensorImages(x[test], y[test], digits_normalize())
    return TaskData(train, test_ds, 10, y[test])


# ----------------------------------------------------------------------------------------------------------------
# CIFAR-100

def cifar_transforms(augment, image_size):
    if augment == "reference":  # what the reference code did: upsample to ImageNet resolution, ImageNet statistics
        norm = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
        train = T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), T.ToTensor(), norm])
        test = T.Compose([T.Resize(round(image_size * 256 / 224)), T.CenterCrop(image_size), T.ToTensor(), norm])
    else:  # "cifar": native 32x32, random crop with 4-pixel padding and flips
        norm = T.Normalize(CIFAR100_MEAN, CIFAR100_STD)
        train = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), norm])
        test = T.Compose([T.ToTensor(), norm])
    return train, test


def cifar100_root(data_dir):
    """The folder that holds `cifar-100-python/` (accepts that folder itself too)."""
    check(data_dir is not None, "--data_dir is required for --dataset cifar100 (the folder holding cifar-100-python/)")
    if os.path.basename(os.path.normpath(data_dir)) == "cifar-100-python":
        data_dir = os.path.dirname(os.path.normpath(data_dir))
    return data_dir


def _cifar100_class():
    from torchvision.datasets import CIFAR100

    class CIFAR100Folder(CIFAR100):
        """torchvision's CIFAR-100 reader without its md5 checks: the files are read in the same standard format,
        and a truncated or foreign file still fails when it is unpickled. (Hashing 180 MB at every start is slow,
        and tests use tiny files in the real format.)"""

        def _check_integrity(self):
            return all(os.path.isfile(os.path.join(self.root, self.base_folder, f))
                       for f, _ in self.train_list + self.test_list)

        def _load_meta(self):
            import pickle
            with open(os.path.join(self.root, self.base_folder, self.meta["filename"]), "rb") as f:
                self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    return CIFAR100Folder


def load_cifar100_task(data_dir, augment, image_size, download=False, pipeline="torchvision"):
    CIFAR100 = _cifar100_class()
    root = cifar100_root(data_dir)
    folder = os.path.join(root, "cifar-100-python")
    if not download:
        check(os.path.isdir(data_dir), f"data directory not found: {data_dir}")
        missing = [f for f in ("train", "test", "meta") if not os.path.isfile(os.path.join(folder, f))]
        check(not missing, f"CIFAR-100 not found: {folder} lacks {', '.join(missing)} "
                           f"(the standard python version; pass --download to fetch it)")
    train_tf, test_tf = cifar_transforms(augment, image_size)
    try:
        train = CIFAR100(root, train=True, transform=train_tf, download=download)
        test = CIFAR100(root, train=False, transform=test_tf, download=download)
    except Exception as e:  # corrupted pickles, failed download
        check(False, f"CIFAR-100 in {folder} could not be loaded ({type(e).__name__}: {e})")
    if pipeline == "device":  # uint8 tensors in memory, augmented in batches on the training device
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if augment == "reference" else (CIFAR100_MEAN, CIFAR100_STD)
        to_u8 = lambda d: torch.from_numpy(np.ascontiguousarray(d.data.transpose(0, 3, 1, 2)))
        size = image_size if augment == "reference" else 32
        train = DeviceImages(to_u8(train), train.targets, augment, size, mean, std)
        test = DeviceImages(to_u8(test), test.targets, "test_reference" if augment == "reference" else "test",
                            size, mean, std)
        return TaskData(train, test, 100, test.labels.numpy())
    return TaskData(train, test, 100, np.asarray(test.targets, dtype=np.int64))


def check_settings(args):
    """Check the data flags of --dataset before anything is built or written (UserError on bad input)."""
    check(args.dataset in AUGMENTS, f"--dataset {args.dataset} is not available yet")
    if args.dataset == "cifar100" and not args.download:
        check(args.data_dir is not None, "--data_dir is required for --dataset cifar100 (the folder holding cifar-100-python/)")
        check(os.path.isdir(args.data_dir), f"data directory not found: {args.data_dir}")


def load_task(args):
    """The fine-tuning task named by --dataset, with its augmentation."""
    check(args.augment in AUGMENTS[args.dataset],
          f"--augment {args.augment} is not available for {args.dataset} (choose from {AUGMENTS[args.dataset]})")
    pipeline = getattr(args, "data_pipeline", "torchvision")
    if args.dataset == "digits":
        return load_digits_task(args.labels_per_class, pipeline)
    return load_cifar100_task(args.data_dir, args.augment, args.image_size, args.download, pipeline)


# ----------------------------------------------------------------------------------------------------------------
# loaders

def train_loader(dataset, batch_size, num_processes, process_index, seed, num_workers=0, device="cpu"):
    """A training loader whose order depends only on (seed, epoch): call `loader.sampler.set_epoch(e)` each epoch.

    Each process reads its own shard (DistributedSampler), so the loader is not passed through
    accelerator.prepare; `batch_size` is the global batch, split evenly over the processes. A DeviceImages
    data set gets a DeviceLoader, which yields batches already augmented on `device`.
    """
    check(batch_size % num_processes == 0,
          f"--batch_size {batch_size} must be divisible by the number of processes ({num_processes})")
    if isinstance(dataset, DeviceImages):
        return DeviceLoader(dataset, batch_size // num_processes, num_processes, process_index, seed, device)
    sampler = DistributedSampler(dataset, num_replicas=num_processes, rank=process_index, shuffle=True,
                                 seed=seed, drop_last=False)
    return DataLoader(dataset, batch_size=batch_size // num_processes, sampler=sampler, num_workers=num_workers,
                      pin_memory=torch.cuda.is_available(), drop_last=False, persistent_workers=num_workers > 0)


def test_loader(dataset, batch_size, num_workers=0):
    """The evaluation loader in dataset order; pass it through accelerator.prepare and use gather_for_metrics.
    (A DeviceImages test set is transformed on the device by lib.train.predict_many: no workers needed.)"""
    if isinstance(dataset, DeviceImages):
        num_workers = 0
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      pin_memory=torch.cuda.is_available())
