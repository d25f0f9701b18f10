"""Training speed of lib.training.loop.fit under torch.compile and under each mixed precision, side by side in one run.

Each variant runs in its own process (accelerate's precision is set once per process): ResNet-50 (or --arch) on
CIFAR-100-shaped random uint8 images through the device pipeline at --size px, batch --batch, for 2 epochs of
--images images. Printed per variant: images/s in the 2nd epoch (steady state) and over both (the first includes
torch.compile's compile time and cuDNN's autotuning), the compile time (1st epoch minus 2nd), the final training loss
(a sanity check that the variant trains); then the ratios against eager fp16.

    python benchmarks/step_speed.py --device cuda              # gpu_check.sh: ResNet-50, 224 px, batch 256
    python benchmarks/step_speed.py --device cuda --arch timm/vit_small_patch16_224
    python benchmarks/step_speed.py --smoke                    # CPU, tiny: checks that every variant runs

Measured on one H200 (2026-12-04, `--device cuda --images 7680`, ResNet-50 224 px batch 256): eager fp16 4888
images/s, eager bf16 x0.91, compile fp16 x1.16 (53 s to compile), compile bf16 x1.24 (45 s).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

VARIANTS = {  # name: (mixed precision, compile)
    "eager fp16": ("fp16", False),
    "eager bf16": ("bf16", False),
    "compile fp16": ("fp16", True),
    "compile bf16": ("bf16", True),
}


def one(a):
    """Run one variant in this process and print its JSON line."""
    from lib.data.device import DeviceImages
    from lib.models.backbones import build_model
    from lib.settings.schema import LoopSettings
    from lib.training.loop import Member, Schedule, fit, make_accelerator
    precision, compiled = VARIANTS[a.variant]
    cpu = a.device == "cpu"
    acc = make_accelerator(cpu=cpu, mixed_precision="no" if cpu and precision == "fp16" else precision)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (a.images, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 100, (a.images,), generator=g)
    train = DeviceImages(images, labels, "reference", a.size, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    loop = LoopSettings(batch_size=a.batch, momentum=0.9, weight_decay=1e-4, quiet=True, compile=compiled,
                        compile_backend="eager" if cpu else "inductor")
    iters = -(-a.images // a.batch)
    torch.manual_seed(0)
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        _, history, _ = fit(acc, build_model(a.arch, 100, image_size=a.size), train, loop,
                            Schedule(np.full(2 * iters, 0.01), 2), Member(os.path.join(tmp, "resume.pt")))
    if acc.device.type == "cuda":
        torch.cuda.synchronize()
    print(json.dumps({"variant": a.variant, "steady": a.images / history[1]["seconds"],
                      "overall": 2 * a.images / (time.time() - t0),
                      "compile_seconds": history[0]["seconds"] - history[1]["seconds"],
                      "loss": history[-1]["loss"], "precision": acc.mixed_precision}), flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda")
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--images", type=int, default=12800, help="images per epoch")
    p.add_argument("--smoke", action="store_true", help="CPU, resnet_mini, 16 px, 64 images")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS), help="run only these")
    p.add_argument("--variant", choices=list(VARIANTS), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.smoke:
        a.device, a.arch, a.size, a.batch, a.images = "cpu", "resnet_mini", 16, 16, 64
    if a.variant:
        return one(a)
    if a.device == "cuda":
        print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}: {a.arch}, {a.size} px, batch {a.batch}, "
              f"{a.images} images per epoch, device pipeline, channels_last", flush=True)
    results, failed = {}, False
    for name in a.variants:
        if a.smoke and "bf16" in name:
            continue  # bf16 is emulated on this CPU: tens of times slower, no information
        cmd = [sys.executable, __file__, "--device", a.device, "--arch", a.arch, "--size", str(a.size), "--batch",
               str(a.batch), "--images", str(a.images), "--variant", name]
        r = subprocess.run(cmd, capture_output=True, text=True)
        line = next((ln for ln in r.stdout.splitlines() if ln.startswith("{")), None)
        if r.returncode != 0 or line is None:
            print(f"  {name:14s} FAILED: {(r.stderr.strip().splitlines() or ['?'])[-1]}", flush=True)
            failed = True
            continue
        results[name] = json.loads(line)
        res = results[name]
        print(f"  {name:14s} {res['steady']:8.0f} images/s steady, {res['overall']:8.0f} over both epochs, "
              f"compile/warm-up {res['compile_seconds']:6.1f} s, last loss {res['loss']:.3f}", flush=True)
    base = results.get("eager fp16")
    if base:
        for name, res in results.items():
            print(f"  {name:14s} x{res['steady'] / base['steady']:.2f} steady, x{res['overall'] / base['overall']:.2f} "
                  f"with compile time (vs eager fp16)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
