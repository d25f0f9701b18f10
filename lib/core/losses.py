"""Extra loss terms for cycles 2..M (plug into lib.training.loop.fit through Experiment.cycle(loss_terms=...,
taps=...)).

FeatureSimilarity (thesis section 4, SSE-RTD / SSE-MSE): alpha * sum over layers l of w_l * D(f_l(x; w), f_l(x; w_1)),
with model 1 a frozen copy in eval mode, run without gradients on the same augmented batch.
"""
import copy
import math
import re

import torch
import torch.nn.functional as F

from lib.core.rtd import (
    NORMALIZATIONS,
    VARIANTS,
    Barcodes,
    distance_matrix,
    rtd_barcodes_async,
    rtd_loss,
    rtd_loss_async,
)
from lib.infra.errors import check
from lib.infra.seeding import seed_for
from lib.models.backbones import STAGE_NAME, arch_stages
from lib.models.stages import feature_layer, features_only, taps

SIMILARITY_LAYERS = ["stage2", "stage3", "stage4", "stage5", "avgpool"]  # ResNets'; any model: arch_stages(arch)


def parse_layers(specs, arch=None):
    """['stage5:0.5', 'avgpool'] -> {'stage5': 0.5, 'avgpool': 1.0}; unknown names and bad weights are errors.
    Names: `arch`'s stage2..stageK and pool (alias avgpool; lib.models.backbones.arch_stages(arch).feature_layers);
    without an arch, any such name (the model checks it: lib.models.checkpoints.check_settings, taps)."""
    layers = {}
    smap = arch_stages(arch) if arch is not None else None
    for spec in specs:
        name, _, weight = spec.partition(":")
        if smap is not None:
            feature_layer(smap, name)
        else:
            check(re.fullmatch(r"stage([2-9]|[1-9][0-9]+)|pool|avgpool", name),
                  f"unknown layer '{name}' (choose from the model's stage2..stageK and pool, e.g. "
                  f"{', '.join(SIMILARITY_LAYERS)}; --list_stages shows them)")
        try:
            w = float(weight) if weight else 1.0
        except ValueError:
            w = float("nan")
        check(math.isfinite(w) and w >= 0, f"layer weight must be a non-negative number, got '{spec}'")
        layers[name] = w
    check(layers, "--layers needs at least one layer")
    return layers


class Deferred:
    """A loss term whose value arrives later (RTD's barcodes computed in worker processes): lib.training.loop.fit runs
    the backward of the other terms first, then calls result() and adds this term's backward."""

    def __init__(self, result):
        self.result = result


def frozen_copy(model, device):
    """A copy of `model` in eval mode without gradients: the reference, held once."""
    ref = copy.deepcopy(model).to(device).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


class FeatureSimilarity:
    """alpha * sum_l w_l * D(current features, model-1 features); D = differentiable RTD or MSE.

    --rtd_pipeline (set_reference(..., pipeline=True)): the RTD term of step t reads its bars (which distance-matrix
    entries are the birth and death edges, and which `card` bars are kept) from the barcodes of the same batch
    computed from the features the model had one step earlier: during step t-1, once its loss terms are built and
    before its backward, `look_ahead` runs a forward of batch t that changes nothing (lib.models.stages.features_only:
    the weights w_{t-1} of step t-1, BatchNorm on the batch's statistics) and starts the two barcodes in worker
    processes, which compute them while step t-1's backward and update and step t's forward run. Step t builds the
    loss from its own differentiable distance matrices (batch t, weights w_t) at those stale edges, adds it to the CE
    and runs one backward, waiting only if the barcodes are not ready yet. The gradient is therefore that of the
    sequential loss with the pairing of w_{t-1} instead of w_t (a bar whose edges now read death < birth counts
    |death - birth|). The first step of every epoch (of every member, and the first after a resume at an epoch's
    start) has no look-ahead: it computes its own barcodes and waits, as the sequential step does. The look-ahead
    costs one forward without gradients of the current model (model 1's forward moves to the previous step); a
    mid-epoch resume point keeps the pending barcodes (resume_state), so a resumed member is identical.
    """

    def __init__(self, similarity, alpha, layers, rtd_card=50, rtd_variant="rtd-ae", rtd_normalize="sqrt_dim",
                 reference=None):
        check(similarity in ("rtd", "mse"), f"--similarity must be rtd or mse, got {similarity!r}")
        check(math.isfinite(alpha) and alpha >= 0, f"--alpha must be a non-negative number, got {alpha}")
        check(rtd_variant in VARIANTS, f"--rtd_variant must be one of {VARIANTS}, got {rtd_variant!r}")
        check(rtd_normalize in NORMALIZATIONS, f"--rtd_normalize must be one of {NORMALIZATIONS}")
        check(rtd_card is None or rtd_card > 0, f"--rtd_card must be positive, got {rtd_card}")
        self.reference, self.similarity, self.alpha, self.layers = reference, similarity, alpha, dict(layers)
        self.card, self.variant, self.normalize = rtd_card, rtd_variant, rtd_normalize
        self.overlap = False  # set_reference(..., overlap=True): a Deferred RTD term
        self.pipeline = False  # set_reference(..., pipeline=True): bars one step stale (class docstring)
        self.ahead = None  # pipeline: (step, {layer: (reference distances, pending Barcodes)}) of the next batch
        assert all(STAGE_NAME.fullmatch(n) for n in self.layers), self.layers  # each model checks its own (taps)

    def set_reference(self, model, device, overlap=False, pipeline=False):
        """Hold a frozen copy of `model` (model 1) on `device`. overlap: compute RTD's barcodes in the background
        while the training loop runs the cross-entropy's backward (a Deferred term; lib.training.loop.fit).
        pipeline: read the bars from the barcodes started one step earlier (class docstring; overlap then plays no
        part)."""
        self.reference, self.overlap, self.pipeline = frozen_copy(model, device), overlap, pipeline
        return self

    def divergence(self, cur, ref):
        if self.similarity == "mse":
            return F.mse_loss(cur.float().flatten(1), ref.float().flatten(1))
        return rtd_loss(*self._distances(cur, ref), card=self.card, variant=self.variant)

    def __call__(self, step):
        pipelined = self.similarity == "rtd" and self.pipeline
        ahead = self._take(step.step) if pipelined else None
        if ahead is not None:  # this batch's barcodes, started one step earlier
            total = sum(w * rtd_loss(ahead[name][0], self._distance(step.features[name]), card=self.card,
                                     variant=self.variant, barcodes=ahead[name][1].result())
                        for name, w in self.layers.items())
            return self.alpha * total
        ref_feats = self._reference_features(step.x)
        if self.similarity == "rtd" and self.overlap and not pipelined:  # barcodes in the background
            parts = [(w, rtd_loss_async(*self._distances(step.features[name], ref_feats[name]), card=self.card,
                                        variant=self.variant, slots=(2 * k, 2 * k + 1)))
                     for k, (name, w) in enumerate(self.layers.items())]
            return Deferred(lambda: self.alpha * sum(w * loss() for w, loss in parts))
        total = sum(w * self.divergence(step.features[name], ref_feats[name]) for name, w in self.layers.items())
        return self.alpha * total

    def look_ahead(self, step):
        """--rtd_pipeline: start the barcodes of the epoch's next batch from its features under the current weights
        (lib.training.loop calls this once the step's loss terms are built, before its backward)."""
        if not (self.similarity == "rtd" and self.pipeline):
            return
        x = step.peek() if step.peek is not None else None
        if x is None:  # the epoch's last step: the next epoch's first step computes its own
            return
        cur_feats = features_only(step.model, x, list(self.layers))
        ref_feats = self._reference_features(x)
        ahead = {}
        for k, name in enumerate(self.layers):
            dist_ref, dist_cur = self._distances(cur_feats[name], ref_feats[name])
            ahead[name] = (dist_ref, rtd_barcodes_async(dist_ref, dist_cur, slots=(2 * k, 2 * k + 1)))
        self.ahead = (step.step + 1, ahead)

    def _take(self, step):
        """The look-ahead's {layer: (reference distances, Barcodes)} if it was started for `step`, else None (a
        look-ahead for another step is waited for and dropped, so its workers are free)."""
        ahead, self.ahead = self.ahead, None
        if ahead is None:
            return None
        for _dist_ref, pending in ahead[1].values():
            pending.result()
        return ahead[1] if ahead[0] == step else None

    def resume_state(self):
        """What a mid-epoch resume point keeps (as tensors): the look-ahead's step, reference distances and
        barcodes (waited for), or None."""
        if self.ahead is None:
            return None
        step, ahead = self.ahead
        layers = {}
        for name, (dist_ref, pending) in ahead.items():
            (e1, b1), (e2, b2) = pending.result()
            layers[name] = {"dist_ref": dist_ref.cpu(), "edges_1": torch.from_numpy(e1), "bars_1": torch.from_numpy(b1),
                            "edges_2": torch.from_numpy(e2), "bars_2": torch.from_numpy(b2)}
        return {"step": step, "layers": layers}

    def load_resume_state(self, state):
        """Continue from resume_state()'s value (None: no look-ahead pending)."""
        self._take(None)  # anything pending is waited for and dropped
        if state is None:
            return
        device = next(self.reference.parameters()).device
        self.ahead = (state["step"], {name: (part["dist_ref"].to(device), _Ready(Barcodes(
            (part["edges_1"].numpy(), part["bars_1"].numpy()), (part["edges_2"].numpy(), part["bars_2"].numpy()))))
            for name, part in state["layers"].items()})

    def _reference_features(self, x):
        """Model 1's features of batch x at the layers (without gradients)."""
        with torch.no_grad(), taps(self.reference, list(self.layers)) as ref_feats:
            self.reference(x)
        return ref_feats

    def _distances(self, cur, ref):
        """(reference, current) distance matrices of two feature batches, as RTD reads them."""
        cur, ref = cur.float().flatten(1), ref.float().flatten(1)
        return distance_matrix(ref, self.normalize), distance_matrix(cur, self.normalize)

    def _distance(self, cur):
        """The current features' distance matrix, as _distances computes it."""
        return distance_matrix(cur.float().flatten(1), self.normalize)


class _Ready:
    """Barcodes already computed, behind the interface of pending ones (result())."""

    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value


# ----------------------------------------------------------------------------------------------------------------
# diversity losses (thesis section 6): StarSSE-CE and StarSSE-WO

def compute_dtype(accelerator):
    """The dtype earlier members are held in: the mixed-precision dtype on accelerators, float32 on the CPU."""
    if accelerator.device.type == "cpu":
        return torch.float32
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)


def _draw(candidates, seed_parts):
    """One of `candidates`, drawn from a stream seeded by seed_parts (seed, member, step): resumable, and
    independent of every other random stream."""
    g = torch.Generator().manual_seed(seed_for(*seed_parts))
    return candidates[int(torch.randint(len(candidates), (1,), generator=g))]


class PredictionDiversity:
    """StarSSE-CE: -alpha * CE(f_w(x), argmax f_wj(x)), with j an earlier member drawn for each batch.

    mode "all": over every sample; "incorrect": only over the samples member j gets wrong (a batch where j is right
    everywhere contributes exactly 0; the reference produced NaN there). j is drawn from members 2..i-1, and from
    model 1 too with include_first; member 2 therefore trains without the term unless include_first.
    Member j runs in eval mode without gradients on the same augmented batch.
    """

    def __init__(self, alpha, mode, include_first=False, seed=0):
        check(math.isfinite(alpha), f"--alpha must be a finite number, got {alpha}")
        check(mode in ("all", "incorrect"), f"--mode must be all or incorrect, got {mode!r}")
        self.alpha, self.mode, self.include_first, self.seed = alpha, mode, include_first, seed
        self.members = {}  # member index -> frozen model, held once each

    def add(self, member, model, device, dtype=torch.float32):
        if member >= 2 or self.include_first:
            self.members[member] = frozen_copy(model, device).to(dtype)

    def __call__(self, step):
        candidates = sorted(j for j in self.members if j < step.member)
        if not candidates:
            return step.logits.sum() * 0.0
        j = _draw(candidates, (self.seed, step.member, step.step))
        other = self.members[j]
        with torch.no_grad():
            target = other(step.x.to(next(other.parameters()).dtype)).argmax(dim=-1)
        if self.mode == "incorrect":
            wrong = target != step.y
            if not wrong.any():
                return step.logits.sum() * 0.0
            return -self.alpha * F.cross_entropy(step.logits[wrong], target[wrong])
        return -self.alpha * F.cross_entropy(step.logits, target)


def _named_params(model):
    return getattr(model, "module", model).named_parameters()


class WeightOrthogonality:
    """StarSSE-WO: alpha * cos^2(w, w_j) over all flattened parameters, j an earlier member (2..i-1) drawn for each
    batch. The vector is built from the live parameters, so the term's gradient reaches w (the reference built it
    from detached `.data` and its term never changed training). space "delta": w - w_1 and w_j - w_1 instead of raw
    weights (fine-tunes of one checkpoint have raw cos ~ 1)."""

    def __init__(self, alpha, space="raw", seed=0):
        check(math.isfinite(alpha), f"--alpha must be a finite number, got {alpha}")
        check(space in ("raw", "delta"), f"--wo_space must be raw or delta, got {space!r}")
        self.alpha, self.space, self.seed = alpha, space, seed
        self.origin = None  # model 1's parameters (delta space)
        self.members = {}   # member index -> {name: parameter tensor}

    def add(self, member, model, device, dtype=torch.float32):
        if self.space == "delta":  # w_j - w_1 of nearby weights: in fp16 the difference would lose most of its bits
            dtype = torch.promote_types(dtype, torch.float32)
        params = {n: p.detach().to(device, dtype).clone() for n, p in model.named_parameters()}
        if member == 1:
            self.origin = params if self.space == "delta" else None
        else:
            self.members[member] = params

    def cos2(self, named_params, other):
        dot = norm_w = norm_o = 0.0
        for name, p in named_params:
            dt = torch.promote_types(p.dtype, torch.float32)  # at least float32 for the sums
            w, o = p.to(dt), other[name].to(dt)
            if self.origin is not None:
                w, o = w - self.origin[name].to(dt), o - self.origin[name].to(dt)
            dot = dot + (w * o).sum()
            norm_w = norm_w + (w * w).sum()
            norm_o = norm_o + (o * o).sum()
        return dot * dot / (norm_w * norm_o).clamp_min(1e-30)

    def __call__(self, step):
        candidates = sorted(j for j in self.members if j < step.member)
        if not candidates:
            return step.logits.sum() * 0.0
        j = _draw(candidates, (self.seed, step.member, step.step))
        return self.alpha * self.cos2(_named_params(step.model), self.members[j])
