"""A finished run beyond its test accuracy (issue 16): selective prediction and calibration from its saved test (and
validation) predictions, out-of-distribution detection and accuracy under distribution shift from its saved
weights, as flat metrics.json keys grouped as torch-uncertainty's (lib/evaluation/uncertainty.py holds the maths):

    extra = evaluate_run(run, cfg, accelerator, ood=["noise", "svhn:/data/svhn"], shift=["cifar-c:/data/CIFAR-100-C"])
    sel/aurc, sel/acc@80 ...               the ensemble's risk-coverage curve (confidence: max mean probability)
    cal/aece, cal/ts/temperature ...       adaptive ECE; temperature scaling fitted on the validation split
    ood/<set>/<score>/auroc ...            <score> in msp, entropy, mutual_information, energy, max_logit
    shift/<set>/acc ...                    per shifted set, the mean over its parts, and per part

Eval sets come from lib.data.tasks.load_eval_set(spec, cfg, labelled) in the run's test transform. Every member's logits
on a set are predicted in one pass over it (lib.evaluation.predict.predict_many), each sample once whatever the number of
processes.
"""
import os
import stat

import numpy as np
import torch
from scipy.special import softmax

from lib.data import tasks as data
from lib.evaluation import metrics, uncertainty
from lib.evaluation.predict import memory_format, predict_many
from lib.infra.errors import UserError, check
from lib.infra.files import load_json, save_json
from lib.infra.locks import lock_run_dir
from lib.models.backbones import build_model
from lib.settings.schema import LoopSettings, Settings, saved_defaults


def prefixed(prefix, d):
    return {prefix + k: v for k, v in d.items()}


def run_settings(run, **overrides):
    """The settings `run` was made with, with overrides. A run older than a setting gets the value that reproduces
    it (lib.settings.schema.LEGACY), else the setting's default."""
    return Settings({**saved_defaults(), **run.config, **overrides})


def writable(path):
    """Whether we may write into the folder: the file system allows it and its owner's write bit is set (so that
    `chmod -w` keeps a run as it is, even for root, whom permissions do not stop)."""
    return os.access(path, os.W_OK) and bool(os.stat(path).st_mode & stat.S_IWUSR)


def lock_for_writing(run):
    """Hold the run directory's lock (lib.infra.locks) while this process writes into it: a run still training there is
    refused with one line. None (nothing to lock) for a read-only directory."""
    return lock_run_dir(run.path) if writable(run.path) else None


def merge_metrics(run, new, drop=()):
    """metrics.json = its current keys (except those starting with a `drop` prefix) updated with `new`, atomically.
    A damaged metrics.json is replaced."""
    path = run.file("metrics.json")
    try:
        old = load_json(path) if os.path.exists(path) else {}
    except (OSError, ValueError):
        old = {}
    merged = {k: v for k, v in old.items() if not k.startswith(tuple(drop))} if drop else dict(old)
    merged.update(new)
    save_json(path, merged)
    return merged


def saved(run, n, kind):
    """(members, samples, classes) of the members' saved `kind` arrays (logits, val_logits, ...), or None when a
    member lacks the file (runs made before it existed)."""
    paths = [getattr(run, kind)(i) for i in range(1, n + 1)]
    if not all(os.path.exists(p) for p in paths):
        return None
    return np.stack([np.load(p) for p in paths])


def check_finite(array, what):
    """Refuse NaN/inf predictions (damaged weights): nothing computed from them may replace a good result."""
    if not np.isfinite(array).all():
        bad = [i + 1 for i, a in enumerate(array) if not np.isfinite(a).all()]
        raise UserError(f"the predictions of member(s) {bad} on {what} are not finite (NaN or inf): their weights are "
                        f"damaged; nothing was written")


def member_models(run, arch, num_classes, n, device, fmt=torch.contiguous_format, image_size=None):
    """Members 1..n rebuilt from their weights, each file checked against its record's digest first."""
    models = []
    for i in range(1, n + 1):
        try:
            state = run.load_member_weights(i)
        except UserError:
            raise
        except Exception as e:  # a truncated or foreign file in a run without digests
            raise UserError(f"{run.weights(i)} could not be read ({type(e).__name__}: {str(e).splitlines()[0][:200]})")
        model = build_model(arch, num_classes, image_size)  # fixed-size models (ViT, Swin): the run's size
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise UserError(f"{run.weights(i)} does not fit --arch {arch} with {num_classes} classes "
                            f"({str(e).splitlines()[0][:200]})")
        models.append(model.to(device, memory_format=fmt))
    return models


def predict_logits(accelerator, models, dataset, cfg, local=False):
    """(members, samples, classes) float32 logits of every model on `dataset`, in one pass."""
    loader = data.test_loader(dataset, cfg.eval_batch_size, min(cfg.num_workers, 4))
    fmt = memory_format(LoopSettings.from_settings(cfg), accelerator)
    _probs, logits = predict_many(accelerator, models, loader, local=local, memory_format=fmt, logits=True)
    return logits


def load_sets(specs, cfg, labelled, task=None):
    """[(name, [(part name, dataset, labels or None)], note)] of the eval sets named by `specs`
    (lib.data.tasks.load_eval_set in the test transform of the run's task, loaded once), names unique."""
    sets = []
    for spec in specs:
        es = data.load_eval_set(spec, cfg, labelled, task=task)
        parts = [(p.name, p.dataset, p.labels) for p in es.parts]
        sets.append((es.name, parts, es.note))
    names = [s[0] for s in sets]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UserError(f"two evaluation sets are named {dup[0]}: give each set its own folder name")
    return sets


def evaluate_run(run, cfg, accelerator, ood=(), shift=(), members=None, reliability=None, log=None, local=False,
                 sets=None, probs=None, logits=None, val_logits=None, task=None):
    """The issue-16 keys of a finished run, as a flat dict for metrics.json (strict: None where undefined).

    run: a lib.runs.rundir.RunDir; cfg: its settings (lib.settings.schema.Settings of its config); ood / shift: SPECs of
    lib.data.tasks.load_eval_set; members: evaluate members 1..members (default: every finished one); reliability: a PNG
    path for the reliability diagram (written by the main process); log: where notes go (default accelerator.print);
    local: this process predicts every sample alone (member-parallel runs, a one-process script).
    sets: {"ood": [...], "shift": [...]} already loaded by load_sets (tests; default: loaded from the specs).
    probs / logits / val_logits: the members' predictions when they are not (yet) the saved ones (--from_weights).
    task: the run's lib.data.tasks.TaskData when it is already loaded (Experiment.data), else it is loaded here if
    needed. sel/* and cal/* need only saved arrays; cal/ts/* needs the members' validation logits (a run made with a
    validation split) and test logits; ood/* and shift/* rebuild the members from their weights."""
    log = log or accelerator.print
    n = members or run.completed_members()
    labels = np.load(run.file("labels.npy"))
    probs = run.load_probs(n) if probs is None else probs
    check_finite(probs, "the test set")
    logits = saved(run, n, "logits") if logits is None else logits
    val_logits = saved(run, n, "val_logits") if val_logits is None else val_logits
    val_labels = np.load(run.file("val_labels.npy")) if os.path.exists(run.file("val_labels.npy")) else None
    result = prefixed("sel/", uncertainty.selective_report(probs, labels))
    if val_logits is None or val_labels is None or logits is None:
        log("note: cal/ts (temperature scaling) skipped: the run has no validation logits "
            "(train it with --val_split F or --val_split_name to have them)")
        val_logits = None
    result.update(prefixed("cal/", uncertainty.calibration_report(probs, labels, logits, val_logits, val_labels)))
    if reliability is not None and accelerator.is_main_process:
        curves = {"ensemble": (probs, labels)}
        if "cal/ts/temperature" in result:
            t = result["cal/ts/temperature"]
            curves[f"after TS (T = {t:.2f})"] = (uncertainty.tempered_probs(logits, t), labels)
        uncertainty.plot_reliability(curves, reliability, title=f"{run.config.get('method')}: {n} members")
    if not ood and not shift and not sets:
        return result

    if sets is None:
        task = task or data.load_task(cfg)
        sets = {"ood": load_sets(ood, cfg, False, task), "shift": load_sets(shift, cfg, True, task)}
    models = member_models(run, cfg.arch, probs.shape[-1], n, accelerator.device,
                           memory_format(LoopSettings.from_settings(cfg), accelerator), cfg.image_size)
    if sets["ood"]:
        if logits is None:
            log("note: the run has no saved test logits: the members predict the test set again for ood/*")
            logits = predict_logits(accelerator, models, (task or data.load_task(cfg)).test, cfg, local)
        check_finite(logits, "the test set")
        in_scores = uncertainty.ood_scores(logits=logits)
        for name, parts, note in sets["ood"]:
            if note:
                log(f"note: OOD set {name}: {note}")
            out = [predict_logits(accelerator, models, ds, cfg, local) for _p, ds, _y in parts]
            out = np.concatenate(out, axis=1) if out else np.zeros((n, 0, probs.shape[-1]), np.float32)
            check(out.shape[1] > 0, f"OOD set {name} is empty")
            check_finite(out, f"OOD set {name}")
            out_scores = uncertainty.ood_scores(logits=out)
            result.update(prefixed(f"ood/{name}/", uncertainty.ood_report(in_scores, out_scores)))
            result[f"ood/{name}/samples"] = int(out.shape[1])
    for name, parts, note in sets["shift"]:
        if note:
            log(f"note: shifted set {name}: {note}")
        arrays = {}
        for part, ds, y in parts:
            check(y is not None, f"shifted set {name} ({part}) has no labels")
            y = np.asarray(y, dtype=np.int64)
            check(len(y) == 0 or (y.min() >= 0 and y.max() < probs.shape[-1]),
                  f"shifted set {name} ({part}) has labels outside the run's {probs.shape[-1]} classes")
            lg = predict_logits(accelerator, models, ds, cfg, local)
            check_finite(lg, f"shifted set {name} ({part})")
            arrays[part] = (softmax(lg.astype(np.float64), axis=-1), y)
        check(any(len(y) for _p, y in arrays.values()), f"shifted set {name} is empty")
        result.update(prefixed(f"shift/{name}/", uncertainty.shift_report(arrays)))
    return result


def summary_lines(result):
    """A few printable lines of the issue-16 keys in `result` (those present)."""
    g = lambda k, f="{:.4f}": "-" if result.get(k) is None else f.format(result[k])
    lines = []
    if "sel/aurc" in result:
        lines.append(f"selective: AURC {g('sel/aurc')} | acc@80 {g('sel/acc@80', '{:.2f}')} acc@90 "
                     f"{g('sel/acc@90', '{:.2f}')} acc@95 {g('sel/acc@95', '{:.2f}')} | adaptive ECE {g('cal/aece')}")
    if "cal/ts/temperature" in result:
        lines.append(f"after TS (T = {g('cal/ts/temperature', '{:.3f}')}): ECE {g('cal/ts/ece')} NLL "
                     f"{g('cal/ts/nll')} adaptive ECE {g('cal/ts/aece')}")
    for name in sorted({k.split("/")[1] for k in result if k.startswith("ood/")}):
        cells = [f"{s} {g(f'ood/{name}/{s}/auroc', '{:.3f}')}/{g(f'ood/{name}/{s}/fpr95', '{:.3f}')}"
                 for s in uncertainty.SCORES if f"ood/{name}/{s}/auroc" in result]
        lines.append(f"OOD {name} (AUROC/FPR95): " + " | ".join(cells))
    for name in sorted({k.split("/")[1] for k in result if k.startswith("shift/")}):
        lines.append(f"shift {name} ({result.get(f'shift/{name}/n_parts')} part(s)): acc "
                     f"{g(f'shift/{name}/acc', '{:.2f}')} NLL {g(f'shift/{name}/nll')} ECE {g(f'shift/{name}/ece')}")
    return lines


# the test metrics that get val_* twins in metrics.json
VAL_KEYS = ("member_accuracy", "avg_member_accuracy", "ensemble_accuracy", "ensemble_accuracy_by_size", "diversity",
            "nll", "ece", "brier")


def run_summary(run, probs, labels, config, val_probs=None):
    """metrics.json of a run: lib.evaluation.metrics.summarize plus what the report needs from the config and member
    records, and the val_* twins of the test metrics when the members have validation probabilities (val_probs: when
    they are not (yet) the saved ones)."""
    result = metrics.summarize(probs, labels)
    n = len(probs)
    if val_probs is None and all(os.path.exists(run.val_probs(i)) for i in range(1, n + 1)):
        val_probs = run.load_probs(n, "val_probs")
    if os.path.exists(run.file("val_labels.npy")) and val_probs is not None:
        val = metrics.summarize(val_probs, np.load(run.file("val_labels.npy")))
        result.update({f"val_{k}": val[k] for k in VAL_KEYS})
    records = [load_json(run.record(i)) for i in range(1, n + 1)]
    result.update(method=config["method"], seed=config["seed"], dataset=config["dataset"],
                  member_seconds=[r["seconds"] for r in records],
                  member_seconds_per_epoch=[r["seconds_per_epoch"] for r in records],
                  member_trainable_fraction=[r["trainable_fraction"] for r in records])
    return result
