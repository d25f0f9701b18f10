"""The flags every script shares (accelerate-example names) and the per-dataset defaults.

A flag left unset takes its dataset's default below: `digits` is a CPU-sized demo; `cifar100` is the paper's
setup (BYOL ResNet-50 -> CIFAR-100, thesis section 3 and the reference code's configs).
"""
import argparse
import math
import os

from .errors import check

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


class Parser(argparse.ArgumentParser):
    """argparse with bad input reported as one line ('error: ...') and exit status 2, like every other check."""

    def error(self, message):
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
    d = p.add_argument_group("data")
    d.add_argument("--dataset", choices=sorted(DATASET_DEFAULTS), default="digits",
                   help="fine-tuning task (default: digits, the embedded default that ships with scikit-learn)")
    d.add_argument("--data_dir", default=None, help="cifar100: folder holding cifar-100-python/")
    d.add_argument("--download", action="store_true", help="cifar100: download into --data_dir if missing")
    d.add_argument("--augment", default=None, help="digits: digits; cifar100: reference (default) or cifar")
    d.add_argument("--image_size", type=int, default=None, help="training crop size for --augment reference (224)")
    d.add_argument("--labels_per_class", type=int, default=None, help="digits: labelled images per class (4)")
    d.add_argument("--num_workers", type=int, default=None, help="DataLoader workers per process")
    d.add_argument("--data_pipeline", choices=["device", "torchvision"], default=None,
                   help="device: uint8 images in memory, augmented in batches on the training device (cifar100 "
                        "default); torchvision: per-sample transforms in DataLoader workers (digits default)")
    m = p.add_argument_group("model")
    m.add_argument("--arch", default=None, help="resnet50 | resnet18 | resnet_mini (dataset default)")
    m.add_argument("--pretrained", nargs="+", default=None,
                   help="pre-trained checkpoint(s) (.pt/.pth/.safetensors); 'scratch' for random initialisation; "
                        "digits default: the embedded BYOL checkpoint of seed 0, created once if missing")
    o = p.add_argument_group("optimisation (SGD with momentum; cosine schedules)")
    o.add_argument("--epochs", type=int, default=None, help="phase I epochs (fine-tuning model 1 / a DE member)")
    o.add_argument("--lr", type=float, default=None, help="phase I peak learning rate")
    o.add_argument("--weight_decay", type=float, default=None)
    o.add_argument("--momentum", type=float, default=0.9)
    o.add_argument("--batch_size", type=int, default=None, help="global batch size (split over processes)")
    o.add_argument("--eval_batch_size", type=int, default=None)
    o.add_argument("--lr_granularity", choices=["epoch", "iteration"], default="epoch",
                   help="cosine stepped once per epoch (reference code) or every iteration")
    e = p.add_argument_group("ensemble")
    e.add_argument("--members", type=int, default=None, help="ensemble size M")
    e.add_argument("--cycle_lr", type=float, default=None, help="learning rate at the start of cycles 2..M")
    e.add_argument("--cycle_epochs", type=int, default=None, help="epochs of each cycle 2..M")
    e.add_argument("--cycle_lr_mult", type=float, default=None,
                   help="set --cycle_lr to this multiple of --lr (the thesis' PEFT grid x1..x6)")
    e.add_argument("--seed", type=int, default=0, help="member i's randomness is seeded from (seed, i)")
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
    r.add_argument("--with_tracking", action="store_true", help="log to TensorBoard in <output_dir>/tensorboard")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def add_freeze_args(parser, help_freeze):
    from .models import FREEZE_CHOICES
    g = parser.add_argument_group("frozen stages (thesis section 5)")
    g.add_argument("--freeze", default="none", help=f"{help_freeze} ({', '.join(FREEZE_CHOICES)})")
    g.add_argument("--frozen_bn", choices=["eval", "train"], default="eval",
                   help="BatchNorm of frozen stages: eval keeps running statistics fixed; train updates them "
                        "(the reference code)")
    return parser


def slug(method):
    return method.lower().replace(" ", "_").replace("(", "").replace(")", "")


def finalize(args, method):
    """Fill dataset defaults, check values, and set args.method. Returns args."""
    for key, value in DATASET_DEFAULTS[args.dataset].items():
        if getattr(args, key, None) is None:
            setattr(args, key, min(value, os.cpu_count() or 1) if key == "num_workers" else value)
    for key in ("epochs", "members", "cycle_epochs", "batch_size", "eval_batch_size", "image_size"):
        check(getattr(args, key) > 0, f"--{key} must be positive, got {getattr(args, key)}")
    for key in ("lr", "cycle_lr", "weight_decay", "momentum"):
        value = getattr(args, key)
        check(math.isfinite(value) and value >= 0, f"--{key} must be a non-negative number, got {value}")
    check(args.lr > 0, f"--lr must be positive, got {args.lr}")
    check(args.num_workers >= 0, f"--num_workers must be >= 0, got {args.num_workers}")
    if args.dataset == "cifar100" and not args.download:
        check(args.data_dir is not None, "--data_dir is required for --dataset cifar100 (the folder holding cifar-100-python/)")
        check(os.path.isdir(args.data_dir), f"data directory not found: {args.data_dir}")
    if args.cycle_lr_mult is not None:
        check(math.isfinite(args.cycle_lr_mult) and args.cycle_lr_mult > 0,
              f"--cycle_lr_mult must be positive, got {args.cycle_lr_mult}")
        args.cycle_lr = args.cycle_lr_mult * args.lr
    args.method = method
    if args.output_dir is None:
        args.output_dir = os.path.join("runs", slug(method), f"{args.dataset}-seed{args.seed}")
    return args


def run_config(args):
    """What goes into config.json: every argument (paths as given)."""
    return {k: v for k, v in sorted(vars(args).items())}
