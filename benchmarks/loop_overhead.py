"""Our training loop (lib.training.loop.fit: accelerate, schedule array, taps, resumable epochs, metrics) against a bare
PyTorch loop: same model, data, batch size, optimiser and number of steps, fp32 on this CPU.

    python benchmarks/loop_overhead.py
"""

import numpy as np
import torch
import torch.nn.functional as F
from _timing import compare, report
from torch.utils.data import DataLoader

from lib.data.tasks import load_digits_task
from lib.models.backbones import build_model
from lib.settings.schema import LoopSettings
from lib.training.loop import Member, Schedule, fit, make_accelerator

EPOCHS, BATCH = 3, 32
task = load_digits_task(60)  # 600 labelled digits: 19 steps per epoch
loop = LoopSettings(batch_size=BATCH, momentum=0.9, weight_decay=5e-4, quiet=True, channels_last="off")
acc = make_accelerator(cpu=True)
lrs_per_epoch = 0.01 * 0.5 * (1 + np.cos(np.pi * np.arange(EPOCHS) / EPOCHS))


def ours():
    torch.manual_seed(0)
    model = build_model("resnet_mini", 10)
    iters = -(-len(task.train) // BATCH)
    fit(acc, model, task.train, loop, Schedule(np.repeat(lrs_per_epoch, iters), EPOCHS),
        Member("/tmp/ens_transfer_bench_resume.pt"))
    import os
    os.remove("/tmp/ens_transfer_bench_resume.pt")


def bare():
    torch.manual_seed(0)
    model = build_model("resnet_mini", 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    loader = DataLoader(task.train, batch_size=BATCH, shuffle=True)
    for epoch in range(EPOCHS):
        for group in opt.param_groups:
            group["lr"] = lrs_per_epoch[epoch]
        model.train()
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


results = compare({"bare PyTorch loop": bare, "lib.training.loop.fit": ours}, reps=7, warmup=1)
report(f"resnet_mini on digits, {EPOCHS} epochs x 19 steps, batch {BATCH}, fp32 CPU", results, "bare PyTorch loop")
base, t = results["bare PyTorch loop"][0], results["lib.training.loop.fit"][0]
print(f"loop overhead: {100 * (t / base - 1):+.1f} %")
