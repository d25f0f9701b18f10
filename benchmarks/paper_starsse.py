"""A whole paper-size StarSSE, end to end: 5 members, phase I of 25 epochs then 4 cycles of 12 (3.65 M training
images), ResNet-50 at 224 px, batch 256, the device pipeline, on a CIFAR-100-shaped set made here (50,000 + 10,000
random uint8 32x32 images, 100 classes, written in the real CIFAR-100 format; the real set cannot be downloaded).

Prints the wall time of `scripts/starsse.py` (start-up, training, evaluation and saving), images/s over the run, and
the time outside training epochs (start-up, evaluation, saving) as a share of the wall time. Target on one H200:
under 10 minutes, and start-up plus evaluation under 5 %.

    python benchmarks/paper_starsse.py                           # gpu_check.sh: fp16 (the GPU launch configs')
    python benchmarks/paper_starsse.py --mixed_precision bf16 --compile
    python benchmarks/paper_starsse.py --smoke                   # CPU, tiny: checks that it runs
"""
import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

from _cifar_like import cifar100_files

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--mixed_precision", default="fp16")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--smoke", action="store_true", help="CPU: 512 images, resnet_mini, 2 + 1 epochs, 2 members")
    a = p.parse_args()
    n_train, n_test = (512, 128) if a.smoke else (50_000, 10_000)
    if a.smoke:
        a.mixed_precision = "no"
    flags = ["--epochs", "25", "--members", "5", "--cycle_epochs", "12", "--image_size", "224", "--batch_size", "256",
             "--mixed_precision", a.mixed_precision]
    if a.smoke:
        flags = ["--epochs", "2", "--members", "2", "--cycle_epochs", "1", "--image_size", "32", "--batch_size", "64",
                 "--arch", "resnet_mini", "--cpu", "--mixed_precision", "no"]
    with tempfile.TemporaryDirectory() as root:
        cifar100_files(root, n_train, n_test)
        out = f"{root}/starsse"
        cmd = [sys.executable, f"{REPO}/scripts/starsse.py", "--dataset", "cifar100", "--data_dir", root,
               "--pretrained", "scratch", "--data_pipeline", "device", "--quiet", "--output_dir", out,
               "--cache_dir", f"{root}/cache", *flags] + (["--compile"] if a.compile else [])
        t0 = time.time()
        subprocess.run(cmd, check=True, cwd=REPO)
        wall = time.time() - t0
        records = [json.load(open(f)) for f in sorted(glob.glob(f"{out}/member_*.json"))]
        epochs = sum(h["seconds"] for r in records for h in r["history"])
        images = sum(len(r["history"]) for r in records) * n_train
        acc = json.load(open(f"{out}/metrics.json"))["ensemble_accuracy"]
    print(f"StarSSE, {len(records)} members ({sum(len(r['history']) for r in records)} epochs, {images / 1e6:.2f} M "
          f"training images), {a.mixed_precision}{', compiled' if a.compile else ''}: {wall / 60:.1f} min wall, "
          f"{images / wall:.0f} images/s over the run; training epochs {epochs:.0f} s, outside them (start-up, "
          f"evaluation, saving) {wall - epochs:.0f} s = {100 * (wall - epochs) / wall:.1f} % of the wall time; "
          f"ensemble accuracy {acc:.2f} % (random labels: chance is 1 %)", flush=True)


if __name__ == "__main__":
    main()
