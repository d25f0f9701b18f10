"""Frozen-stage cycles (thesis section 5): time per training step and peak memory of ResNet-50 at each --freeze
level relative to full fine-tuning, side by side in one run (CPU, 64x64 px, batch 32).

    python benchmarks/freeze_epoch_time.py
The thesis measured 0.74 / 0.60 / 0.55 of StarSSE's V100 time for stage4 / stage5 / head. An epoch is a fixed
number of such steps, so the step-time ratio is the epoch-time ratio. Training memory beyond the weights, counted
exactly: the activations autograd saves for backward (saved_tensors_hooks) plus the gradients and SGD momentum of
the trained parameters (a machine-independent stand-in for the peak; at 224 px the activations dominate).
"""
import torch
import torch.nn.functional as F

from _timing import compare, report
from lib.models import build_model, freeze, set_train_mode, trainable_fraction

LEVELS = ["none", "stage4", "stage5", "head"]
BATCH, SIZE = 32, 64


def make_step(level):
    torch.manual_seed(0)
    model = build_model("resnet50", 100)
    params = freeze(model, level)
    set_train_mode(model)
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4)
    x, y = torch.randn(BATCH, 3, SIZE, SIZE), torch.randint(0, 100, (BATCH,))

    def step():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step, trainable_fraction(model)


def training_memory(level):
    """MiB saved for backward during one forward, and MiB of gradients + momentum of the trained parameters."""
    torch.manual_seed(0)
    model = build_model("resnet50", 100)
    params = freeze(model, level)
    set_train_mode(model)
    saved = [0]

    def pack(t):
        saved[0] += t.numel() * t.element_size()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(torch.randn(BATCH, 3, SIZE, SIZE))
    return saved[0] / 2**20, 2 * sum(p.numel() * p.element_size() for p in params) / 2**20


if __name__ == "__main__":
    steps, fractions = {}, {}
    for level in LEVELS:
        steps[f"freeze {level}"], fractions[level] = make_step(level)
    results = compare(steps, reps=7, warmup=2)
    report(f"ResNet-50, batch {BATCH}, {SIZE}x{SIZE} px, {torch.get_num_threads()} threads: time per training step",
           results, "freeze none")
    mem = {lv: training_memory(lv) for lv in LEVELS}
    full = sum(mem["none"])
    print("trainable parameters and training memory (activations saved for backward + gradients + momentum)")
    for lv in LEVELS:
        act, opt = mem[lv]
        print(f"  freeze {lv:7s} trainable {100 * fractions[lv]:5.1f} %   activations {act:6.0f} MiB + grads/momentum "
              f"{opt:5.0f} MiB   x{(act + opt) / full:.2f} of full fine-tuning")
