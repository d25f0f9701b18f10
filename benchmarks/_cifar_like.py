"""CIFAR-shaped random images for the pipeline benchmarks (content does not matter for speed)."""
import os
import pickle

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset


def cifar_like(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)


class PIL32(Dataset):
    """What torchvision's CIFAR100 data set does per sample: a 32x32 PIL image through a transform."""

    def __init__(self, images, transform):
        self.arr, self.transform = images.permute(0, 2, 3, 1).numpy(), transform

    def __len__(self):
        return len(self.arr)

    def __getitem__(self, k):
        return self.transform(Image.fromarray(self.arr[k])), 0


def cifar100_files(root, n_train, n_test, seed=0):
    """Random uint8 images and labels written as CIFAR-100's python files (root/cifar-100-python/{train,test,meta}),
    so `--dataset cifar100 --data_dir root` reads them like the real set."""
    rng = np.random.RandomState(seed)
    os.makedirs(f"{root}/cifar-100-python", exist_ok=True)
    for name, n in (("train", n_train), ("test", n_test)):
        with open(f"{root}/cifar-100-python/{name}", "wb") as f:
            pickle.dump({"data": rng.randint(0, 256, (n, 3072), dtype=np.uint8),
                         "fine_labels": list(rng.randint(0, 100, n))}, f)
    with open(f"{root}/cifar-100-python/meta", "wb") as f:
        pickle.dump({"fine_label_names": [str(i) for i in range(100)]}, f)
