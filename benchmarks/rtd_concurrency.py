"""One differentiable RTD loss, forward + backward, at N=256 points and d=2048 (ResNet-50 AvgPool width, the
thesis' batch): the two directions computed concurrently (one in a worker process) against one after the other.

    python benchmarks/rtd_concurrency.py          # prints the median times and the speed-up ratio

Measured on the 2-core CPU machine: 117 ms against 192 ms, x1.64 (x1.61-1.65 over 7 runs).

Quantile-normalised distances (both clouds on the same scale). Note: with sqrt(d) normalisation and current
distances much larger than the reference's, the cur -> ref barcode has many long bars and giotto-ph's time
explodes (2.2 s at N=128 for independent noise of the features' own size); real snapshots of one trajectory stay
on model 1's scale.
"""
import torch
from _timing import compare, report

from lib.core.rtd import distance_matrix, rtd_loss

N, D = 256, 2048
torch.manual_seed(0)
ref = torch.randn(N, D)
cur = (ref + torch.randn(N, D)).requires_grad_(True)  # current features: model 1's plus drift


def step(concurrent):
    def run():
        cur.grad = None
        loss = rtd_loss(distance_matrix(ref, "quantile"), distance_matrix(cur, "quantile"), card=50,
                        variant="rtd-ae", concurrent=concurrent)
        loss.backward()
    return run


results = compare({"direction after direction": step(False), "concurrent (worker process)": step(True)},
                  reps=15, warmup=2)
report(f"RTD loss forward+backward, N={N}, d={D}, {torch.get_num_threads()} torch threads", results,
       "direction after direction")
