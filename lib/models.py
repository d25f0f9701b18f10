"""Models: torchvision ResNets and a CPU-sized ResNet with the same stage structure, checkpoint loading, stage taps.

Stage names (thesis figure 4.1) are used everywhere in the repo:
    stage1 = stem (conv1, bn1, relu, maxpool), stage2..stage5 = layer1..layer4, then avgpool, fc.
"""
import contextlib
import hashlib
import os
import pickle
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn as nn
import torchvision
from torchvision.models.resnet import BasicBlock

from .errors import UserError, check

STAGES = ["stage1", "stage2", "stage3", "stage4", "stage5", "avgpool", "fc"]
# the module whose output is each stage's output
_STAGE_OUTPUT_MODULE = {"stage1": "maxpool", "stage2": "layer1", "stage3": "layer2", "stage4": "layer3",
                        "stage5": "layer4", "avgpool": "avgpool", "fc": "fc"}
# the modules that make up each stage (its parameters and buffers)
STAGE_MODULES = {"stage1": ["conv1", "bn1", "relu", "maxpool"], "stage2": ["layer1"], "stage3": ["layer2"],
                 "stage4": ["layer3"], "stage5": ["layer4"], "avgpool": ["avgpool"], "fc": ["fc"]}


class MiniResNet(nn.Module):
    """A CPU-sized ResNet with torchvision's attribute names, so state dicts have the same key layout.

    3x3 stride-1 stem without max-pooling (small images), one BasicBlock per stage, widths 16-32-64-128
    (0.18 M parameters): a digits epoch takes a fraction of a second on 2 CPU cores.
    """

    def __init__(self, num_classes=1000, widths=(16, 32, 64, 128), blocks=(1, 1, 1, 1)):
        super().__init__()
        self.inplanes = widths[0]
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity()  # kept so that stage1 has the same four parts as ResNet-50's stem
        self.layer1 = self._make_layer(widths[0], blocks[0], stride=1)
        self.layer2 = self._make_layer(widths[1], blocks[1], stride=2)
        self.layer3 = self._make_layer(widths[2], blocks[2], stride=2)
        self.layer4 = self._make_layer(widths[3], blocks[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, planes, n, stride):
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, n)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


ARCHS = {
    "resnet50": lambda: torchvision.models.resnet50(weights=None),  # the paper's backbone
    "resnet18": lambda: torchvision.models.resnet18(weights=None),
    "resnet_mini": lambda: MiniResNet(),  # the embedded default (digits, CPU)
}


def build_model(arch, num_classes):
    """A randomly initialised `arch` whose head `fc` is a fresh Linear layer with `num_classes` outputs."""
    check(arch in ARCHS, f"unknown arch '{arch}' (choose from {', '.join(ARCHS)})")
    check(isinstance(num_classes, int) and num_classes > 0, f"num_classes must be a positive integer, got {num_classes}")
    model = ARCHS[arch]()
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    return model


def check_settings(args):
    """Check --arch, --pretrained and the stage names of the chosen arch before anything is built or written."""
    check(args.arch in ARCHS, f"unknown arch '{args.arch}' (choose from {', '.join(ARCHS)})")


# ----------------------------------------------------------------------------------------------------------------
# checkpoints

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".tar", ".safetensors", ".bin", ".ckpt")
# containers that hold the weights in common exports: ours, torchvision/Lightning, Swin-style
_CONTAINER_KEYS = ("model_state", "state_dict", "model", "online_network", "network", "net", "encoder", "backbone")


def read_checkpoint(path):
    """Read a checkpoint file into a flat {key: tensor} dict (not yet matched to a model)."""
    check(path is not None and os.path.isfile(path), f"checkpoint not found: {path}")
    check(str(path).endswith(CHECKPOINT_SUFFIXES),
          f"checkpoint {path}: unknown file type (expected one of {', '.join(CHECKPOINT_SUFFIXES)})")
    try:
        if str(path).endswith(".safetensors"):
            from safetensors.torch import load_file
            obj = load_file(path, device="cpu")
        else:
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True)
            except pickle.UnpicklingError as e:
                if "Unsupported global" not in str(e):
                    raise
                # exports that also pickle configs/args objects; only load files you trust
                print(f"warning: {path} holds non-tensor Python objects; loading it with full unpickling")
                obj = torch.load(path, map_location="cpu", weights_only=False)
    except UserError:
        raise
    except Exception as e:  # truncated, corrupted or not a checkpoint at all
        raise UserError(f"checkpoint {path} could not be read ({type(e).__name__}: {str(e).splitlines()[0][:200]})")
    state = _find_state_dict(obj)
    check(state is not None, f"checkpoint {path}: no state dict of tensors found "
                             f"(top-level keys: {sorted(map(str, obj))[:20] if isinstance(obj, dict) else type(obj).__name__})")
    return state


def _find_state_dict(obj, depth=0):
    """The dict of tensors inside a checkpoint: itself, or under one of the usual container keys."""
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if not isinstance(obj, dict) or depth > 3:
        return None
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return OrderedDict(obj)
    for key in _CONTAINER_KEYS:
        if key in obj:
            found = _find_state_dict(obj[key], depth + 1)
            if found is not None:
                return found
    # a dict that mixes tensors with metadata: keep the tensors
    tensors = OrderedDict((k, v) for k, v in obj.items() if isinstance(v, torch.Tensor))
    return tensors or None


def _best_prefix(ckpt_keys, model_keys):
    """The key prefix (e.g. 'module.', 'online_network.encoder.') under which most model keys are found."""
    model_keys = set(model_keys)
    counts = {}
    for k in ckpt_keys:
        for cut in [0] + [i + 1 for i, c in enumerate(k) if c == "."]:
            if k[cut:] in model_keys:
                counts[k[:cut]] = counts.get(k[:cut], 0) + 1
    if not counts:
        return None
    return max(counts, key=lambda p: (counts[p], -len(p)))


def match_state_dict(state, model, source="checkpoint"):
    """Map a checkpoint's keys onto `model`'s backbone: strip the export prefix and check every key strictly.

    The head `fc` is never taken from a checkpoint (the task has its own classes); BatchNorm's
    `num_batches_tracked` counters may be absent. Anything else missing or unexpected is an error that lists
    the keys. Keys outside the chosen prefix (projectors, predictors, target networks of SSL exports) are ignored.
    """
    model_state = model.state_dict()
    wanted = [k for k in model_state if not k.startswith("fc.")]
    prefix = _best_prefix(state.keys(), wanted)
    if prefix is None:
        raise UserError(f"{source}: unknown key layout, no key matches the model "
                        f"(first keys: {', '.join(list(state)[:5])})")
    ours = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    ours = {k: v for k, v in ours.items() if not k.startswith("fc.")}
    missing = [k for k in wanted if k not in ours and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in ours if k not in model_state]
    if missing or unexpected:
        raise UserError(f"{source}: key layout does not match the model (prefix '{prefix}'): "
                        f"missing {missing[:10]}{' ...' if len(missing) > 10 else ''} ({len(missing)} keys), "
                        f"unexpected {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''} ({len(unexpected)} keys)")
    bad_shapes = [f"{k} {tuple(v.shape)} vs {tuple(model_state[k].shape)}" for k, v in ours.items()
                  if v.shape != model_state[k].shape]
    check(not bad_shapes, f"{source}: shapes do not match the model: {bad_shapes[:5]}")
    return ours


def load_pretrained(path, arch="resnet50", num_classes=1000):
    """`arch` with the backbone weights of the checkpoint at `path` ("scratch": random) and a fresh head for
    `num_classes` (initialised from torch's global random stream: seed it first)."""
    model = build_model(arch, num_classes)
    if path != "scratch":
        state = match_state_dict(read_checkpoint(path), model, source=f"checkpoint {path}")
        model.load_state_dict(state, strict=False)  # strictness was checked in match_state_dict
    return model


def file_digest(path, chunk=1 << 20):
    """sha256 of a file: identifies a pre-trained checkpoint in phase-I cache keys."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------------------------
# stages

def stage_module(model, name):
    """The module whose output is stage `name`'s output."""
    check(name in _STAGE_OUTPUT_MODULE, f"unknown stage '{name}' (choose from {', '.join(STAGES)})")
    return getattr(model, _STAGE_OUTPUT_MODULE[name])


@contextlib.contextmanager
def taps(model, names):
    """Inside the block, `feats[name]` holds the output of each named stage for the last forward pass.

    Forward hooks only read outputs, so the model and its gradients are unchanged.
        with taps(model, ["stage5", "avgpool"]) as feats:
            logits = model(x)
        feats["avgpool"]  # (batch, 2048, 1, 1) for ResNet-50
    """
    model = getattr(model, "module", model)  # DDP / compiled wrappers
    feats, handles = {}, []
    for name in names:
        def hook(_module, _inp, out, name=name):
            feats[name] = out
        handles.append(stage_module(model, name).register_forward_hook(hook))
    try:
        yield feats
    finally:
        for h in handles:
            h.remove()


# ----------------------------------------------------------------------------------------------------------------
# frozen stages (thesis section 5)

FREEZE_CHOICES = ["none", "stage2", "stage3", "stage4", "stage5", "head"]
BN_MODES = ("eval", "train")


def frozen_modules(stage):
    """Names of the top-level modules that `--freeze stage` freezes: every stage before the named one
    ('head' freezes everything but fc; 'none' nothing)."""
    check(stage in FREEZE_CHOICES, f"unknown --freeze '{stage}' (choose from {', '.join(FREEZE_CHOICES)})")
    if stage == "none":
        return []
    upto = "fc" if stage == "head" else stage
    names = []
    for s in STAGES[:STAGES.index(upto)]:
        names += STAGE_MODULES[s]
    return names


@dataclass
class Freeze:
    """What `freeze` did to a model, as one value: the training loop optimises `params` and, when the member ends,
    calls `verify`, which fails if any tensor of `frozen` (the frozen stages' weights, and their BatchNorm buffers
    unless bn="train") is not bit-identical to its value at freezing time."""
    stage: str
    bn: str
    params: list
    frozen: dict
    trainable: int
    total: int

    @property
    def trainable_fraction(self):
        return self.trainable / self.total

    def verify(self, model, what="training"):
        state = model.state_dict()
        moved = [k for k, v in self.frozen.items() if not torch.equal(state[k].cpu(), v)]
        if moved:  # a frozen tensor moved: a bug, never a result
            raise RuntimeError(f"{what}: frozen tensors changed during training: {moved[:5]} ({len(moved)} in all)")


class _KeepsEval:
    """Mixin of the BatchNorm layers of frozen stages (bn="eval"): they stay in eval mode whatever .train() calls
    reach them (a plain model.train() in anyone's loop), so their running statistics never move."""

    def train(self, mode=True):
        return super().train(False)


_EVAL_CLASSES = {}


def _keep_eval(module):
    """Turn a BatchNorm layer (of any BatchNorm class, e.g. timm's BatchNormAct2d) into its eval-locked twin: the
    same class with _KeepsEval mixed in, so parameters, buffers, state-dict keys and forward are unchanged."""
    cls = type(module)
    if not issubclass(cls, _KeepsEval):
        if cls not in _EVAL_CLASSES:
            twin = type(f"EvalLocked{cls.__name__}", (_KeepsEval, cls), {"__module__": __name__})
            globals()[twin.__name__] = twin  # importable by name, so deep copies and pickles work
            _EVAL_CLASSES[cls] = twin
        module.__class__ = _EVAL_CLASSES[cls]
    module.train(False)


def freeze(model, stage="none", bn="eval"):
    """Freeze every stage before `stage` and return the Freeze (parameters left to train, tensors that must not
    move). Frozen: requires_grad=False (the optimizer never sees them and the frozen prefix builds no autograd
    graph) and, with bn="eval" (default), BatchNorm layers of frozen stages locked in eval mode so their running
    statistics stay fixed; bn="train" keeps updating them, as the reference code did."""
    check(bn in BN_MODES, f"--frozen_bn must be eval or train, got {bn!r}")
    names = frozen_modules(stage)
    for name in names:
        module = getattr(model, name)
        module.requires_grad_(False)
        if bn == "eval":
            for m in module.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    _keep_eval(m)
    params = [p for p in model.parameters() if p.requires_grad]
    check(params, f"--freeze {stage} leaves nothing to train")
    prefixes = tuple(f"{name}." for name in names)
    param_names = {n for n, _ in model.named_parameters()}
    frozen = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()
              if k.startswith(prefixes) and (bn == "eval" or k in param_names)}
    return Freeze(stage, bn, params, frozen, sum(p.numel() for p in params), sum(p.numel() for p in model.parameters()))


def to_sync_batchnorm(model):
    """BatchNorm -> SyncBatchNorm (statistics over the global batch under DDP), in place; the eval-locked layers of
    frozen stages stay as they are (they use fixed statistics, nothing to synchronise)."""
    for name, child in model.named_children():
        if isinstance(child, _KeepsEval):
            continue
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(model, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
        else:
            to_sync_batchnorm(child)
    return model


def from_sync_batchnorm(model):
    """SyncBatchNorm -> BatchNorm2d in place (same parameters and buffers): saved members are plain models."""
    for name, child in model.named_children():
        if isinstance(child, nn.SyncBatchNorm):
            bn = nn.BatchNorm2d(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
            bn.load_state_dict(child.state_dict())
            if child.affine:  # keep the Parameter objects (and their requires_grad)
                bn.weight, bn.bias = child.weight, child.bias
            bn.train(child.training)
            setattr(model, name, bn)
        else:
            from_sync_batchnorm(child)
    return model
