"""GPU check (about 2 minutes on one H100/H200): ResNet-50 fine-tuning throughput at 224 px with fp16 autocast and
channels_last, our loop (lib.training.loop.fit) against a bare PyTorch loop on the same device-side data, and the wall
time of a short StarSSE run through scripts/starsse.py on CIFAR-100-format data.

    bash benchmarks/gpu_check.sh              # on a GPU machine
    python benchmarks/gpu_check.py --smoke    # a few steps at 32 px on the CPU: checks that it runs
Data are random images written in the real CIFAR-100 format (nothing is downloaded).
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from _cifar_like import cifar100_files  # noqa: E402

from lib.data.tasks import load_cifar100_task  # noqa: E402
from lib.models.backbones import build_model  # noqa: E402
from lib.settings.schema import LoopSettings  # noqa: E402
from lib.training.loop import Member, Schedule, fit, make_accelerator  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--smoke", action="store_true")
a = p.parse_args()
SIZE, BATCH, STEPS, N = (32, 16, 3, 64) if a.smoke else (224, 256, 60, 16384)
root = tempfile.mkdtemp()
cifar100_files(root, N, N // 4)

mp = "no" if a.smoke else "fp16"
loop = LoopSettings(batch_size=BATCH, momentum=0.9, weight_decay=1e-4, quiet=True)
acc = make_accelerator(cpu=a.smoke, mixed_precision=mp)
task = load_cifar100_task(root, "reference", SIZE, pipeline="device")
device = acc.device
print(f"device: {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}, {SIZE} px, batch {BATCH}, "
      f"mixed precision {acc.mixed_precision}", flush=True)


def sync():
    if device.type == "cuda":
        torch.cuda.synchronize()


def bare(steps):
    from lib.data.device import DeviceLoader
    torch.manual_seed(0)
    model = build_model("resnet50", 100).to(device, memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    scaler = torch.amp.GradScaler(enabled=mp == "fp16")
    loader = DeviceLoader(task.train, BATCH, 1, 0, 0, device)
    done, t0 = 0, None
    while done < steps:
        for x, y in loader:
            if done == 2:  # after warm-up
                sync()
                t0 = time.time()
            with torch.autocast(device.type, dtype=torch.float16, enabled=mp == "fp16"):
                loss = F.cross_entropy(model(x.contiguous(memory_format=torch.channels_last)), y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            done += 1
            if done == steps:
                break
    sync()
    return (steps - 2) * BATCH / (time.time() - t0)


def ours(epochs=2):
    """images/s of lib.training.loop.fit's last epoch (its end-of-epoch checkpoint included), and over all epochs."""
    torch.manual_seed(0)
    iters = -(-N // BATCH)
    t0 = time.time()
    _, history, _ = fit(acc, build_model("resnet50", 100), task.train, loop,
                        Schedule(np.full(epochs * iters, 0.05), epochs), Member(os.path.join(root, "resume.pt")))
    sync()
    return N / history[-1]["seconds"], epochs * N / (time.time() - t0)


b = bare(STEPS)
print(f"bare loop (steps 3..{STEPS}): {b:.0f} images/s", flush=True)
last, overall = ours()
print(f"lib.training.loop.fit: {last:.0f} images/s in its 2nd epoch (with its checkpoint), x{last / b:.2f} of the bare loop; "
      f"{overall:.0f} images/s over both epochs (warm-up included)", flush=True)
cmd = [sys.executable, "scripts/starsse.py", "--dataset", "cifar100", "--data_dir", root, "--pretrained", "scratch",
       "--epochs", "1", "--members", "2", "--cycle_epochs", "1", "--image_size", str(SIZE), "--batch_size", str(BATCH),
       "--quiet", "--output_dir", f"{root}/starsse", "--cache_dir", f"{root}/cache"] + (["--cpu"] if a.smoke else [])
t0 = time.time()
subprocess.run(cmd, check=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
print(f"StarSSE, phase I of 1 epoch + 1 cycle of 1 epoch on {N} images: {time.time() - t0:.0f} s wall", flush=True)
