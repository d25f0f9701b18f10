"""Augmented training images per second: the device-side pipeline (uint8 tensor in memory, RandomResizedCrop +
flip + normalisation in batches on the device) against torchvision's per-sample pipeline in DataLoader workers,
for the paper's CIFAR-100 reference augmentation (32x32 -> 224x224), batch 256, on this machine's CPU.

    python benchmarks/data_pipeline.py
    python benchmarks/data_pipeline.py --device cuda     # on a GPU machine (gpu_check.sh)
Measured on the 2-core CPU machine: 10889 against 2070 images/s (2 workers), x5.26; x4.8-5.5 over 6 runs.
On a GPU the device pipeline runs on the GPU and the gap is far larger; here both run on the same 2 cores.
"""
import argparse
import os

import numpy as np
import torch
from _cifar_like import PIL32, cifar_like
from _timing import compare, report
from torch.utils.data import DataLoader

from lib.data.device import DeviceImages, DeviceLoader
from lib.data.tasks import cifar_transforms

p = argparse.ArgumentParser()
p.add_argument("--device", default="cpu", help="where the device pipeline runs")
DEVICE = p.parse_args().device
N, BATCH, SIZE = 2048, 256, 224
images = cifar_like(N)
train_tf, _ = cifar_transforms("reference", SIZE)


def epoch(loader):
    def run():
        for x, _ in loader:
            pass
        if DEVICE.startswith("cuda"):
            torch.cuda.synchronize()
    return run


device_loader = DeviceLoader(DeviceImages(images, np.zeros(N), "reference", SIZE, (0.5,) * 3, (0.25,) * 3),
                             BATCH, 1, 0, seed=0, device=DEVICE)
variants = {"torchvision, 0 workers": epoch(DataLoader(PIL32(images, train_tf), BATCH, shuffle=True, num_workers=0))}
for w in sorted({2, os.cpu_count()}):
    variants[f"torchvision, {w} workers"] = epoch(DataLoader(PIL32(images, train_tf), BATCH, shuffle=True, num_workers=w,
                                                             persistent_workers=True))
NAME = f"device pipeline ({DEVICE})"
variants[NAME] = epoch(device_loader)
results = compare(variants, reps=3, warmup=1)
best_tv = min((t for name, (t, _) in results.items() if name.startswith("torchvision")))
report(f"{N} images, batch {BATCH}, 32 -> {SIZE} px: time per pass", results, "torchvision, 2 workers")
for name, (t, _) in results.items():
    print(f"  {name:40s} {N / t:8.0f} images/s")
print(f"device pipeline vs the best torchvision setting: x{best_tv / results[NAME][0]:.2f}")
