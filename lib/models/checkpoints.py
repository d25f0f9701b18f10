"""Pre-trained checkpoints of any backbone (lib/models/backbones.py: resnet_mini, torchvision, timm/<name>): reading
every usual layout, matching it to the model, and the checks of the model flags before anything is built.

--pretrained takes:
    scratch                      random initialisation
    a file or a folder           .pt/.pth/.tar/.bin/.ckpt/.safetensors in every usual layout (plain keys, state_dict,
                                 model_state, Swin's {"model": ...}, SSL exports with backbone./encoder./module.
                                 prefixes), or a save_pretrained folder holding model.safetensors / pytorch_model.bin;
                                 for timm archs, layouts timm converts (the original Swin, ViT, ConvNeXt releases) go
                                 through the model's own checkpoint filter
    timm                         a timm model's own pretrained weights, from the local Hugging Face cache (downloaded
                                 when online; HF_HUB_OFFLINE=1 never downloads)
    torchvision:<WEIGHTS>        torchvision weights (e.g. torchvision:ResNet50_Weights.IMAGENET1K_V2, or
                                 torchvision:DEFAULT for the arch's default), from TORCH_HOME's hub cache
The head always starts fresh for the task's classes: a checkpoint's classifier is never loaded.
"""
import contextlib
import os
import pickle
import sys
import types
from collections import OrderedDict
from urllib.parse import urlparse

import torch
import torch.nn as nn

from lib.infra.errors import UserError, check
from lib.infra.files import file_sha256
from lib.models.backbones import (
    PROBE_SIZE,
    arch_family,
    arch_stages,
    build_model,
    check_input_size,
    library_model,
    meta_model,
    stage_map,
    timm_module,
    timm_name,
    torchvision_weights,
    unwrap,
)
from lib.models.stages import feature_layer


def check_settings(args):
    """--arch, --image_size / --drop_path for it, --freeze and --layers against its stages, and the --pretrained
    forms, before anything is built or written (a model on the meta device; nothing is downloaded)."""
    smap = arch_stages(args.arch)
    check_input_size(args.arch, getattr(args, "image_size", None) or PROBE_SIZE, getattr(args, "drop_path", 0.0) or 0.0)
    freeze = getattr(args, "freeze", None)
    if freeze is not None:
        check(freeze in smap.freeze_choices,
              f"unknown --freeze '{freeze}' (choose from {', '.join(smap.freeze_choices)})")
    for spec in getattr(args, "layers", None) or []:
        feature_layer(smap, str(spec).partition(":")[0])
    for spec in getattr(args, "pretrained", None) or []:
        check_pretrained_form(spec, args.arch)
    if getattr(args, "pretrained", None) is None and getattr(args, "dataset", None) == "digits":
        check(args.arch == "resnet_mini", f"--arch {args.arch}: the embedded pre-trained checkpoint is a resnet_mini; "
                                          f"pass --pretrained (scratch, timm, torchvision:<WEIGHTS> or a file)")


# ----------------------------------------------------------------------------------------------------------------
# checkpoints

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".tar", ".safetensors", ".bin", ".ckpt")
# a save_pretrained / Hugging Face folder: the weights file in it, by preference
FOLDER_FILES = ("model.safetensors", "pytorch_model.bin", "model.pth", "pytorch_model.pth")
# containers that hold the weights in common exports: ours, torchvision/Lightning, Swin-style
_CONTAINER_KEYS = ("model_state", "state_dict", "model", "online_network", "network", "net", "encoder", "backbone")
# auxiliary classifiers of torchvision's Inception v3 / GoogLeNet weights: built only for ImageNet training
_AUX_PREFIXES = ("AuxLogits.", "aux1.", "aux2.")


def weights_file(path):
    """The weights file of a --pretrained path: the file itself, or the weights file of a save_pretrained folder."""
    if path is not None and os.path.isdir(path):
        for name in FOLDER_FILES:
            if os.path.isfile(os.path.join(path, name)):
                return os.path.join(path, name)
        raise UserError(f"checkpoint folder {path} holds no weights file ({', '.join(FOLDER_FILES)})")
    return path


class _Missing(dict):
    """Stands in, when a trusted checkpoint is unpickled, for a class whose module is not installed (e.g. the yacs
    CfgNode config that the original Swin checkpoints carry next to the weights)."""

    def __init__(self, *args, **kwargs):
        super().__init__()

    def __setstate__(self, state):
        pass


class _LenientUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            return type(name, (_Missing,), {"__module__": __name__})


_LENIENT_PICKLE = types.ModuleType("lenient_pickle")
_LENIENT_PICKLE.Unpickler, _LENIENT_PICKLE.load, _LENIENT_PICKLE.__name__ = _LenientUnpickler, pickle.load, "pickle"


def read_checkpoint(path):
    """Read a checkpoint file (or save_pretrained folder) into a flat {key: tensor} dict (not yet matched)."""
    check(path is not None and os.path.exists(path), f"checkpoint not found: {path}")
    path = weights_file(path)
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
                # exports that also pickle configs/args objects; only load files you trust. Classes of modules that
                # are not installed (yacs in Swin checkpoints) are read as empty stand-ins: only tensors are used
                print(f"warning: {path} holds non-tensor Python objects; loading it with full unpickling")
                obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_LENIENT_PICKLE)
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


def _timm_filter(model):
    """A timm model's checkpoint filter (timm.models.<module>.checkpoint_filter_fn: converts the original releases'
    layouts, e.g. Swin's, and resizes position embeddings / relative-position tables), or None."""
    if not type(model).__module__.startswith("timm."):
        return None
    arch = (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
    modules = []
    if arch:
        with contextlib.suppress(Exception):
            modules.append(timm_module().models.model_entrypoint(arch).__module__)
    modules.append(type(model).__module__)
    for name in modules:
        fn = getattr(sys.modules.get(name), "checkpoint_filter_fn", None)
        if callable(fn):
            return fn
    return None


def _apply_filter(fn, state, model):
    try:
        try:
            return fn(OrderedDict(state), model)
        except TypeError:  # filters of one argument
            return fn(OrderedDict(state))
    except Exception:  # a foreign layout the filter does not understand: the plain comparison reports it
        return None


def _compare(ours, model_state, head):
    ours = OrderedDict((k, v) for k, v in ours.items() if not k.startswith(head) and not k.startswith(_AUX_PREFIXES))
    missing = [k for k in model_state
               if not k.startswith(head) and k not in ours and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in ours if k not in model_state]
    bad_shapes = [f"{k} {tuple(v.shape)} vs {tuple(model_state[k].shape)}" for k, v in ours.items()
                  if k in model_state and v.shape != model_state[k].shape]
    return ours, missing, unexpected, bad_shapes


def _listed(keys):
    return f"{keys[:10]}{' ...' if len(keys) > 10 else ''} ({len(keys)} keys)"


def match_state_dict(state, model, source="checkpoint"):
    """Map a checkpoint's keys onto `model`'s backbone: strip the export prefix, convert a layout timm knows for this
    model (its checkpoint filter) when the keys do not match as they are, and check every key strictly.

    The head is never taken from a checkpoint (the task has its own classes); BatchNorm's `num_batches_tracked`
    counters may be absent. Anything else missing or unexpected is an error that lists the keys (weights of another
    architecture, or a layout this code does not know). Keys outside the chosen prefix (projectors, predictors,
    target networks of SSL exports) are ignored. Returns {key: tensor} for model.load_state_dict(strict=False).
    """
    model = unwrap(model)
    smap = stage_map(model)
    head = smap.head_module + "."
    model_state = model.state_dict()
    wanted = [k for k in model_state if not k.startswith(head)]
    attempts = []  # (number of problems, message, matched state)
    prefix = _best_prefix(state.keys(), wanted)
    stripped = state if prefix is None else OrderedDict((k[len(prefix):], v) for k, v in state.items()
                                                        if k.startswith(prefix))
    candidates = [] if prefix is None else [(stripped, f"prefix '{prefix}'")]
    timm_filter = _timm_filter(model)
    for ours, how in candidates + ([(None, "after timm's checkpoint filter")] if timm_filter else []):
        if ours is None:
            ours = _apply_filter(timm_filter, stripped, model)
            if ours is None or _best_prefix(ours.keys(), wanted) is None:
                continue
        ours, missing, unexpected, bad_shapes = _compare(ours, model_state, head)
        if not (missing or unexpected or bad_shapes):
            return ours
        problems = []
        if missing or unexpected:
            problems.append(f"key layout does not match the model ({how}): missing {_listed(missing)}, "
                            f"unexpected {_listed(unexpected)}")
        if bad_shapes:
            problems.append(f"shapes do not match the model: {bad_shapes[:5]}")
        attempts.append((len(missing) + len(unexpected) + len(bad_shapes), "; ".join(problems)))
    if not attempts:
        raise UserError(f"{source}: unknown key layout, no key matches {smap.label} (first keys: "
                        f"{', '.join(list(state)[:5])}; weights of another architecture?)")
    raise UserError(f"{source} for {smap.label}: {min(attempts)[1]}")


# ----------------------------------------------------------------------------------------------------------------
# pre-trained weights: files, timm's, torchvision's

def _offline():
    """HF_HUB_OFFLINE=1 (or TRANSFORMERS_OFFLINE=1): never download, neither from the hub nor from torchvision."""
    from huggingface_hub import constants
    env = (os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or "").upper()
    return bool(constants.HF_HUB_OFFLINE) or env in ("1", "ON", "YES", "TRUE")


def check_pretrained_form(spec, arch):
    """The --pretrained form fits the arch, and its weights are where they should be when offline (no file is read,
    nothing is downloaded)."""
    check(isinstance(spec, str) and spec != "", "--pretrained is empty")
    if spec == "scratch":
        return
    if spec == "timm":
        check(arch_family(arch) == "timm", f"--pretrained timm loads a timm model's own weights: it needs --arch "
                                           f"timm/<name> (got {arch}); pass other weights as a file")
        cfg = timm_module().models.get_pretrained_cfg(timm_name(arch))
        check(cfg is not None and (cfg.hf_hub_id or cfg.url or cfg.file),
              f"--pretrained timm: timm has no pretrained weights for {arch} (timm.list_pretrained() lists those "
              f"that have)")
        timm_weights_file(arch, download=False)  # offline and not cached: the folder to fill
    elif spec.startswith("torchvision:"):
        weights = torchvision_weights(spec, arch)
        _url_file(weights.url, f"--pretrained {spec}", download=False)  # offline and not cached: the folder to fill
    else:
        check(os.path.exists(spec), f"checkpoint not found: {spec}")


def timm_weights_file(arch, download=True):
    """The local file of a timm model's own pretrained weights: the Hugging Face cache (HF_HUB_CACHE) for weights on
    the hub, torch.hub's cache for URL-only ones. Missing: downloaded when online and `download`, else UserError
    naming the folder to fill (download=False, online: None)."""
    timm = timm_module()
    cfg = timm.models.get_pretrained_cfg(timm_name(arch))
    check(cfg is not None and (cfg.hf_hub_id or cfg.url or cfg.file), f"--pretrained timm: timm has no pretrained "
                                                                      f"weights for {arch}")
    if cfg.file:
        return cfg.file
    offline = _offline()
    if cfg.hf_hub_id:
        from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache
        repo, _, revision = cfg.hf_hub_id.partition("@")
        names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        for name in names:
            found = try_to_load_from_cache(repo, name, revision=revision or None)
            if isinstance(found, str):
                return found
        folder = os.path.join(constants.HF_HUB_CACHE, "models--" + repo.replace("/", "--"))
        if not download and not offline:
            return None
        check(not offline, f"--pretrained timm: the weights of {arch} (Hugging Face hub: {repo}) are not in the "
                           f"local cache and HF_HUB_OFFLINE is set: fill {folder} (e.g. `hf download {repo}` with "
                           f"internet and the same HF_HOME) or pass the weights as a file")
        errors = []
        for name in names:
            try:
                return hf_hub_download(repo, name, revision=revision or None)
            except Exception as e:  # no such file in the repo, or no network
                errors.append(f"{type(e).__name__}: {str(e).splitlines()[0][:120]}")
        raise UserError(f"--pretrained timm: could not download {repo} into {folder} ({errors[-1]}); fill that folder "
                        f"or pass the weights as a file")
    return _url_file(cfg.url, f"--pretrained timm ({arch})", download)


def _url_file(url, what, download=True):
    """A weights URL's file in torch.hub's cache (TORCH_HOME/hub/checkpoints), downloaded when missing and online."""
    folder = os.path.join(torch.hub.get_dir(), "checkpoints")
    path = os.path.join(folder, os.path.basename(urlparse(url).path))
    if os.path.isfile(path):
        return path
    if not download and not _offline():
        return None
    check(not _offline(), f"{what}: {os.path.basename(path)} is not in {folder} and HF_HUB_OFFLINE is set: download "
                          f"{url} into that folder (TORCH_HOME sets where it is) or pass the weights as a file")
    try:
        os.makedirs(folder, exist_ok=True)
        torch.hub.download_url_to_file(url, path, progress=False)
    except Exception as e:
        raise UserError(f"{what}: could not download {url} into {folder} ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:120]}); put the file there or pass the weights as a file") from None
    return path


def pretrained_state(spec, arch=None, download=True):
    """{key: tensor} of the weights a --pretrained spec names (not yet matched to a model)."""
    if spec == "timm":
        return read_checkpoint(timm_weights_file(arch, download))
    if spec.startswith("torchvision:"):
        weights = torchvision_weights(spec, arch)
        return read_checkpoint(_url_file(weights.url, f"--pretrained {spec}", download))
    return read_checkpoint(spec)


def _source(spec):
    return f"--pretrained {spec}" if spec == "timm" or spec.startswith("torchvision:") else f"checkpoint {spec}"


def check_pretrained(spec, arch, image_size=None):
    """Raise UserError unless the weights `spec` names can be found (downloaded when online and missing) and fit
    `arch` at `image_size`: one line listing missing / unexpected keys, or naming the cache folder to fill. Returns
    the matched backbone state ({} for scratch), e.g. to check its values."""
    if spec == "scratch":
        return {}
    check_pretrained_form(spec, arch)
    return match_state_dict(pretrained_state(spec, arch), meta_model(arch, 10, image_size), source=_source(spec))


def load_pretrained(spec, arch="resnet50", num_classes=1000, image_size=None, drop_path=0.0):
    """`arch` (lib.models.backbones.build_model) with the backbone weights `spec` names ("scratch": random; a file or
    folder; "timm": the model's own timm weights, loaded by timm from the local cache; "torchvision:<WEIGHTS>") and a
    fresh head for `num_classes`, never the checkpoint's (initialised from torch's global random stream: seed it
    first; loading the weights draws no random number)."""
    model = build_model(arch, num_classes, image_size, drop_path)
    if spec == "scratch":
        return model
    if spec == "timm":
        path = timm_weights_file(arch)
        try:  # timm's own loader: its checkpoint filter resizes position embeddings to image_size
            with torch.random.fork_rng(devices=[]):
                src = library_model(arch, image_size, 0.0, num_classes, pretrained=True,
                                    pretrained_cfg_overlay=dict(file=path))
        except UserError:
            raise
        except Exception as e:
            raise UserError(f"--pretrained timm: timm could not load {path} into {arch} ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:200]})") from None
        state = src.state_dict()
    else:
        state = pretrained_state(spec, arch)
    model.load_state_dict(match_state_dict(state, model, source=_source(spec)), strict=False)  # checked strictly
    return model


def pretrained_id(spec, arch=None):
    """What identifies the weights of a --pretrained spec in the phase-I cache key: "scratch"; a file's (or a
    save_pretrained folder's weights file's) sha256, as ever; for timm and torchvision weights, "timm:" /
    "torchvision:" + the sha256 of the cached file, or the weights' name and version when it is not cached."""
    if spec == "scratch":
        return "scratch"
    if spec == "timm":
        path = timm_weights_file(arch, download=False)
        if path:
            return "timm:" + file_sha256(path)
        cfg = timm_module().models.get_pretrained_cfg(timm_name(arch))
        return f"timm:{cfg.hf_hub_id or cfg.url}@timm-{timm_module().__version__}"
    if spec.startswith("torchvision:"):
        weights = torchvision_weights(spec, arch)
        path = _url_file(weights.url, spec, download=False)
        return "torchvision:" + (file_sha256(path) if path else f"{weights}:{os.path.basename(weights.url)}")
    return file_sha256(weights_file(spec))
