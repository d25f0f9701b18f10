"""Frozen-stage cycles (thesis section 5): time per training step and peak memory of ResNet-50 at each --freeze
level relative to full fine-tuning, side by side in one run (CPU, 64x64 px, batch 32).

    python benchmarks/freeze_epoch_time.py
    python benchmarks/freeze_epoch_time.py --device cuda --size 224 --batch 128 --fp16   # on a GPU (gpu_check.sh)
The thesis measured 0.74 / 0.60 / 0.55 of StarSSE's V100 time for stage4 / stage5 / head. An epoch is a fixed
number of such steps, so the step-time ratio is the epoch-time ratio. Training memory beyond the weights, counted
exactly: the activations autograd saves for backward (saved_tensors_hooks) plus the gradients and SGD momentum of
the trained parameters (a machine-independent stand-in for the peak; at 224 px the activations dominate).
"""
import argparse

import torch
import torch.nn.functional as F
from _timing import compare, report

from lib.core.freeze import freeze
from lib.models.backbones import build_model

LEVELS = ["none", "stage4", "stage5", "head"]
p = argparse.ArgumentParser()
p.add_argument("--device", default="cpu")
p.add_argument("--size", type=int, default=64, help="input side in pixels")
p.add_argument("--batch", type=int, default=32)
p.add_argument("--fp16", action="store_true", help="fp16 autocast and channels_last (GPU)")
a = p.parse_args()
BATCH, SIZE, DEVICE = a.batch, a.size, torch.device(a.device)
FORMAT = torch.channels_last if a.fp16 else torch.contiguous_format


def frozen_resnet50(level):
    """ResNet-50 (100 classes) frozen before `level`, in training mode on DEVICE; and its Freeze."""
    torch.manual_seed(0)
    model = build_model("resnet50", 100)
    frz = freeze(model, level)
    model.train()
    return model.to(DEVICE, memory_format=FORMAT), frz


def make_step(level):
    model, frz = frozen_resnet50(level)
    opt = torch.optim.SGD(frz.params, lr=0.01, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(BATCH, 3, SIZE, SIZE, device=DEVICE).contiguous(memory_format=FORMAT)
    y = torch.randint(0, 100, (BATCH,), device=DEVICE)
    scaler = torch.amp.GradScaler(enabled=a.fp16)

    def step():
        with torch.autocast(DEVICE.type, dtype=torch.float16, enabled=a.fp16):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()
    return step, frz.trainable_fraction


def training_memory(level):
    """MiB saved for backward during one forward, and MiB of gradients + momentum of the trained parameters."""
    model, frz = frozen_resnet50(level)
    saved = [0]

    def pack(t):
        saved[0] += t.numel() * t.element_size()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            torch.autocast(DEVICE.type, dtype=torch.float16, enabled=a.fp16):
        model(torch.randn(BATCH, 3, SIZE, SIZE, device=DEVICE).contiguous(memory_format=FORMAT))
    return saved[0] / 2**20, 2 * sum(p.numel() * p.element_size() for p in frz.params) / 2**20


if __name__ == "__main__":
    steps, fractions = {}, {}
    for level in LEVELS:
        steps[f"freeze {level}"], fractions[level] = make_step(level)
    results = compare(steps, reps=7, warmup=2)
    where = torch.cuda.get_device_name() if DEVICE.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    report(f"ResNet-50, batch {BATCH}, {SIZE}x{SIZE} px, {'fp16' if a.fp16 else 'fp32'}, {where}: time per training step",
           results, "freeze none")
    if DEVICE.type == "cuda":  # the real peak of a first training step, beyond the weights and the batch
        print("peak GPU memory of a first training step beyond weights and batch (activations, grads, momentum)")
        peaks = {}
        for lv in LEVELS:
            step, _ = make_step(lv)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            step()
            peaks[lv] = (torch.cuda.max_memory_allocated() - before) / 2**20
            del step
            print(f"  freeze {lv:7s} {peaks[lv]:7.0f} MiB   x{peaks[lv] / peaks['none']:.2f} of full fine-tuning")
    mem = {lv: training_memory(lv) for lv in LEVELS}
    full = sum(mem["none"])
    print("trainable parameters and training memory (activations saved for backward + gradients + momentum)")
    for lv in LEVELS:
        act, opt = mem[lv]
        print(f"  freeze {lv:7s} trainable {100 * fractions[lv]:5.1f} %   activations {act:6.0f} MiB + grads/momentum "
              f"{opt:5.0f} MiB   x{(act + opt) / full:.2f} of full fine-tuning")
