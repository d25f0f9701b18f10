"""Every setting of a training run, written once: type, choices, default (and per-dataset default), help, whether it
keys the phase-I cache, whether it changes a result, and the value that reads runs written before it existed.

    @dataclass(frozen=True)
    class Optimisation:
        lr: float = setting(None, "phase I peak learning rate", per_dataset={"digits": 0.01, "*": 0.05}, phase1=True)

Everything else is derived from these dataclasses (transformers' HfArgumentParser in spirit): the command-line
parser and the reading of `--config FILE` (lib/cli/parser.py), the per-dataset defaults, the phase-I cache key
(PHASE1_KEYS), the settings a re-run may change (NON_RESULT_KEYS), the defaults of older runs (LEGACY), the training
loop's settings (LoopSettings) and the flag reference in docs/flags.md (`python -m lib.settings.schema`).

A group is one dataclass; every training script takes COMMON and adds its own groups (Freeze, Similarity, ...).
"""
import dataclasses
import sys
import typing
from dataclasses import dataclass, field, fields

DATASETS = ("digits", "cifar10", "cifar100", "hf", "imagefolder")
TRACKERS = ("tensorboard", "wandb", "all", "none")
ALWAYS = object()  # `legacy` of a setting every run has recorded since the first one
# the paper's optimal cycle relative to phase I (thesis table 4.1, NeurIPS figure 3): 2x the lr, 0.5x the epochs
CYCLE_LR_RATIO, CYCLE_EPOCHS_RATIO = 2.0, 0.5


def setting(default, help, *, phase1, result=True, per_dataset=None, choices=None, many=None, legacy=ALWAYS,
            flag=None, metavar=None, loop=False):
    """One setting's metadata (a dataclass field).

    default: the value when the flag is not given (None with per_dataset: the dataset's value; see `resolve` in
    lib/cli/parser.py for the few derived from others). per_dataset: {dataset or "*": default}. phase1: the value
    changes a fine-tuned model 1 / DE member, so it is part of the phase-I cache key. result: False for settings that
    change no result (where files go, how much is printed), which a re-run may change. many: "+" (one or more values,
    a list) or "append" (a repeatable flag). legacy: the value that reproduces runs recorded before the setting
    existed. flag: the command-line spelling when it is not --<name> (e.g. --no_sync_bn). loop: the training loop
    reads it (LoopSettings). Eleven keyword parameters, as a setting has that many facts: each is one of them.
    """
    meta = dict(help=help, phase1=phase1, result=result, per_dataset=per_dataset, choices=choices, many=many,
                legacy=legacy, flag=flag, metavar=metavar, loop=loop)
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


# ------------------------------------------------------------------------------------------------------------------
# the groups every training script takes

@dataclass(frozen=True)
class Data:
    """data"""
    dataset: str = setting("digits", "fine-tuning task: digits (the embedded default that ships with scikit-learn), "
                           "cifar10 / cifar100 (the python pickles in --data_dir), hf (a Hugging Face data set: "
                           "--dataset_name or --data_files), imagefolder (--train_dir, --test_dir: one sub-folder per "
                           "class)", choices=DATASETS, phase1=True)
    data_dir: str = setting(None, "cifar10 / cifar100: folder holding cifar-10-batches-py/ or cifar-100-python/",
                            phase1=False, result=False)
    download: bool = setting(False, "cifar10 / cifar100: download into --data_dir if missing", phase1=False,
                             result=False)
    dataset_name: str = setting(None, "hf: a hub id (from the local HF cache when offline) or a folder written by "
                                "save_to_disk", phase1=True, legacy=None)
    data_files: typing.List[str] = setting(None, "hf: Parquet or Arrow files instead of --dataset_name", many="+",
                                           phase1=True, legacy=None)
    image_column: str = setting(None, "hf: image column (default: image or img)", phase1=True, legacy=None)
    label_column: str = setting(None, "hf: label column (default: label or fine_label)", phase1=True, legacy=None)
    train_split: str = setting("train", "hf: the split to train on", phase1=True, legacy="train")
    test_split: str = setting("test", "hf: the split to test on", phase1=True, legacy="test")
    train_dir: str = setting(None, "imagefolder: training images, one sub-folder per class", phase1=True, legacy=None)
    test_dir: str = setting(None, "imagefolder: test images, the same class folders", phase1=True, legacy=None)
    val_split: float = setting(None, "hold out this stratified fraction of the training set (0 < F < 0.5) as a "
                               "validation split, the same for every method, seed and member; default: none",
                               phase1=True, legacy=None)
    val_split_name: str = setting(None, "hf: use this existing split as the validation split", phase1=True,
                                  legacy=None)
    augment: str = setting(None, "training augmentation: digits (digits only); reference (RandomResizedCrop + flip, "
                           "ImageNet statistics), cifar (32 px crops with padding), model (the model's pretrained "
                           "data config, timm)", choices=("digits", "reference", "cifar", "model"),
                           per_dataset={"digits": "digits", "*": "reference"}, phase1=True)
    auto_augment: str = setting(None, "torchvision pipeline: timm RandAugment policy added to training, e.g. "
                                "rand-m9-mstd0.5-inc1", phase1=True, legacy=None)
    reprob: float = setting(0.0, "torchvision pipeline: RandomErasing probability of training images (Swin setup: "
                            "0.25)", phase1=True, legacy=0.0)
    image_size: int = setting(None, "training crop size (digits are upsampled once from 8x8 to 16)",
                              per_dataset={"digits": 16, "*": 224}, phase1=True)
    test_resize: int = setting(None, "--augment reference / model: the test transform resizes the short side to this "
                               "before the centre crop of --image_size (default: reference round(size x 256 / 224); "
                               "model floor(size / the model's crop_pct), 248 for timm's Swin-T; the reference code's "
                               "Swin test transform: 256). It keys the phase-I cache (cached members carry their test "
                               "and validation predictions)", phase1=True, legacy=None)
    labels_per_class: int = setting(None, "digits: labelled images per class (few labels: fine-tuning needs the "
                                    "pre-trained features)", per_dataset={"digits": 4, "*": None}, phase1=True)
    num_workers: int = setting(None, "DataLoader workers per process (at most the CPU count; digits: in-memory "
                               "tensors, workers would only add start-up time)", per_dataset={"digits": 0, "*": 8},
                               phase1=True, loop=True)
    data_pipeline: str = setting(None, "device: uint8 images in memory, augmented in batches on the training device; "
                                 "torchvision: per-sample transforms in DataLoader workers",
                                 choices=("device", "torchvision"),
                                 per_dataset={"digits": "torchvision", "*": "device"}, phase1=True,
                                 legacy="torchvision")


@dataclass(frozen=True)
class Model:
    """model"""
    arch: str = setting(None, "a torchvision classification model (resnet50, convnext_tiny, ...), timm/<name> for "
                        "any timm model (timm/swin_tiny_patch4_window7_224), or resnet_mini (a CPU-sized ResNet with "
                        "ResNet-50's stage structure)", per_dataset={"digits": "resnet_mini", "*": "resnet50"},
                        phase1=True)
    pretrained: typing.List[str] = setting(
        None, "pre-trained checkpoint(s) (.pt/.pth/.safetensors/.bin files or a save_pretrained folder), 'timm' (the "
        "model's own timm weights), 'torchvision:<WEIGHTS>' (e.g. torchvision:ResNet50_Weights.IMAGENET1K_V2), "
        "'scratch' for random initialisation; digits default: the embedded BYOL checkpoint of seed 0. Their content "
        "(not their path) keys the phase-I cache", many="+", phase1=False)
    drop_path: float = setting(0.0, "stochastic depth rate of timm models (Swin: 0.1)", phase1=True, legacy=0.0)
    list_stages: bool = setting(False, "print the stages of --arch (modules, output shape at --image_size, parameter "
                                "share) and exit", phase1=False, result=False)
    compile: bool = setting(False, "torch.compile the model (GPU; the compile time is counted)", phase1=True,
                            legacy=False, loop=True)
    compile_mode: str = setting("default", "torch.compile mode", choices=("default", "reduce-overhead",
                                                                        "max-autotune"),
                                phase1=True, legacy="default", loop=True)
    compile_backend: str = setting("inductor", "torch.compile backend: inductor generates kernels; aot_eager / eager "
                                   "only trace (debugging)", choices=("inductor", "aot_eager", "eager"), phase1=True,
                                   legacy="inductor", loop=True)


@dataclass(frozen=True)
class Optimisation:
    """optimisation (SGD with momentum or AdamW; cosine schedules)"""
    optimizer: str = setting("sgd", "sgd: momentum, weight decay on every parameter (the ResNet setup); adamw: no "
                             "weight decay on norms and biases (the Swin setup)", choices=("sgd", "adamw"),
                             phase1=True, legacy="sgd", loop=True)
    epochs: int = setting(None, "phase I epochs (fine-tuning model 1 / a DE member)",
                          per_dataset={"digits": 40, "*": 25}, phase1=True)
    lr: float = setting(None, "phase I peak learning rate (digits: chosen on 2 seeds x 4 checkpoints; cifar100: the "
                        "paper's)", per_dataset={"digits": 0.01, "*": 0.05}, phase1=True)
    weight_decay: float = setting(None, "weight decay", per_dataset={"digits": 5e-4, "*": 1e-4}, phase1=True,
                                  loop=True)
    momentum: float = setting(0.9, "SGD momentum (reset at every member's start)", phase1=True, loop=True)
    batch_size: int = setting(None, "global batch size (split over processes)", per_dataset={"digits": 16, "*": 256},
                              phase1=True, loop=True)
    eval_batch_size: int = setting(None, "batch size of predictions", per_dataset={"digits": 1024, "*": 512},
                                   phase1=False, result=False)
    lr_granularity: str = setting("epoch", "cosine stepped once per epoch (reference code) or every iteration",
                                  choices=("epoch", "iteration"), phase1=True)
    warmup_epochs: float = setting(0.0, "phase I: linear warm-up from --warmup_lr over this many epochs (Swin setup: "
                                   "10 % of phase I)", phase1=True, legacy=0.0)
    warmup_lr: float = setting(0.0, "learning rate at the start of the warm-up", phase1=True, legacy=0.0)
    warmup_granularity: str = setting("iteration", "iteration: the warm-up rises every iteration over round("
                                      "warmup_epochs x iterations per epoch) steps; epoch: the reference code's Swin "
                                      "schedule, int(warmup_epochs) whole epochs (int(10.2) = 10), epoch e at warmup_lr "
                                      "+ (lr - warmup_lr) x e / W, then the cosine over the remaining epochs",
                                      choices=("iteration", "epoch"), phase1=True, legacy="iteration")
    drop_last: bool = setting(False, "drop each epoch's last short batch, as the reference code's Swin loader "
                              "(iterations per epoch: floor instead of ceil of samples / batch)", phase1=True,
                              legacy=False, loop=True)
    clip_grad: float = setting(None, "clip the gradient norm to this value (Swin: 5)", phase1=True, legacy=None,
                               loop=True)
    label_smoothing: float = setting(0.0, "label smoothing of the cross-entropy (Swin: 0.1)", phase1=True, legacy=0.0,
                                     loop=True)
    mixup: float = setting(0.0, "Mixup alpha, through timm's Mixup (Swin: 0.8)", phase1=True, legacy=0.0, loop=True)
    cutmix: float = setting(0.0, "CutMix alpha, through timm's Mixup (Swin: 1.0)", phase1=True, legacy=0.0, loop=True)


@dataclass(frozen=True)
class Ensemble:
    """ensemble"""
    members: int = setting(None, "ensemble size M", per_dataset={"digits": 4, "*": 5}, phase1=False)
    cycle_lr: float = setting(None, "learning rate at the start of cycles 2..M (default: --cycle_lr_mult x --lr)",
                              phase1=False)
    cycle_epochs: int = setting(None, "epochs of each cycle 2..M (default: --cycle_epochs_mult x --epochs, rounded "
                                "down, at least 1)", phase1=False)
    cycle_lr_mult: float = setting(None, f"--cycle_lr as a multiple of --lr (default {CYCLE_LR_RATIO:g}, the "
                                   f"paper's optimum; the thesis' PEFT grid x1..x6)", phase1=False, legacy=None)
    cycle_epochs_mult: float = setting(None, f"--cycle_epochs as a multiple of --epochs (default "
                                       f"{CYCLE_EPOCHS_RATIO:g}, the paper's optimum)", phase1=False, legacy=None)
    seed: int = setting(0, "member i's randomness is seeded from (seed, i)", phase1=True)


@dataclass(frozen=True)
class Evaluation:
    """evaluation beyond the test set (also: scripts/evaluate.py RUN_DIR)"""
    ood_dataset: typing.List[str] = setting(None, "out-of-distribution set (repeatable): imagefolder:DIR, "
                                            "hf:NAME_OR_PATH, cifar10:DIR, cifar100:DIR, svhn:DIR, or a synthetic "
                                            "one (noise, permuted, flipped)", many="append", metavar="SPEC",
                                            phase1=False, result=False)
    shift_dataset: typing.List[str] = setting(None, "shifted test set with labels (repeatable): the forms of "
                                              "--ood_dataset and cifar-c:DIR", many="append", metavar="SPEC",
                                              phase1=False, result=False)


@dataclass(frozen=True)
class Run:
    """run"""
    config: str = setting(None, "YAML file of settings (e.g. a run's config.yaml); flags on the command line "
                          "override it", metavar="FILE", phase1=False, result=False)
    output_dir: str = setting(None, "run directory (default runs/<method>/<dataset>-seed<seed>)", phase1=False,
                              result=False)
    cache_dir: str = setting("runs/cache", "shared phase-I / fine-tune cache and the embedded pre-trained "
                             "checkpoints", phase1=False, result=False)
    mixed_precision: str = setting(None, "default: the accelerate launch config's, else no. GPU only in practice: on "
                                   "CPU accelerate ignores fp16 and bf16 is very slow",
                                   choices=("no", "fp16", "bf16"), phase1=True)
    cpu: bool = setting(False, "train on the CPU even if a GPU is present", phase1=False, result=False)
    member_parallel: bool = setting(False, "with K processes, train different members on different processes "
                                    "(StarSSE rays, DE members; no gradient all-reduce); results are identical to a "
                                    "one-process run", phase1=False, result=False)
    channels_last: str = setting("auto", "channels_last memory format (auto: on CUDA, where it is faster)",
                                 choices=("auto", "on", "off"), phase1=True, legacy="auto", loop=True)
    sync_bn: bool = setting(True, "with DDP on GPUs, keep per-process BatchNorm statistics instead of SyncBatchNorm",
                            flag="--no_sync_bn", phase1=True, legacy=True, loop=True)
    with_tracking: bool = setting(False, "log to the --report_to trackers (set by --report_to)", phase1=False,
                                  result=False, loop=True)
    report_to: str = setting(None, "trackers (accelerate's log_with): TensorBoard logs go to "
                             "<output_dir>/tensorboard; giving one turns tracking on, none turns it off (default: "
                             "tensorboard with --with_tracking)",
                             choices=TRACKERS, phase1=False, result=False)
    quiet: bool = setting(False, "no progress bars", phase1=False, result=False, loop=True)


COMMON = (Data, Model, Optimisation, Ensemble, Evaluation, Run)


# ------------------------------------------------------------------------------------------------------------------
# the groups of single scripts

@dataclass(frozen=True)
class Freeze:
    """frozen stages (thesis section 5)"""
    freeze: str = setting("none", "freeze every stage before this one (ResNets: none, stage2, stage3, stage4, stage5, "
                          "head; other archs: --list_stages). scripts/starsse.py: in cycles 2..M; "
                          "scripts/peft_freeze.py: from the start (then it keys the member's cache entry)",
                          metavar="STAGE", phase1=False, legacy="none")
    frozen_bn: str = setting("eval", "BatchNorm of frozen stages: eval keeps running statistics fixed; train updates "
                             "them (the reference code)", choices=("eval", "train"), phase1=False, legacy="eval")


@dataclass(frozen=True)
class Standard:
    """Standard SSE"""
    standard: bool = setting(False, "Standard SSE: the first cycle too has the cycle schedule (no phase I)",
                             phase1=False, legacy=False)


@dataclass(frozen=True)
class Similarity:
    """similarity regulariser (SSE-RTD / SSE-MSE)"""
    similarity: str = setting("rtd", "the distance between representations: RTD or MSE", choices=("rtd", "mse"),
                              phase1=False)
    alpha: float = setting(None, "weight of the term (default: the thesis optimum: RTD 0.0316; MSE 20 for SSE, 10 "
                           "for StarSSE: THESIS_ALPHA)", phase1=False)
    layers: typing.List[str] = setting(["avgpool"], "any of the model's stage2..stageK and avgpool (pool), each "
                                       "optionally name:weight", many="+", phase1=False)
    star: bool = setting(False, "StarSSE-RTD / StarSSE-MSE: every cycle starts from model 1", phase1=False)
    reference: str = setting("model1", "the representations to stay close to: model1 (the thesis), in cycles 2..M; "
                             "pretrained, the pre-trained checkpoint's (thesis section 4's alternative), in cycles "
                             "2..M; pretrained_phase1, the pre-trained checkpoint's from phase I on (the thesis code's "
                             "'pretrain' mode: model 1 is regularised too, so it is trained apart from the plain phase "
                             "I, under a cache key that holds the term's settings)",
                             choices=("model1", "pretrained", "pretrained_phase1"), phase1=False, legacy="model1")
    rtd_card: int = setting(50, "most persistent H1 bars kept per direction", phase1=False)
    rtd_variant: str = setting("rtd-ae", "rtd-ae: the thesis' loss; exact: true RTD", choices=("rtd-ae", "exact"),
                               phase1=False)
    rtd_normalize: str = setting("sqrt_dim", "distance normalisation before the barcodes",
                                 choices=("sqrt_dim", "quantile", "none"), phase1=False)
    rtd_overlap: str = setting("off", "compute the barcodes in worker processes while the cross-entropy's backward "
                               "runs, then add the RTD term's own backward; the same loss and gradients as off. Off "
                               "by default: the second backward costs more than the overlap saves on a CPU "
                               "(benchmarks/sse_rtd_step_cost.py)", choices=("on", "off"), phase1=False, result=False,
                               legacy="off")
    rtd_pipeline: str = setting("off", "RTD one step stale: a step reads its bars (which distances are birth and death "
                                "edges) from the barcodes of its batch computed during the previous step, from the "
                                "features under that step's weights, in worker processes; no step waits for them "
                                "(but each epoch's first) and there is one backward, plus a forward without gradients "
                                "per step. Changes the gradient, so results (lib.core.losses.FeatureSimilarity); "
                                "--rtd_overlap then plays no part", choices=("on", "off"), phase1=False, legacy="off")


@dataclass(frozen=True)
class PredictionDiversity:
    """StarSSE-CE"""
    alpha: float = setting(0.1, "weight of the diversity term (thesis optimum 0.1)", phase1=False)
    mode: str = setting("incorrect", "all samples (thesis (1)) or only those member j gets wrong (thesis (2))",
                        choices=("all", "incorrect"), phase1=False)
    include_first: bool = setting(False, "model 1 can be drawn as member j too", phase1=False)


@dataclass(frozen=True)
class WeightOrthogonality:
    """StarSSE-WO"""
    alpha: float = setting(10.0, "weight of cos^2 (thesis grid -31.6 .. 31.6; script 10)", phase1=False)
    wo_space: str = setting("raw", "raw weights (thesis) or displacements from model 1", choices=("raw", "delta"),
                            phase1=False)


# the thesis' optimal weight of the similarity term, by (similarity, star): --alpha's default in scripts/sse_rtd.py
THESIS_ALPHA = {("rtd", False): 0.0316, ("rtd", True): 0.0316, ("mse", False): 20.0, ("mse", True): 10.0}


@dataclass(frozen=True)
class Script:
    """A training script's settings: COMMON + `groups`; `defaults`: settings whose default differs for this script
    (a value, or a function of the other settings); checkpoints: how many --pretrained checkpoints it takes (1, or
    "many": member i fine-tunes checkpoint i, so --members equals their number: Global DE)."""
    groups: tuple = ()
    defaults: dict = field(default_factory=dict)
    checkpoints: object = 1


SCRIPTS = {
    "finetune.py": Script(defaults={"members": 1}, checkpoints="many"),  # one model unless --members asks for more
    "peft_freeze.py": Script((Freeze,), {"members": 1, "freeze": "stage4"}, checkpoints="many"),
    "sse.py": Script((Standard,)),
    "starsse.py": Script((Freeze,)),
    "sse_rtd.py": Script((Similarity,), {"alpha": lambda v: THESIS_ALPHA[(v["similarity"], v["star"])]}),
    "starsse_ce.py": Script((PredictionDiversity,)),
    "starsse_wo.py": Script((WeightOrthogonality,)),
}
SCRIPT_GROUPS = {name: s.groups for name, s in SCRIPTS.items()}
SCRIPT_ONLY = tuple(dict.fromkeys(g for gs in SCRIPT_GROUPS.values() for g in gs))


# ------------------------------------------------------------------------------------------------------------------
# what is derived from the groups

def settings_of(*groups):
    """{name: dataclass field} of the groups, in order (a name in two groups: the later one's field)."""
    return {f.name: f for g in groups for f in fields(g)}


ALL = {}  # every setting of every training script: name -> field (alpha: from several groups, same metadata keys)
for _g in COMMON + SCRIPT_ONLY:
    ALL.update({f.name: f for f in fields(_g) if f.name not in ALL})

PHASE1_KEYS = tuple(name for name, f in ALL.items() if f.metadata["phase1"])
NON_RESULT_KEYS = frozenset(name for name, f in ALL.items() if not f.metadata["result"])
# runs recorded before a setting existed read as if it had this value
LEGACY = {name: f.metadata["legacy"] for name, f in ALL.items() if f.metadata["legacy"] is not ALWAYS}
LOOP_KEYS = tuple(name for name, f in ALL.items() if f.metadata["loop"])


def default(f):
    """A field's plain default (None for the per-dataset and derived ones)."""
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def dataset_default(name, dataset):
    """The per-dataset default of setting `name` for `dataset` (its plain default when it has none)."""
    f = ALL[name]
    per = f.metadata["per_dataset"]
    if per is None:
        return default(f)
    return per.get(dataset, per.get("*"))


def element_type(f):
    """int, float, str or bool: the type of one value of the field (of each element of a list field)."""
    t = f.type if not isinstance(f.type, str) else eval(f.type, vars(typing))
    return typing.get_args(t)[0] if typing.get_origin(t) in (list, typing.List) else t


def saved_defaults(groups=None):
    """Every setting's value for a run recorded before it existed: the legacy value, else the plain default
    (lib.evaluation reads old runs with these under their config.json)."""
    names = ALL if groups is None else settings_of(*groups)
    return {k: LEGACY.get(k, default(ALL[k])) for k in names}


LOOP_OFF = {"num_workers": 0, "weight_decay": 0.0}  # per-dataset loop settings, off unless given (tests, benchmarks)


def _loop_field(name):
    f = ALL[name]  # the batch size has no default here: the caller says which
    if f.metadata["per_dataset"] and name not in LOOP_OFF:
        return name, element_type(f)
    return name, element_type(f), field(default=LOOP_OFF.get(name, default(f)))


LoopSettings = dataclasses.make_dataclass(
    "LoopSettings", sorted(map(_loop_field, LOOP_KEYS), key=len), frozen=True,  # required fields first
    namespace={"__doc__": "What the training loop needs besides the model, the data and the schedule: the settings "
                          "marked loop=True above (lib/training/loop.py reads them).",
               "from_settings": classmethod(lambda cls, s: cls(**{k: getattr(s, k) for k in LOOP_KEYS}))})


class Settings:
    """Resolved settings: every default filled in and every value checked (lib/cli/parser.py). Read-only, so that
    what config.json records is what the run used (use `replace` for a changed copy)."""

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


# ------------------------------------------------------------------------------------------------------------------
# the flag reference (docs/flags.md)

def _default_text(f):
    per = f.metadata["per_dataset"]
    if per is not None:
        return "; ".join(f"{'others' if d == '*' else d}: {v}" for d, v in per.items())
    value = default(f)
    if f.metadata["flag"]:
        return f"{value} ({f.metadata['flag']} sets {not value})"
    return "-" if value is None else (" ".join(map(str, value)) if isinstance(value, list) else str(value))


def flag_of(f):
    return f.metadata["flag"] or f"--{f.name}"


def markdown():
    """docs/flags.md: every group's settings as a table, and which scripts take which groups."""
    out = ["# Flags of the training scripts", "",
           "Generated from `lib/settings/schema.py` by `python -m lib.settings.schema > docs/flags.md`; a test fails "
           "when this page and the schema differ. Every training script takes the common groups; the scripts below "
           "add their own. A flag may also be set in a `--config FILE` (YAML: `name: value`, a list for a flag "
           "that takes several values); the command line overrides the file, and both go through the same checks.",
           "", "**phase I**: the value keys the cached phase-I model (a run with another value fine-tunes its own). "
           "**re-run**: a run directory may be resumed with another value (the setting changes no result).", "",
           "| script | groups besides the common ones | its own defaults |", "|---|---|---|"]
    for name, script in SCRIPTS.items():
        own = ", ".join(f"`--{k}` {'(derived)' if callable(v) else v}" for k, v in script.defaults.items())
        out.append(f"| `scripts/{name}` | {', '.join(g.__doc__ for g in script.groups) or '-'} | {own or '-'} |")
    for g in COMMON + SCRIPT_ONLY:
        out += ["", f"## {g.__doc__}" + ("" if g in COMMON else f" (`{g.__name__}`)"), "",
                "| flag | type | default | choices | phase I | re-run | meaning |", "|---|---|---|---|---|---|---|"]
        for f in fields(g):
            m = f.metadata
            kind = element_type(f).__name__ + {"+": " list", "append": " (repeatable)"}.get(m["many"], "")
            choices = ", ".join(m["choices"]) if m["choices"] else ""
            help_text = m["help"].replace("|", "\\|")
            out.append(f"| `{flag_of(f)}` | {kind} | {_default_text(f)} | {choices} | "
                       f"{'yes' if m['phase1'] else ''} | {'' if m['result'] else 'yes'} | {help_text} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown())
