"""CIFAR-shaped random images for the pipeline benchmarks (content does not matter for speed)."""
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
