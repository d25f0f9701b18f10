"""Backbones: every architecture --arch can name, built with a fresh head for the task, and its stages.

    resnet_mini                      the embedded default's CPU-sized ResNet (torchvision's key names)
    resnet50, convnext_tiny, ...     any torchvision classification model (torchvision.models.list_models())
    timm/<name>[.<tag>]              any timm model (timm.list_models()), e.g. timm/swin_tiny_patch4_window7_224

Stages (thesis figure 4.1, generalised). Every model is split, in module order, into consecutive parts:
    stage1..stageK   timm: one per entry of the model's feature_info (stage k ends with the module of entry k);
                     torchvision: runs of modules at one resolution; ResNets (torchvision's and resnet_mini):
                     stage1 = stem (conv1, bn1, relu, maxpool), stage2..stage5 = layer1..layer4, as in the thesis
    pool             from the last stage to the classifier (global pooling, final norms); its output, the pooled
                     features, is the classifier's input. ResNets call it avgpool (the avgpool module's output,
                     (B, C, 1, 1), as ever); every other model pool ((B, C): the head's input). Alias: avgpool = pool.
    head             the classifier layer, replaced for the task's classes. ResNets call it fc. Alias: fc = head.
Parameters that belong to no module of the split (ViT's cls_token and pos_embed) count as stage1.
"""
import dataclasses
import difflib
import functools
import re
from dataclasses import dataclass

import torch
import torch.nn as nn
import torchvision
from torchvision.models.resnet import BasicBlock

from lib.infra.errors import UserError, check

TIMM = "timm/"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
PROBE_SIZE = 224  # torchvision models are split at this input size: ImageNet's, where every stage is a real map


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


# ----------------------------------------------------------------------------------------------------------------
# which archs exist

def timm_module():
    try:
        import timm
    except ImportError:  # it is in requirements.txt; a trimmed environment gets one line, not a traceback
        raise UserError("timm/<name> archs need the timm package (pip install -r requirements.txt)") from None
    return timm


@functools.lru_cache(maxsize=None)
def torchvision_archs():
    return tuple(torchvision.models.list_models(module=torchvision.models))


def _did_you_mean(name, candidates, prefix=""):
    close = difflib.get_close_matches(name, candidates, n=3)
    return f"; did you mean {', '.join(prefix + c for c in close)}?" if close else ""


def arch_family(arch):
    """'resnet_mini', 'torchvision' or 'timm' for a valid --arch; UserError (one line, with close names) otherwise."""
    check(isinstance(arch, str) and arch != "", "--arch is empty")
    if arch == "resnet_mini":
        return "resnet_mini"
    if arch.startswith(TIMM):
        timm, name = timm_module(), arch[len(TIMM):]
        if not timm.is_model(name):
            raise UserError(f"unknown arch '{arch}': timm has no model '{name}' (timm.list_models() lists them"
                            f"{_did_you_mean(name, timm.list_models(), TIMM)})")
        try:
            timm.models.get_pretrained_cfg(name)  # an invalid .tag fails here
        except RuntimeError as e:
            raise UserError(f"unknown arch '{arch}': {e}") from None
        return "timm"
    if arch in torchvision_archs():
        return "torchvision"
    raise UserError(f"unknown arch '{arch}' (choose a torchvision classification model such as resnet50 or "
                    f"convnext_tiny, timm/<name> for a timm model such as timm/vit_small_patch16_224, or resnet_mini"
                    f"{_did_you_mean(arch, list(torchvision_archs()) + ['resnet_mini'])})")


def timm_name(arch):
    return arch[len(TIMM):]


# ----------------------------------------------------------------------------------------------------------------
# building

def library_model(arch, image_size=None, drop_path=0.0, num_classes=1000, **timm_kwargs):
    """The model as its library builds it: torchvision's with 1000 classes (build_model replaces its head, so that
    a ResNet draws the same random numbers as it always did), timm's with `num_classes` (timm_kwargs: more
    timm.create_model arguments, e.g. pretrained=True)."""
    family = arch_family(arch)
    drop_path = float(drop_path or 0.0)
    if family == "resnet_mini":
        check(drop_path == 0, "--drop_path: resnet_mini has no stochastic depth (use a timm or torchvision model "
                              "that has, e.g. timm/swin_tiny_patch4_window7_224 or convnext_tiny)")
        return MiniResNet()
    if family == "torchvision":
        kw = {}
        if arch.startswith("vit_") and image_size:
            kw["image_size"] = image_size  # a fixed input size: the position embedding is built for it
        if arch.startswith("maxvit") and image_size:
            kw["input_size"] = (image_size, image_size)
        if arch in ("googlenet", "inception_v3"):
            kw.update(aux_logits=False, init_weights=True)  # the auxiliary classifiers only serve ImageNet training
        if drop_path:
            kw["stochastic_depth_prob"] = drop_path
        try:
            return torchvision.models.get_model(arch, weights=None, **kw)
        except TypeError as e:
            if "stochastic_depth_prob" in str(e):
                raise UserError(f"--drop_path: torchvision's {arch} has no stochastic depth") from None
            raise
        except (AssertionError, ValueError) as e:
            raise UserError(f"{arch} cannot be built for --image_size {image_size}: {e}") from None
    timm, name = timm_module(), timm_name(arch)
    kw = dict(num_classes=num_classes, **timm_kwargs)
    cfg = timm.models.get_pretrained_cfg(name)
    if image_size and cfg is not None and cfg.fixed_input_size:
        kw["img_size"] = image_size  # ViT, Swin, ...: position embeddings and windows are built for one size
    if drop_path:
        kw["drop_path_rate"] = drop_path
    try:
        return timm.create_model(name, **kw)
    except TypeError as e:
        if "drop_path_rate" in str(e):
            raise UserError(f"--drop_path: {arch} has no drop_path_rate") from None
        raise
    except (AssertionError, ValueError) as e:
        raise UserError(f"{arch} cannot be built for --image_size {image_size}: {e}") from None


def _set_submodule(model, path, module):
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, module)


def _fresh_head(old, num_classes):
    """A new classifier layer like `old` with num_classes outputs (PyTorch's default initialisation, as the
    reference code's fresh nn.Linear)."""
    if isinstance(old, nn.Conv2d):  # SqueezeNet's 1x1 convolution classifier
        return nn.Conv2d(old.in_channels, num_classes, kernel_size=old.kernel_size, stride=old.stride)
    return nn.Linear(old.in_features, num_classes)


def build_model(arch, num_classes, image_size=None, drop_path=0.0):
    """A randomly initialised `arch` with a fresh head for `num_classes`, initialised from torch's global random
    stream (seed it first). resnet_mini and torchvision's ResNets draw exactly the random numbers they always did
    (the library's model with 1000 classes, then a new nn.Linear head). Models with a fixed input size (ViT, Swin)
    are built for `image_size` (default: the model's own); `drop_path`: stochastic depth (timm's drop_path_rate,
    torchvision's stochastic_depth_prob; 0 keeps the library's default)."""
    check(isinstance(num_classes, int) and num_classes > 0, f"num_classes must be a positive integer, got {num_classes}")
    smap = arch_stages(arch)  # checks the arch; draws no random number
    model = library_model(arch, image_size, drop_path, num_classes)
    if arch_family(arch) != "timm":  # timm builds its head for num_classes itself
        _set_submodule(model, smap.head_module, _fresh_head(model.get_submodule(smap.head_module), num_classes))
    model._stage_map = smap
    return model


def meta_model(arch, num_classes=10, image_size=None, drop_path=0.0):
    """`arch` without memory or compute (on the meta device; on the CPU for the few models that cannot be built
    there, e.g. RegNet): for key layouts, shapes and parameter counts. Draws no random number."""
    with torch.random.fork_rng(devices=[]):
        try:
            with torch.device("meta"):
                return build_model(arch, num_classes, image_size, drop_path)
        except UserError:
            raise
        except Exception:
            return build_model(arch, num_classes, image_size, drop_path)


PROBE_SIZES = (8, 16, 24, 32, 48, 64, 96, 112, 128, 160, 192, 224, 256, 288, 320, 384, 448, 512)


def check_input_size(arch, image_size, drop_path=0.0):
    """One forward pass on the meta device at `image_size` (no memory, no compute): a model that cannot take it (a
    kernel larger than a feature map, a fixed-size ViT) gives one line naming the smallest size in PROBE_SIZES that
    works, before anything is built or written."""
    model = meta_model(arch, 10, image_size, drop_path)

    def fits(size, m):
        try:
            _probe(m, size)
            return None
        except Exception as e:  # torch's shape checks raise RuntimeError, timm's asserts AssertionError
            return str(e).splitlines()[0][:160] or type(e).__name__
    why = fits(image_size, model)
    if why is None:
        return
    smallest = next((s for s in PROBE_SIZES if s > image_size and fits(s, meta_model(arch, 10, s, drop_path)) is None),
                    None)
    raise UserError(f"--arch {arch} cannot take {image_size} px inputs ({why}); "
                    + (f"the smallest --image_size that works is {smallest}" if smallest else
                       f"none of {PROBE_SIZES[0]}-{PROBE_SIZES[-1]} px works either"))


# ----------------------------------------------------------------------------------------------------------------
# stages

RESNET_STAGES = ["stage1", "stage2", "stage3", "stage4", "stage5", "avgpool", "fc"]
# the modules that make up each stage (its parameters and buffers)
RESNET_STAGE_MODULES = {"stage1": ["conv1", "bn1", "relu", "maxpool"], "stage2": ["layer1"], "stage3": ["layer2"],
                        "stage4": ["layer3"], "stage5": ["layer4"], "avgpool": ["avgpool"], "fc": ["fc"]}
# the module whose output is each stage's output
_RESNET_OUTPUTS = {"stage1": "maxpool", "stage2": "layer1", "stage3": "layer2", "stage4": "layer3",
                   "stage5": "layer4", "avgpool": "avgpool", "fc": "fc"}
STAGE_NAME = re.compile(r"stage[1-9][0-9]*|pool|avgpool|head|fc")


@dataclass(frozen=True)
class StageMap:
    """How one architecture splits into stage1..stageK, pool and head (module paths only: it fits every instance).

    parts: module path -> part; a parameter or buffer belongs to the part of its longest module-path prefix, else
    to stage1. outputs: stage -> the module whose output is that stage's output. pool_module: the module whose
    output is the pooled features (ResNets' avgpool), or None: the head's input."""
    label: str
    stages: tuple
    parts: dict
    outputs: dict
    pool: str
    head: str
    head_module: str
    pool_module: str = None
    pool_has_params: bool = False

    @property
    def order(self):
        return self.stages + (self.pool, self.head)

    @property
    def freeze_choices(self):
        """--freeze values: none, stage2..stageK (freeze every stage before it), pool when it has parameters of its
        own (ViT/Swin/ConvNeXt final norms), head (train only the classifier)."""
        return ["none", *self.stages[1:], *(["pool"] if self.pool_has_params else []), "head"]

    @property
    def feature_layers(self):
        """Stages whose outputs the similarity regularisers and the representation analysis compare."""
        return list(self.stages[1:]) + [self.pool]

    def resolve(self, name):
        """The part a stage name means (aliases: pool = avgpool, head = fc), or None."""
        if name in self.order:
            return name
        return {"pool": self.pool, "avgpool": self.pool, "head": self.head, "fc": self.head}.get(name)

    def part_of(self, key):
        """The part a parameter, buffer or module path belongs to."""
        path = key
        while path not in self.parts:
            if "." not in path:
                return self.stages[0]
            path = path.rpartition(".")[0]
        return self.parts[path]

    def frozen_parts(self, stage):
        """The parts --freeze `stage` freezes: every part before it."""
        part = "none" if stage == "none" else self.resolve(stage)
        return set() if part == "none" else set(self.order[:self.order.index(part)])


RESNET_MAP = StageMap("ResNet", tuple(RESNET_STAGES[:5]),
                      {m: s for s, mods in RESNET_STAGE_MODULES.items() for m in mods},
                      {s: _RESNET_OUTPUTS[s] for s in RESNET_STAGES}, "avgpool", "fc", "fc", pool_module="avgpool")


def _with_params(smap, model):
    pool_params = any(smap.part_of(n) == smap.pool for n, _ in model.named_parameters())
    return StageMap(**{**smap.__dict__, "pool_has_params": pool_params})


def _units(model, special, expand_top_containers):
    """The model as a list of module paths in registration (= forward) order: children, opened up around the
    `special` modules (feature-info modules, the classifier) and, for torchvision, top-level Sequentials/ModuleLists
    (features, layers, trunk_output, blocks)."""
    out = []

    def walk(module, prefix):
        for name, child in module.named_children():
            path = prefix + name
            if path in special:
                out.append(path)
            elif any(s.startswith(path + ".") for s in special) or (
                    expand_top_containers and not prefix and isinstance(child, (nn.Sequential, nn.ModuleList))):
                walk(child, path + ".")
            else:
                out.append(path)
    walk(model, "")
    return out


def _paths_of(model, modules):
    ids = {id(m) for m in modules}
    return [n for n, m in model.named_modules() if id(m) in ids]


def _timm_map(model, label):
    """timm: stage k ends with feature_info entry k's module; after the last one, pool; the classifier, head."""
    feats = list(dict.fromkeys(f["module"] for f in model.feature_info))
    clf = model.get_classifier()
    heads = _paths_of(model, clf if isinstance(clf, (tuple, list)) else [clf])
    check(heads and all(isinstance(model.get_submodule(h), (nn.Linear, nn.Conv2d)) for h in heads),
          f"{label}: no classifier layer found (get_classifier() gives {type(clf).__name__})")
    parts, outputs, k, after_head = {}, {}, 0, False
    for u in _units(model, set(feats) | set(heads), expand_top_containers=False):
        if u in heads or after_head:  # units after the classifier (a Flatten) go with it
            parts[u], after_head = "head", True
        elif k == len(feats):
            parts[u] = "pool"
        else:
            parts[u] = f"stage{k + 1}"
            if u == feats[k]:
                outputs[parts[u]], k = u, k + 1
    check(k == len(feats), f"{label}: the feature_info modules are not in module order ({feats})")
    return StageMap(label, tuple(f"stage{i + 1}" for i in range(k)), parts, outputs, "pool", "head", heads[0])


def _shape(out):
    if isinstance(out, (tuple, list)):
        out = next((o for o in out if isinstance(o, torch.Tensor)), None)
    return tuple(out.shape) if isinstance(out, torch.Tensor) else None


def _probe(model, size, paths=(), pre_paths=()):
    """{path: output shape} of the given modules (and {path: input shape} of pre_paths) for one forward pass of a
    (1, 3, size, size) zero image, in eval mode and without gradients; the model is left as it was."""
    shapes, handles = {}, []

    def record(key, value):  # hooks return None: a value would replace the module's input or output
        shapes.setdefault(key, _shape(value))
    for p in paths:
        handles.append(model.get_submodule(p).register_forward_hook(lambda _m, _i, o, p=p: record(p, o)))
    for p in pre_paths:
        handles.append(model.get_submodule(p).register_forward_pre_hook(lambda _m, i, p=p: record(("in", p), i)))
    modes = {m: m.training for m in model.modules()}
    param = next(model.parameters(), None)
    try:
        model.eval()
        with torch.no_grad():
            logits = model(torch.zeros(1, 3, size, size, device=param.device if param is not None else "cpu"))
        shapes[("out", "")] = _shape(logits)
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
    return shapes


def _resolution(shape):
    """What a module's output is: ('map', H) for a spatial map (NCHW or NHWC), ('tokens', N) for a token
    sequence, 'pooled' for a vector per image (or a 1x1 map), None when it did not run."""
    if shape is None:
        return None
    if len(shape) == 4:
        side = shape[2] if shape[2] == shape[3] else shape[1] if shape[1] == shape[2] else (shape[2], shape[3])
        return "pooled" if side == 1 else ("map", side)
    if len(shape) == 3:
        return ("tokens", shape[1])
    return "pooled"


def _torchvision_map(model, label):
    """torchvision: the classifier is the last Linear (or 1x1 Conv2d) layer; the modules before it, at the
    granularity of the top-level Sequentials' children, form a new stage wherever the resolution of their output
    changes; from the first pooled output on, pool."""
    head = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))][-1]
    units = _units(model, {head}, expand_top_containers=True)
    shapes = _probe(model, PROBE_SIZE, units)
    parts, outputs, k, last, state = {}, {}, 0, None, "stages"
    for u in units:
        res = _resolution(shapes.get(u))
        if u == head or state == "head":
            parts[u], state = "head", "head"
            continue
        if state == "pool" or res == "pooled":
            parts[u], state = "pool", "pool"
            continue
        if res is not None and res != last:
            k, last = k + 1, res
        parts[u] = f"stage{max(k, 1)}"
        if res is not None:
            outputs[parts[u]] = u
    check(k >= 1, f"{label}: no stage found before the classifier")
    return StageMap(label, tuple(f"stage{i + 1}" for i in range(k)), parts, outputs, "pool", "head", head)


def _map_of(model, label):
    if isinstance(model, (torchvision.models.ResNet, MiniResNet)):
        return RESNET_MAP
    if hasattr(model, "feature_info") and hasattr(model, "get_classifier"):
        return _with_params(_timm_map(model, label), model)
    return _with_params(_torchvision_map(model, label), model)


@functools.lru_cache(maxsize=None)
def arch_stages(arch):
    """The StageMap of `arch` (from a model on the meta device: nothing is computed, no random number is drawn)."""
    family = arch_family(arch)
    if family == "resnet_mini":
        return dataclasses.replace(RESNET_MAP, label=arch)
    with torch.random.fork_rng(devices=[]):
        try:
            with torch.device("meta"):
                model = library_model(arch)
        except UserError:
            raise
        except Exception:  # the few models that cannot be built on the meta device (RegNet)
            model = library_model(arch)
    smap = _map_of(model, arch)
    return dataclasses.replace(smap, label=arch) if smap is RESNET_MAP else smap


def unwrap(model):
    """The model inside DDP (module) and torch.compile (_orig_mod) wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def stage_map(model):
    """The StageMap of a model instance: the one build_model attached, else worked out from the instance
    (a ResNet, a timm model, or a torchvision model probed with one forward pass)."""
    model = unwrap(model)
    smap = getattr(model, "_stage_map", None)
    if smap is None:
        smap = _map_of(model, type(model).__name__)
        model._stage_map = smap
    return smap


def check_stage(smap, name, what="stage"):
    """The part `name` means in this model; UserError listing the model's stage names otherwise."""
    part = smap.resolve(name)
    if part is None:
        raise UserError(f"unknown {what} '{name}' (choose from {', '.join(smap.order)} for {smap.label}; "
                        f"aliases: avgpool = pool, fc = head)")
    return part


# ----------------------------------------------------------------------------------------------------------------
# --list_stages and --augment model

def _compress(paths, model):
    """Module paths with every fully listed parent shown as the parent (blocks.0 .. blocks.5 -> blocks)."""
    paths = list(paths)
    while True:
        parents = dict.fromkeys(p.rpartition(".")[0] for p in paths if "." in p)
        for parent in parents:
            kids = [f"{parent}.{n}" for n, _ in model.get_submodule(parent).named_children()]
            if len(kids) > 1 and all(k in paths for k in kids):
                at = paths.index(kids[0])
                paths = [p for p in paths if p not in kids]
                paths.insert(at, parent)
                break
        else:
            return paths


def _fmt_count(n):
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.1f} K" if n >= 1e3 else str(n)


def describe_stages(arch, image_size=None, num_classes=1000):
    """The --list_stages text: each stage's modules, output shape at `image_size` (without the batch dimension),
    parameter share, and what --freeze <stage> leaves to train."""
    size = image_size or PROBE_SIZE
    model = meta_model(arch, num_classes, image_size)
    smap = stage_map(model)
    total = sum(p.numel() for p in model.parameters())
    count = dict.fromkeys(smap.order, 0)
    for n, p in model.named_parameters():
        count[smap.part_of(n)] += p.numel()
    units = {part: [u for u, pt in smap.parts.items() if pt == part] for part in smap.order}
    loose = [n for n, _ in list(model.named_parameters()) + list(model.named_buffers())
             if smap.part_of(n) == smap.stages[0] and not any(n.startswith(u + ".") for u in units[smap.stages[0]])]
    outs = [smap.outputs[s] for s in smap.order if s in smap.outputs]
    shapes = _probe(model, size, outs, [smap.head_module])
    shape = {s: shapes.get(smap.outputs.get(s)) for s in smap.order}
    if smap.pool_module is None:
        shape[smap.pool] = shapes.get(("in", smap.head_module))
    shape[smap.head] = shapes.get(("out", ""))
    rows = []
    for part in smap.order:
        trains = sum(count[p] for p in smap.order if p not in smap.frozen_parts(part))
        freeze_name = "head" if part == smap.head else "pool" if part == smap.pool else part
        rows.append((part, " ".join(_compress(units[part], model) + (loose if part == smap.stages[0] else [])),
                     "x".join(map(str, shape[part][1:])) if shape[part] else "-",
                     f"{_fmt_count(count[part])} ({100 * count[part] / total:.2f} %)",
                     f"{100 * trains / total:.2f} %" if freeze_name in smap.freeze_choices else "-"))
    head = ("stage", "modules", "output", "parameters", "--freeze <stage> trains")
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(5)]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
    return "\n".join([f"{arch} at {size} px, {num_classes} classes: {_fmt_count(total)} parameters "
                      f"(outputs without the batch dimension)", line(head)] + [line(r) for r in rows] + [
        f"--freeze: {', '.join(smap.freeze_choices)}",
        f"--layers (similarity taps) and the representation analysis: {', '.join(smap.feature_layers)}",
        "aliases: avgpool = pool, fc = head"])


def torchvision_weights(spec_or_name, arch=None):
    """The torchvision WeightsEnum value of 'torchvision:<WEIGHTS>' (or 'torchvision:DEFAULT' for `arch`)."""
    name = spec_or_name.split(":", 1)[1] if spec_or_name.startswith("torchvision:") else spec_or_name
    if name == "DEFAULT":
        check(arch is not None and arch_family(arch) == "torchvision",
              "--pretrained torchvision:DEFAULT needs a torchvision --arch")
        weights = torchvision.models.get_model_weights(arch).DEFAULT
        return weights
    try:
        return torchvision.models.get_weight(name)
    except (ValueError, KeyError, AttributeError, IndexError):
        known = ""
        if arch is not None and arch_family(arch) == "torchvision":
            known = f"; {arch} has {', '.join(str(w) for w in torchvision.models.get_model_weights(arch))}"
        raise UserError(f"--pretrained torchvision:{name}: unknown torchvision weights (e.g. "
                        f"ResNet50_Weights.IMAGENET1K_V2{known})") from None


def data_config(arch, pretrained=None, image_size=None):
    """How the model's pre-trained weights expect images, for --augment model: {"input_size": (3, H, W),
    "interpolation", "crop_pct", "mean", "std"}. timm: timm.data.resolve_model_data_config (the tag's pretrained
    config); torchvision: the transforms of the --pretrained torchvision weights, else of the arch's default
    weights, else ImageNet's defaults. image_size: the size the model is built for (replaces input_size)."""
    family = arch_family(arch)
    if family == "timm":
        timm = timm_module()
        cfg = timm.data.resolve_model_data_config(meta_model(arch, 10, image_size))
        out = {k: cfg[k] for k in ("input_size", "interpolation", "crop_pct", "mean", "std")}
    else:
        out = {"input_size": (3, PROBE_SIZE, PROBE_SIZE), "interpolation": "bilinear", "crop_pct": 0.875,
               "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
        weights = None
        if isinstance(pretrained, str) and pretrained.startswith("torchvision:"):
            weights = torchvision_weights(pretrained, arch)
        elif family == "torchvision":
            weights = getattr(torchvision.models.get_model_weights(arch), "DEFAULT", None)
        if weights is not None:
            t = weights.transforms()
            out = {"input_size": (3, t.crop_size[0], t.crop_size[0]), "interpolation": t.interpolation.value,
                   "crop_pct": t.crop_size[0] / t.resize_size[0], "mean": tuple(t.mean), "std": tuple(t.std)}
    if image_size:
        out["input_size"] = (3, image_size, image_size)
    out["mean"], out["std"] = tuple(map(float, out["mean"])), tuple(map(float, out["std"]))
    return out
