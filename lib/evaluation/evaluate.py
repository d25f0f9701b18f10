"""A run's members evaluated: the run's own keys from its saved predictions (lib.evaluation.results.core_metrics:
test metrics, selective prediction, calibration), out-of-distribution detection and accuracy under distribution shift
from its saved weights, as flat metrics.json keys (lib.evaluation.registry names them; lib.evaluation.uncertainty
holds the maths):

    result = evaluate_run(run, cfg, accelerator, ood=["noise", "svhn:/data/svhn"], shift=["cifar-c:/data/CIFAR-100-C"],
                          predictions=sets)
    write_metrics(run, result, member_digests(run, n), sets)        # lib.evaluation.results: the one writer

Eval sets come from lib.data.tasks.load_eval_set(spec, cfg, labelled) in the run's test transform. Every member's
logits on a set are predicted in one pass over it (lib.evaluation.predict.predict_set), each sample once whatever the
number of processes.
"""
import os
import stat
from collections import namedtuple

import numpy as np
import torch
from scipy.special import softmax

from lib.data import tasks as data
from lib.evaluation import registry as R
from lib.evaluation import results, uncertainty
from lib.evaluation.predict import memory_format, predict_set
from lib.infra.errors import UserError, check
from lib.infra.locks import lock_run_dir
from lib.models.backbones import build_model
from lib.settings.schema import LoopSettings, Settings, saved_defaults


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


LoadedSet = namedtuple("LoadedSet", "name parts note spec", defaults=(None,))
LoadedSet.__doc__ = """An evaluation set ready to predict: name, parts [(part name, dataset, labels or None)], note
(what was done to its images, or None), spec (as given: 'noise', 'svhn:/data/svhn')."""


def load_sets(specs, cfg, labelled, task=None):
    """[LoadedSet] of the eval sets named by `specs` (lib.data.tasks.load_eval_set in the test transform of the run's
    task, loaded once), names unique."""
    sets = []
    for spec in specs:
        es = data.load_eval_set(spec, cfg, labelled, task=task)
        sets.append(LoadedSet(es.name, [(p.name, p.dataset, p.labels) for p in es.parts], es.note, spec))
    names = [s.name for s in sets]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UserError(f"two evaluation sets are named {dup[0]}: give each set its own folder name")
    return sets


def evaluate_run(run, cfg, accelerator, ood=(), shift=(), members=None, arrays=None, reliability=None, log=None,
                 local=False, sets=None, task=None, predictions=None):
    """Every key of metrics.json that a run's members give (strict: None where undefined): the run's own keys
    (lib.evaluation.results.core_metrics: the test metrics, sel/*, cal/*), and ood/<set>/* and shift/<set>/* of the
    evaluation sets. Twelve parameters, as evaluate.py, the end of training and the tests each need a few of them:

    run: a lib.runs.rundir.RunDir; cfg: its settings (lib.settings.schema.Settings of its config); ood / shift: SPECs
    of lib.data.tasks.load_eval_set; members: evaluate members 1..members (default: every finished one); arrays: the
    members' predictions when they are not (yet) the saved ones ({probs, logits, val_probs, val_logits}, evaluate.py
    --from_weights); reliability: a PNG path for the reliability diagram (written by the main process); log: where
    notes go (default accelerator.print); local: this process predicts every sample alone (member-parallel runs, a
    one-process script); sets: {"ood": [...], "shift": [...]} of LoadedSet already loaded (tests; default: loaded from
    the specs); task: the run's lib.data.tasks.TaskData when it is already loaded, else it is loaded here if needed;
    predictions: a list that receives a lib.evaluation.results.SetPredictions per evaluation set (for write_metrics
    to save). ood/* and shift/* rebuild the members from their weights and predict each set in one pass."""
    log = log or accelerator.print
    n = members or run.completed_members()
    arrays = results.saved_arrays(run, n, arrays)
    probs, logits = arrays["probs"], arrays["logits"]
    labels = np.load(run.file("labels.npy"))
    result = results.core_metrics(run, n, arrays, log)
    if reliability is not None and accelerator.is_main_process:
        curves = {"ensemble": (probs, labels)}
        t = result.get(R.TS_TEMPERATURE.key)
        if t is not None:
            curves[f"after TS (T = {t:.2f})"] = (uncertainty.tempered_probs(logits, t), labels)
        uncertainty.plot_reliability(curves, reliability, title=f"{run.config.get('method')}: {n} members")
    if not ood and not shift and not sets:
        return result

    if sets is None:
        task = task or data.load_task(cfg)
        sets = {"ood": load_sets(ood, cfg, False, task), "shift": load_sets(shift, cfg, True, task)}
    predictions = [] if predictions is None else predictions
    models = member_models(run, cfg.arch, probs.shape[-1], n, accelerator.device,
                           memory_format(LoopSettings.from_settings(cfg), accelerator), cfg.image_size)
    predict = lambda ds: predict_set(accelerator, models, ds, cfg, local)[1]  # the logits
    if sets["ood"]:
        if logits is None:
            log("note: the run has no saved test logits: the members predict the test set again for ood/*")
            logits = predict((task or data.load_task(cfg)).test)
        results.check_finite(logits, "the test set")
        in_scores = uncertainty.ood_scores(logits=logits)
        for s in map(lambda s: LoadedSet(*s), sets["ood"]):
            if s.note:
                log(f"note: OOD set {s.name}: {s.note}")
            parts = {part: (predict(ds), None) for part, ds, _y in s.parts}
            out = np.concatenate([lg for lg, _y in parts.values()], axis=1) if parts else \
                np.zeros((n, 0, probs.shape[-1]), np.float32)
            check(out.shape[1] > 0, f"OOD set {s.name} is empty")
            results.check_finite(out, f"OOD set {s.name}")
            result.update(R.within(R.OOD, uncertainty.ood_report(in_scores, uncertainty.ood_scores(logits=out)),
                                   set=s.name))
            result[R.OOD_SAMPLES.of(set=s.name)] = int(out.shape[1])
            predictions.append(results.SetPredictions("ood", s.name, s.spec, s.note, parts))
    for s in map(lambda s: LoadedSet(*s), sets["shift"]):
        if s.note:
            log(f"note: shifted set {s.name}: {s.note}")
        parts = {}
        for part, ds, y in s.parts:
            check(y is not None, f"shifted set {s.name} ({part}) has no labels")
            y = np.asarray(y, dtype=np.int64)
            check(len(y) == 0 or (y.min() >= 0 and y.max() < probs.shape[-1]),
                  f"shifted set {s.name} ({part}) has labels outside the run's {probs.shape[-1]} classes")
            lg = predict(ds)
            results.check_finite(lg, f"shifted set {s.name} ({part})")
            parts[part] = (lg, y)
        check(any(len(y) for _lg, y in parts.values()), f"shifted set {s.name} is empty")
        report = uncertainty.shift_report({p: (softmax(lg.astype(np.float64), axis=-1), y)
                                           for p, (lg, y) in parts.items()})
        result.update(R.within(R.SHIFT, report, set=s.name))
        predictions.append(results.SetPredictions("shift", s.name, s.spec, s.note, parts))
    return result
