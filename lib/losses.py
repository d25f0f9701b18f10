"""Extra loss terms for cycles 2..M (plug into lib.train.fit through Experiment.cycle(loss_terms=..., taps=...)).

FeatureSimilarity (thesis section 4, SSE-RTD / SSE-MSE): alpha * sum over layers l of w_l * D(f_l(x; w), f_l(x; w_1)),
with model 1 a frozen copy in eval mode, run without gradients on the same augmented batch.
"""
import copy
import math

import torch
import torch.nn.functional as F

from .errors import check
from .models import STAGES, taps
from .rtd import NORMALIZATIONS, VARIANTS, distance_matrix, rtd_loss

SIMILARITY_LAYERS = ["stage2", "stage3", "stage4", "stage5", "avgpool"]


def parse_layers(specs):
    """['stage5:0.5', 'avgpool'] -> {'stage5': 0.5, 'avgpool': 1.0}; unknown names and bad weights are errors."""
    layers = {}
    for spec in specs:
        name, _, weight = spec.partition(":")
        check(name in SIMILARITY_LAYERS, f"unknown layer '{name}' (choose from {', '.join(SIMILARITY_LAYERS)})")
        try:
            w = float(weight) if weight else 1.0
        except ValueError:
            w = float("nan")
        check(math.isfinite(w) and w >= 0, f"layer weight must be a non-negative number, got '{spec}'")
        layers[name] = w
    check(layers, "--layers needs at least one layer")
    return layers


def frozen_copy(model, device):
    """A copy of `model` in eval mode without gradients: the reference, held once."""
    ref = copy.deepcopy(model).to(device).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


class FeatureSimilarity:
    """alpha * sum_l w_l * D(current features, model-1 features); D = differentiable RTD or MSE."""

    def __init__(self, similarity, alpha, layers, rtd_card=50, rtd_variant="rtd-ae", rtd_normalize="sqrt_dim",
                 reference=None):
        check(similarity in ("rtd", "mse"), f"--similarity must be rtd or mse, got {similarity!r}")
        check(math.isfinite(alpha) and alpha >= 0, f"--alpha must be a non-negative number, got {alpha}")
        check(rtd_variant in VARIANTS, f"--rtd_variant must be one of {VARIANTS}, got {rtd_variant!r}")
        check(rtd_normalize in NORMALIZATIONS, f"--rtd_normalize must be one of {NORMALIZATIONS}")
        check(rtd_card is None or rtd_card > 0, f"--rtd_card must be positive, got {rtd_card}")
        self.reference, self.similarity, self.alpha, self.layers = reference, similarity, alpha, dict(layers)
        self.card, self.variant, self.normalize = rtd_card, rtd_variant, rtd_normalize
        assert set(self.layers) <= set(STAGES)

    def set_reference(self, model, device):
        """Hold a frozen copy of `model` (model 1) on `device`."""
        self.reference = frozen_copy(model, device)
        return self

    def divergence(self, cur, ref):
        cur, ref = cur.float().flatten(1), ref.float().flatten(1)
        if self.similarity == "mse":
            return F.mse_loss(cur, ref)
        return rtd_loss(distance_matrix(ref, self.normalize), distance_matrix(cur, self.normalize),
                        card=self.card, variant=self.variant)

    def __call__(self, step):
        with torch.no_grad(), taps(self.reference, list(self.layers)) as ref_feats:
            self.reference(step.x)
        total = sum(w * self.divergence(step.features[name], ref_feats[name]) for name, w in self.layers.items())
        return self.alpha * total
