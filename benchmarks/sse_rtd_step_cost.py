"""Cost of one training step of SSE-RTD and SSE-MSE relative to SSE (CE only), side by side in one run.

A step = forward with taps, CE (+ the frozen model 1's forward and the AvgPool regulariser), backward, SGD step.
    python benchmarks/sse_rtd_step_cost.py            # embedded default (resnet_mini 16 px) and ResNet-50 (32 px)
Model 1's BatchNorm running statistics are calibrated first, as in a trained model: with a random model the
frozen copy's eval-mode features are on another scale, and the sqrt(d)-normalised barcode then has so many long
bars that giotto-ph needs a minute per step (see benchmarks/rtd_concurrency.py).
ResNet-50 runs at 32x32 px on this CPU (224 px is ~50x slower); on a GPU the network's share of the step grows
with resolution while RTD's (a CPU barcode on batch-size points) does not.
"""
import torch
import torch.nn.functional as F

from _timing import compare, report
from lib.losses import FeatureSimilarity
from lib.models import build_model, taps
from lib.train import Step


def variants(arch, batch, size, classes):
    torch.manual_seed(0)
    model = build_model(arch, classes).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, classes, (batch,))
    with torch.no_grad():  # BatchNorm statistics of a trained model 1: eval-mode features on the train-mode scale
        for _ in range(30):
            model(x)
    terms = {"SSE (CE only)": None,
             "SSE-MSE (alpha 20)": FeatureSimilarity("mse", 20.0, {"avgpool": 1.0}).set_reference(model, "cpu"),
             "SSE-RTD (alpha 0.0316, 50 bars)": FeatureSimilarity("rtd", 0.0316, {"avgpool": 1.0}).set_reference(model, "cpu")}

    def step(term):
        def run():
            with taps(model, ["avgpool"]) as feats:
                logits = model(x)
                loss = F.cross_entropy(logits, y)
                if term is not None:
                    loss = loss + term(Step(x, y, logits, feats, model))
            opt.zero_grad()
            loss.backward()
            opt.step()
        return run
    return {name: step(term) for name, term in terms.items()}


for arch, batch, size, classes, reps in [("resnet_mini", 16, 16, 10, 15), ("resnet_mini", 256, 16, 10, 7),
                                          ("resnet50", 128, 32, 100, 3)]:
    results = compare(variants(arch, batch, size, classes), reps=reps, warmup=1)
    report(f"{arch}, batch {batch}, {size}x{size} px: time per training step", results, "SSE (CE only)")
