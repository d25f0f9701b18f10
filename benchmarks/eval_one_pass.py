"""Evaluating an ensemble: all members in ONE pass over the test set (lib.evaluation.predict.predict_many: each batch is
loaded and transformed once) against one pass per member, for 5 ResNet-18 members, with the torchvision per-sample test
pipeline (Resize + CenterCrop of 32x32 CIFAR images, here to 64 px) and with the device pipeline, on this CPU.
One pass saves (members - 1) x the data time of a pass; the script prints that time beside the totals. On a CPU
the networks dominate; on a GPU, where ResNet-50 inference runs at thousands of images/s, the data time is the
larger share.

    python benchmarks/eval_one_pass.py
"""

import numpy as np
from _cifar_like import PIL32, cifar_like
from _timing import compare, report

from lib.data.device import DeviceImages
from lib.data.tasks import cifar_transforms, test_loader
from lib.evaluation.predict import predict, predict_many
from lib.models.backbones import build_model
from lib.training.loop import make_accelerator

N, M, SIZE = 1024, 5, 64
images = cifar_like(N)
_, test_tf = cifar_transforms("reference", SIZE)


acc = make_accelerator(cpu=True)
models = [build_model("resnet18", 100) for _ in range(M)]
variants = {}
for name, ds, workers in [("torchvision", PIL32(images, test_tf), 2),
                          ("device", DeviceImages(images, np.zeros(N), "test_reference", SIZE, (0.5,) * 3, (0.25,) * 3), 0)]:
    loader = test_loader(ds, 256, workers)
    variants[f"{name}: data only, one pass"] = lambda loader=loader, ds=ds: [
        ds.transform_batch(x) if hasattr(ds, "transform_batch") else x for x, _ in loader]
    variants[f"{name}: one pass per member"] = lambda loader=loader: [predict(acc, m, loader) for m in models]
    variants[f"{name}: all members in one pass"] = lambda loader=loader: predict_many(acc, models, loader)
results = compare(variants, reps=3, warmup=1)
report(f"{M} members (resnet18), {N} test images at {SIZE} px: evaluation time", results,
       "torchvision: one pass per member")
for name in ("torchvision", "device"):
    a, b = results[f"{name}: one pass per member"][0], results[f"{name}: all members in one pass"][0]
    print(f"  {name}: one pass is x{a / b:.2f} faster than a pass per member")
