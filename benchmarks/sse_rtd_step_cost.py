"""Cost of one training step of SSE-RTD and SSE-MSE relative to SSE (CE only), side by side in one run.

A step = forward with taps, CE (+ the frozen model 1's forward and the AvgPool regulariser), backward, SGD step.
    python benchmarks/sse_rtd_step_cost.py            # embedded default (resnet_mini 16 px) and ResNet-50 (32 px)
    python benchmarks/sse_rtd_step_cost.py --device cuda   # ResNet-50, batch 256, 224 px, fp16 (gpu_check.sh)
Model 1's BatchNorm running statistics are calibrated first, as in a trained model: with a random model the
frozen copy's eval-mode features are on another scale, and the sqrt(d)-normalised barcode then has so many long
bars that giotto-ph needs a minute per step (see benchmarks/rtd_concurrency.py).
ResNet-50 runs at 32x32 px on this CPU (224 px is ~50x slower); on a GPU the network's share of the step grows
with resolution while RTD's (a CPU barcode on batch-size points) does not.
"overlapped" (--rtd_overlap on): both barcodes in worker processes (giotto-ph threads) while the CE backward runs,
then the RTD term's own backward. That second backward runs through the layers below the tapped one, so the overlap
saves the most for early taps (stage2) and little for AvgPool, whose backward is nearly the whole network's.
Measured on the 2-core CPU machine (2026-11-29), time of a step relative to SSE's for resnet_mini b16 / resnet_mini
b256 / ResNet-50 b128 32 px: SSE-MSE x1.26 / x1.29 / x1.26; SSE-RTD x1.80 / x3.88 / x1.34, overlapped x2.47 / x5.88 /
x2.02; SSE-RTD on stage2 x2.02 / x4.03 / x1.38, overlapped x2.41 / x5.26 / x1.57. On 2 cores the overlap is slower:
no core is idle for the barcodes while the network's backward runs, and it pays the second backward.
"pipelined" (--rtd_pipeline on, lib.core.losses.FeatureSimilarity): a step reads the barcodes its batch got during the
previous step (from a forward without gradients under the previous weights) and runs one backward; each timed call
is an epoch of --steps steps, whose first step computes its own barcodes and waits. Measured 2026-12-04 on the same
machine (`python benchmarks/sse_rtd_step_cost.py`, 6 steps per call), time relative to SSE's for resnet_mini b16 /
resnet_mini b256 / ResNet-50 b128 32 px: SSE-RTD x2.07 / x3.74 / x1.37, overlapped x2.28 / x5.43 / x2.13, pipelined
x2.04 / x4.31 / x1.65; on stage2 x1.89 / x3.70 / x1.38, overlapped x2.05 / x4.84 / x1.45, pipelined x2.44 / x4.74 /
x1.63 (the b256 rows under ~50 % foreign load; an earlier quiet run of them, `--only 0 1`: SSE-RTD x3.57, pipelined
x4.93). The pipeline cannot gain on a CPU: the barcodes take cores from the network, and the look-ahead adds a
forward. It is meant for a GPU, whose host cores are idle while the network runs.
On one H200 (2026-12-04, `--device cuda`: ResNet-50 b256 224 px fp16, 3 repetitions; SSE's step 43.6 ms): SSE-MSE
x1.40; SSE-RTD x6.90, overlapped x6.77, pipelined x6.24; stage2 x6.19 / x6.12 / x5.73. The two barcodes (giotto-ph
on the host, 8 threads each) take ~0.26 s a step, six GPU steps: hiding one GPU step cannot reach x2.
"""
import argparse

import torch
import torch.nn.functional as F
from _timing import compare, report

from lib.core.losses import Deferred, FeatureSimilarity
from lib.models.backbones import build_model
from lib.models.stages import taps
from lib.training.loop import Step


def variants(arch, batch, size, classes, device="cpu", fp16=False):
    torch.manual_seed(0)
    fmt = torch.channels_last if fp16 else torch.contiguous_format
    model = build_model(arch, classes).train().to(device, memory_format=fmt)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, classes, (batch,), device=device)
    # BatchNorm statistics of a trained model 1: eval-mode features on the train-mode scale. Exact averages
    # (momentum None), not 30 steps of momentum 0.1: their 4 % residual per layer compounds over ResNet-50's depth
    # into AvgPool distances 1.5x model 1's, where one sqrt(d)-normalised barcode at N=256 takes minutes.
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    with torch.no_grad():
        model(x)
    for m in bns:
        m.momentum = 0.1
    terms = {"SSE (CE only)": None,
             "SSE-MSE (alpha 20)": FeatureSimilarity("mse", 20.0, {"avgpool": 1.0}).set_reference(model, device),
             "SSE-RTD (alpha 0.0316, 50 bars)":
                 FeatureSimilarity("rtd", 0.0316, {"avgpool": 1.0}).set_reference(model, device),
             "SSE-RTD, overlapped": FeatureSimilarity("rtd", 0.0316, {"avgpool": 1.0}).set_reference(model, device,
                                                                                                     overlap=True),
             "SSE-RTD stage2, sequential":
                 FeatureSimilarity("rtd", 0.0316, {"stage2": 1.0}).set_reference(model, device),
             "SSE-RTD stage2, overlapped":
                 FeatureSimilarity("rtd", 0.0316, {"stage2": 1.0}).set_reference(model, device, overlap=True),
             "SSE-RTD, pipelined": FeatureSimilarity("rtd", 0.0316, {"avgpool": 1.0}).set_reference(model, device,
                                                                                                    pipeline=True),
             "SSE-RTD stage2, pipelined":
                 FeatureSimilarity("rtd", 0.0316, {"stage2": 1.0}).set_reference(model, device, pipeline=True)}
    # The current model: model 1 moved a little, as a snapshot in a cycle, and kept there (lr 0: the step does all
    # the work of an SGD step but every repetition sees the same model; a random model trained on random labels
    # drifts to features on another scale).
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(1 + DRIFT * torch.randn_like(p))
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    with torch.no_grad(), taps(model, ["avgpool"]) as cur, taps(terms["SSE-MSE (alpha 20)"].reference, ["avgpool"]) as ref:
        model(x)
        terms["SSE-MSE (alpha 20)"].reference(x)
        scale = (torch.pdist(cur["avgpool"].flatten(1).float()).mean() / torch.pdist(ref["avgpool"].flatten(1).float()).mean())
    print(f"AvgPool distances of the current model / model 1's: x{float(scale):.2f}", flush=True)
    scaler = torch.amp.GradScaler(enabled=fp16)

    def step(term):
        def run():  # STEPS steps as an epoch of lib.training.loop.fit (Trainer.train_step): a Deferred term's
            # backward follows the CE backward; a term's look-ahead (pipelined) starts on the next batch (the same x
            # here) before the backward, except at the epoch's last step
            for i in range(STEPS):
                with taps(model, ["stage2", "avgpool"]) as feats, \
                        torch.autocast(x.device.type, torch.float16, enabled=fp16):
                    logits = model(x)
                    loss = F.cross_entropy(logits, y)
                    seen = Step(x, y, logits, feats, model, step=i, peek=lambda i=i: x if i + 1 < STEPS else None)
                    value = None if term is None else term(seen)
                    if term is not None:
                        term.look_ahead(seen)
                opt.zero_grad()
                if isinstance(value, Deferred):
                    scaler.scale(loss).backward(retain_graph=True)
                    with torch.autocast(x.device.type, torch.float16, enabled=fp16):
                        value = value.result()
                    scaler.scale(value).backward()
                else:
                    scaler.scale(loss if value is None else loss + value).backward()
                scaler.step(opt)
                scaler.update()
            if x.device.type == "cuda":
                torch.cuda.synchronize()
        return run
    return {name: step(term) for name, term in terms.items()}


p = argparse.ArgumentParser()
p.add_argument("--device", default="cpu")
p.add_argument("--drift", type=float, default=0.02, help="relative noise on model 1's weights for the current model")
p.add_argument("--steps", type=int, default=6, help="steps per timed call: an epoch (the pipeline's first step waits)")
p.add_argument("--only", type=int, nargs="+", help="run only these of the device's configurations (0-based)")
p.add_argument("--smoke", action="store_true", help="resnet_mini, batch 16, 16 px, one repetition: checks that it runs")
a = p.parse_args()
DEVICE, DRIFT, STEPS = a.device, a.drift, a.steps
if DEVICE == "cpu":
    configs = [("resnet_mini", 16, 16, 10, 7, False), ("resnet_mini", 256, 16, 10, 5, False),
               ("resnet50", 128, 32, 100, 3, False)]
else:  # the paper's setting: batch 256 at 224 px
    configs = [("resnet50", 256, 224, 100, 3, True)]  # 3 repetitions: lent GPU time is short
configs = [c for i, c in enumerate(configs) if a.only is None or i in a.only]
if a.smoke:
    configs = [("resnet_mini", 16, 16, 10, 1, DEVICE == "cuda")]
for arch, batch, size, classes, reps, fp16 in configs:
    results = compare(variants(arch, batch, size, classes, DEVICE, fp16), reps=reps, warmup=1 if a.smoke else 2,
                      max_foreign=1.0 if DEVICE == "cuda" else 0.10)
    report(f"{arch}, batch {batch}, {size}x{size} px{', fp16' if fp16 else ''}, {DEVICE}: time of {STEPS} training "
           f"steps (an epoch)", results, "SSE (CE only)")
