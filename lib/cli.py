"""Flags: the ones every script shares (accelerate-example names), the per-dataset defaults, and `parse`, which
turns a command line (and an optional YAML file) into complete, read-only settings before anything is built.

    parser = base_parser(__doc__)                 # + the script's own flags
    cfg = parse(parser, "StarSSE")                # every default filled, every value checked, nothing written yet
    exp = Experiment(cfg)

A flag left unset takes its dataset's default below: `digits` is a CPU-sized demo; `cifar100` is the paper's
setup (BYOL ResNet-50 -> CIFAR-100, thesis section 3 and the reference code's configs). `--config FILE` reads flags
from a YAML file (a run directory's config.yaml repeats that run); flags on the command line override it.
"""
import argparse
import math
import os
import re

from . import data, methods, models
from .errors import UserError, check
from .pretrain import default_checkpoint

DATASET_DEFAULTS = {
    "digits": dict(
        arch="resnet_mini",       # CPU-sized ResNet with ResNet-50's stage structure
        augment="digits",         # random resized crops (scale 0.6-1) and +-10 degree rotations, no flips
        image_size=16,            # digits are upsampled once from 8x8
        labels_per_class=4,       # few labels: fine-tuning needs the pre-trained features (40 training images)
        epochs=40,                # phase I (3 iterations per epoch)
        lr=0.01,                  # phase I peak learning rate (chosen on 2 seeds x 4 checkpoints; see README)
        weight_decay=5e-4,
        batch_size=16,            # global batch over all processes
        members=4,                # ensemble size M
        cycle_lr=0.02,            # 2x phase I, the paper's optimal ratio
        cycle_epochs=20,          # 0.5x phase I, the paper's optimal ratio
        num_workers=0,            # in-memory tensors: workers would only add start-up time
        data_pipeline="torchvision",
        eval_batch_size=1024,
    ),
    "cifar100": dict(
        arch="resnet50",
        augment="reference",      # RandomResizedCrop 224 + flip; test Resize 256 + CenterCrop 224; ImageNet mean/std
        image_size=224,
        labels_per_class=None,
        epochs=25,                # phase I: the paper's optimal single-model schedule
        lr=0.05,
        weight_decay=1e-4,
        batch_size=256,
        members=5,
        cycle_lr=0.1,             # thesis optimum for SSE and StarSSE: 2x lr, 12-epoch cycles
        cycle_epochs=12,
        num_workers=8,            # torchvision pipeline only
        data_pipeline="device",   # 32x32 uint8 images upsampled and augmented on the GPU, not per sample in workers
        eval_batch_size=512,
    ),
}
# CIFAR-10 (the NeurIPS paper's other CIFAR task) and any other data (a Hugging Face data set, an image folder):
# the paper's ResNet-50 setup, images decoded once to --image_size for the device pipeline
DATASET_DEFAULTS["cifar10"] = dict(DATASET_DEFAULTS["cifar100"])
DATASET_DEFAULTS["hf"] = dict(DATASET_DEFAULTS["cifar100"])
DATASET_DEFAULTS["imagefolder"] = dict(DATASET_DEFAULTS["cifar100"])
TRACKERS = ["tensorboard", "wandb", "all", "none"]


class Parser(argparse.ArgumentParser):
    """argparse with bad input reported as one line ('error: ...') and exit status 2, like every other check."""

    def error(self, message):
        choice = re.fullmatch(r"argument (--\w+): invalid choice: (\S+) \(choose from (.*)\)", message)
        if choice:  # "unknown --freeze 'fc7' (choose from none, stage2, ...)"
            flag, value, options = choice.groups()
            self.exit(2, f"error: unknown {flag} {value} (choose from {options.replace(chr(39), '')})\n")
        self.exit(2, f"error: {message} (see --help)\n")


def runs_parser(description, out, run_dirs_nargs="+"):
    """The parser of every script that reads saved runs: run directories, --group_by and --out."""
    p = Parser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dirs", nargs=run_dirs_nargs, help="run directories, or folders holding them")
    p.add_argument("--group_by", nargs="+", default=["method"],
                   help="config keys that define a group, i.e. a table row (method first)")
    p.add_argument("--out", default=out, help="output folder")
    return p


def base_parser(description):
    p = Parser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, metavar="FILE",
                   help="YAML file of flags (e.g. a run's config.yaml); flags on the command line override it")
    d = p.add_argument_group("data")
    d.add_argument("--dataset", choices=["digits", "cifar10", "cifar100", "hf", "imagefolder"], default="digits",
                   help="fine-tuning task: digits (the embedded default that ships with scikit-learn), cifar10 / "
                        "cifar100 (the python pickles in --data_dir), hf (a Hugging Face data set: --dataset_name or "
                        "--data_files), imagefolder (--train_dir, --test_dir: one sub-folder per class)")
    d.add_argument("--data_dir", default=None,
                   help="cifar10 / cifar100: folder holding cifar-10-batches-py/ or cifar-100-python/")
    d.add_argument("--download", action="store_true", help="cifar10 / cifar100: download into --data_dir if missing")
    d.add_argument("--dataset_name", default=None,
                   help="hf: a hub id (from the local HF cache when offline) or a folder written by save_to_disk")
    d.add_argument("--data_files", nargs="+", default=None, help="hf: Parquet or Arrow files instead of --dataset_name")
    d.add_argument("--image_column", default=None, help="hf: image column (default: image or img)")
    d.add_argument("--label_column", default=None, help="hf: label column (default: label or fine_label)")
    d.add_argument("--train_split", default="train", help="hf: the split to train on")
    d.add_argument("--test_split", default="test", help="hf: the split to test on")
    d.add_argument("--train_dir", default=None, help="imagefolder: training images, one sub-folder per class")
    d.add_argument("--test_dir", default=None, help="imagefolder: test images, the same class folders")
    d.add_argument("--val_split", type=float, default=None,
                   help="hold out this stratified fraction of the training set (0 < F < 0.5) as a validation split, "
                        "the same for every method, seed and member; default: none")
    d.add_argument("--val_split_name", default=None, help="hf: use this existing split as the validation split")
    d.add_argument("--augment", default=None,
                   help="digits: digits; others: reference (default: RandomResizedCrop + flip, ImageNet statistics), "
                        "cifar (32 px crops with padding), model (the model's pretrained data config, timm)")
    d.add_argument("--auto_augment", default=None,
                   help="torchvision pipeline: timm RandAugment policy added to training, e.g. rand-m9-mstd0.5-inc1")
    d.add_argument("--reprob", type=float, default=0.0,
                   help="torchvision pipeline: RandomErasing probability of training images (Swin setup: 0.25)")
    d.add_argument("--image_size", type=int, default=None, help="training crop size for --augment reference (224)")
    d.add_argument("--labels_per_class", type=int, default=None, help="digits: labelled images per class (4)")
    d.add_argument("--num_workers", type=int, default=None, help="DataLoader workers per process")
    d.add_argument("--data_pipeline", choices=["device", "torchvision"], default=None,
                   help="device: uint8 images in memory, augmented in batches on the training device (cifar100 "
                        "default); torchvision: per-sample transforms in DataLoader workers (digits default)")
    m = p.add_argument_group("model")
    m.add_argument("--arch", default=None,
                   help="a torchvision classification model (resnet50, convnext_tiny, ...), timm/<name> for any timm "
                        "model (timm/swin_tiny_patch4_window7_224), or resnet_mini (dataset default)")
    m.add_argument("--pretrained", nargs="+", default=None,
                   help="pre-trained checkpoint(s) (.pt/.pth/.safetensors/.bin files), 'timm' (the model's own timm "
                        "weights), 'torchvision:<WEIGHTS>' (e.g. torchvision:ResNet50_Weights.IMAGENET1K_V2), "
                        "'scratch' for random initialisation; digits default: the embedded BYOL checkpoint of seed 0")
    m.add_argument("--drop_path", type=float, default=0.0, help="stochastic depth rate of timm models (Swin: 0.1)")
    m.add_argument("--list_stages", action="store_true",
                   help="print the stages of --arch (modules, output shape at --image_size, parameter share) and exit")
    m.add_argument("--compile", action="store_true", help="torch.compile the model (GPU; the compile time is counted)")
    m.add_argument("--compile_mode", default="default", choices=["default", "reduce-overhead", "max-autotune"],
                   help="torch.compile mode")
    m.add_argument("--compile_backend", default="inductor", choices=["inductor", "aot_eager", "eager"],
                   help="torch.compile backend: inductor generates kernels; aot_eager / eager only trace (debugging)")
    o = p.add_argument_group("optimisation (SGD with momentum or AdamW; cosine schedules)")
    o.add_argument("--optimizer", choices=["sgd", "adamw"], default="sgd",
                   help="sgd: momentum, weight decay on every parameter (the ResNet setup); adamw: no weight decay on "
                        "norms and biases (the Swin setup)")
    o.add_argument("--epochs", type=int, default=None, help="phase I epochs (fine-tuning model 1 / a DE member)")
    o.add_argument("--lr", type=float, default=None, help="phase I peak learning rate")
    o.add_argument("--weight_decay", type=float, default=None)
    o.add_argument("--momentum", type=float, default=0.9)
    o.add_argument("--batch_size", type=int, default=None, help="global batch size (split over processes)")
    o.add_argument("--eval_batch_size", type=int, default=None)
    o.add_argument("--lr_granularity", choices=["epoch", "iteration"], default="epoch",
                   help="cosine stepped once per epoch (reference code) or every iteration")
    o.add_argument("--warmup_epochs", type=float, default=0.0,
                   help="phase I: linear warm-up from --warmup_lr over this many epochs (Swin setup: 10 %% of phase I)")
    o.add_argument("--warmup_lr", type=float, default=0.0, help="learning rate at the start of the warm-up")
    o.add_argument("--clip_grad", type=float, default=None, help="clip the gradient norm to this value (Swin: 5)")
    o.add_argument("--label_smoothing", type=float, default=0.0,
                   help="label smoothing of the cross-entropy (Swin: 0.1)")
    o.add_argument("--mixup", type=float, default=0.0, help="Mixup alpha, through timm's Mixup (Swin: 0.8)")
    o.add_argument("--cutmix", type=float, default=0.0, help="CutMix alpha, through timm's Mixup (Swin: 1.0)")
    e = p.add_argument_group("ensemble")
    e.add_argument("--members", type=int, default=None, help="ensemble size M")
    e.add_argument("--cycle_lr", type=float, default=None, help="learning rate at the start of cycles 2..M")
    e.add_argument("--cycle_epochs", type=int, default=None, help="epochs of each cycle 2..M")
    e.add_argument("--cycle_lr_mult", type=float, default=None,
                   help="set --cycle_lr to this multiple of --lr (the thesis' PEFT grid x1..x6)")
    e.add_argument("--seed", type=int, default=0, help="member i's randomness is seeded from (seed, i)")
    v = p.add_argument_group("evaluation beyond the test set (also: scripts/evaluate.py RUN_DIR)")
    v.add_argument("--ood_dataset", action="append", default=None, metavar="SPEC",
                   help="out-of-distribution set (repeatable): imagefolder:DIR, hf:NAME_OR_PATH, cifar10:DIR, "
                        "cifar100:DIR, svhn:DIR, or a synthetic one (noise, permuted, flipped)")
    v.add_argument("--shift_dataset", action="append", default=None, metavar="SPEC",
                   help="shifted test set with labels (repeatable): the forms of --ood_dataset and cifar-c:DIR")
    r = p.add_argument_group("run")
    r.add_argument("--output_dir", default=None, help="run directory (default runs/<method>/<dataset>-seed<seed>)")
    r.add_argument("--cache_dir", default="runs/cache",
                   help="shared phase-I / fine-tune cache and the embedded pre-trained checkpoints")
    r.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default=None,
                   help="default: the accelerate launch config's, else no. GPU only in practice: on CPU accelerate "
                        "ignores fp16 and bf16 is very slow")
    r.add_argument("--cpu", action="store_true", help="train on the CPU even if a GPU is present")
    r.add_argument("--member_parallel", action="store_true",
                   help="with K processes, train different members on different processes (StarSSE rays, DE "
                        "members; no gradient all-reduce); results are identical to a one-process run")
    r.add_argument("--channels_last", choices=["auto", "on", "off"], default="auto",
                   help="channels_last memory format (auto: on CUDA)")
    r.add_argument("--no_sync_bn", dest="sync_bn", action="store_false",
                   help="with DDP on GPUs, keep per-process BatchNorm statistics instead of SyncBatchNorm")
    r.add_argument("--with_tracking", action="store_true", help="log to the --report_to trackers")
    r.add_argument("--report_to", choices=TRACKERS, default="tensorboard",
                   help="trackers for --with_tracking (accelerate's log_with): TensorBoard logs go to "
                        "<output_dir>/tensorboard")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def add_freeze_args(parser, help_freeze, default="none"):
    g = parser.add_argument_group("frozen stages (thesis section 5)")
    g.add_argument("--freeze", default=default, metavar="STAGE",  # checked against --arch's stages (lib/models.py)
                   help=f"{help_freeze} (ResNets: {', '.join(models.FREEZE_CHOICES)}; other archs: --list_stages)")
    g.add_argument("--frozen_bn", choices=["eval", "train"], default="eval",
                   help="BatchNorm of frozen stages: eval keeps running statistics fixed; train updates them "
                        "(the reference code)")
    return parser


# ----------------------------------------------------------------------------------------------------------------
# settings

class Settings:
    """Resolved flags: every default filled in and every value checked. Read-only, so that what config.json records
    is what the run used (use `replace` for a changed copy)."""

    __slots__ = ("_values",)

    def __init__(self, values):
        object.__setattr__(self, "_values", dict(values))

    def __getattr__(self, key):
        try:
            return self._values[key]
        except KeyError:
            raise AttributeError(key) from None

    def __setattr__(self, key, value):
        raise AttributeError(f"settings are read-only (tried to set {key}); use replace()")

    def replace(self, **changes):
        return Settings({**self._values, **changes})

    def as_dict(self):
        """What config.json / config.yaml record: every setting, sorted by name."""
        return {k: v for k, v in sorted(self._values.items())}

    def __repr__(self):
        return f"Settings({self._values})"


def _parse_with_config(parser, argv):
    """parser.parse_args(argv), with the flags of `--config FILE` (YAML) as defaults the command line overrides."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    if known.config:
        import yaml
        check(os.path.isfile(known.config), f"--config {known.config}: file not found")
        try:
            with open(known.config) as f:
                values = yaml.safe_load(f) or {}
        except (OSError, yaml.YAMLError) as e:
            raise UserError(f"--config {known.config} could not be read ({str(e).splitlines()[0]})")
        check(isinstance(values, dict), f"--config {known.config} must hold a mapping of flag names to values")
        flags = set(vars(parser.parse_known_args([])[0]))
        unknown = sorted(set(values) - flags - {"method"})  # method: the script's, checked below
        check(not unknown, f"--config {known.config}: unknown setting(s) {', '.join(unknown)} for this script")
        parser.set_defaults(**{k: v for k, v in values.items() if k in flags and k != "config"})
        return parser.parse_args(argv), values.get("method")
    return parser.parse_args(argv), None


def parse(parser, method, argv=None, defaults=None, checkpoints=1):
    """Complete, checked, read-only settings of one run (nothing is built or written here).

    method: the method's name, or a function of the parsed flags that returns it (lib/methods.py).
    defaults: a function of the parsed flags returning script-specific defaults for flags left unset (applied
    before the dataset's). checkpoints: how many --pretrained checkpoints the script takes (1, or "many": member i
    fine-tunes checkpoint i, so --members must equal their number: Global DE).
    """
    args, config_method = _parse_with_config(parser, argv)
    paths = args.pretrained or []
    if checkpoints == 1:
        check(len(paths) <= 1, f"--pretrained takes 1 checkpoint here, got {len(paths)}")
    elif len(paths) > 1:  # Global DE: one member per pre-trained checkpoint
        check(args.members in (None, len(paths)), f"Global DE fine-tunes each checkpoint once: --members must equal "
                                                  f"the number of checkpoints ({len(paths)})")
        args.members = len(paths)
    for key, value in (defaults(args) if defaults else {}).items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    for key, value in DATASET_DEFAULTS[args.dataset].items():
        if getattr(args, key, None) is None:
            setattr(args, key, min(value, os.cpu_count() or 1) if key == "num_workers" else value)
    if args.list_stages:  # print --arch's stages at --image_size and stop, before anything is checked or written
        print(models.describe_stages(args.arch, args.image_size, {"cifar100": 100}.get(args.dataset, 10)))
        raise SystemExit(0)
    _validate(args)
    data.check_settings(args)  # the data flags of --dataset (lib/data.py)
    models.check_settings(args)  # --arch, --pretrained, stage names (lib/models.py)
    if args.cycle_lr_mult is not None:
        args.cycle_lr = args.cycle_lr_mult * args.lr
    if args.mixed_precision is None:  # as accelerate resolves it: the launch config's (passed on in the environment)
        args.mixed_precision = os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()
    if args.pretrained is None:
        check(args.dataset == "digits", f"--pretrained is required for --dataset {args.dataset} "
                                        f"(e.g. a BYOL ResNet-50 checkpoint such as byol-1000ep-1.pt)")
        args.pretrained = [default_checkpoint(args.cache_dir, 0)]  # the embedded checkpoint (Experiment creates it)
    args.method = method(args) if callable(method) else method
    check(config_method in (None, args.method),
          f"--config {args.config} holds a {config_method} run; this script runs {args.method}")
    check(args.member_parallel is False or methods.independent_members(args.method),
          f"--member_parallel: {args.method} members depend on earlier members, so they cannot be trained in "
          f"parallel (it is for StarSSE, StarSSE-RTD/MSE, frozen StarSSE and Local/Global DE)")
    if args.output_dir is None:
        args.output_dir = os.path.join("runs", methods.directory(args.method), f"{args.dataset}-seed{args.seed}")
    return Settings(vars(args))


def _validate(args):
    for key in ("epochs", "members", "cycle_epochs", "batch_size", "eval_batch_size", "image_size"):
        check(getattr(args, key) > 0, f"--{key} must be positive, got {getattr(args, key)}")
    for key in ("lr", "cycle_lr", "weight_decay", "momentum"):
        value = getattr(args, key)
        check(math.isfinite(value) and value >= 0, f"--{key} must be a non-negative number, got {value}")
    check(args.lr > 0, f"--lr must be positive, got {args.lr}")
    for key in ("lr", "cycle_lr"):  # the largest SGD step, lr / (1 - momentum), must be a number
        value = getattr(args, key)
        check(args.momentum < 1 and math.isfinite(value / (1 - args.momentum)),
              f"--{key} {value} with --momentum {args.momentum} gives steps that overflow")
    check(args.seed >= 0, f"--seed must be >= 0, got {args.seed}")
    check(args.num_workers >= 0, f"--num_workers must be >= 0, got {args.num_workers}")
    for key in ("output_dir", "cache_dir"):
        if getattr(args, key) is not None:
            _check_folder_path(getattr(args, key), f"--{key}")
    if args.cycle_lr_mult is not None:
        check(math.isfinite(args.cycle_lr_mult) and args.cycle_lr_mult > 0,
              f"--cycle_lr_mult must be positive, got {args.cycle_lr_mult}")
    if args.with_tracking and args.report_to == "wandb":
        import importlib.util
        check(importlib.util.find_spec("wandb") is not None,
              "--report_to wandb needs the wandb package (pip install wandb)")


def _check_folder_path(path, flag):
    """`path` is a folder or can become one: neither it nor any folder above it is a file."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    check(os.path.isdir(probe), f"{flag} {path}: {probe} is a file, not a folder")
