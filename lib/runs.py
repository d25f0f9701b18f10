"""Runs on disk: one directory per experiment; every file written to a temporary name, then renamed. This module
is the one place that writes and reads runs (RunDir, open_run, find_runs, run_label, write_csv, run_summary).

    <output_dir>/config.json               the settings (a re-run with other settings is refused)
    <output_dir>/config.yaml               the same settings as flags: `--config config.yaml` repeats the run
    <output_dir>/member_<i>.safetensors    member i's weights (BatchNorm buffers included), written when its cycle ends
    <output_dir>/member_<i>_probs.npy      member i's test-set probabilities (samples, classes), float32
    <output_dir>/member_<i>_logits.npy     member i's test-set logits (samples, classes), float32
    <output_dir>/member_<i>_val_probs.npy  the same on the validation split (with --val_split / --val_split_name),
    <output_dir>/member_<i>_val_logits.npy   and val_labels.npy
    <output_dir>/member_<i>.json           member i's record (epochs, seconds, trainable fraction, accuracy, history,
                                           and the sha256 of each of the member's files and of the record itself)
    <output_dir>/member_<i>.resume.pt      the member in training: weights, optimizer, next epoch/step (deleted when done)
    <output_dir>/labels.npy                test labels in the order of the probabilities
    <output_dir>/metrics.json              lib.metrics.summarize of all members (strict JSON: undefined values are null)
    <output_dir>/.lock                     held by the run writing the directory (lib.locks)
"""
import csv
import errno
import glob
import hashlib
import json
import math
import os
import shutil
import tempfile

import numpy as np
import torch
import yaml
from safetensors.torch import load_file, save_file

from . import metrics
from .errors import UserError, check

# arguments that do not change any result, so a re-run may change them (num_workers: see config_diff)
NON_RESULT_ARGS = {"with_tracking", "output_dir", "cache_dir", "data_dir", "download", "cpu", "eval_batch_size",
                   "quiet", "member_parallel", "config", "report_to", "ood_dataset", "shift_dataset", "list_stages",
                   "rtd_overlap"}  # rtd_overlap: the same loss and gradients, another order of work
# Everything that changes a fine-tuned member (or its cached test and validation predictions) is in its cache key:
# these settings, the checkpoint's content, the member index, and how many processes train it together.
PHASE1_KEYS = ("dataset", "dataset_name", "data_files", "image_column", "label_column", "train_split", "test_split",
               "train_dir", "test_dir", "val_split", "val_split_name", "labels_per_class", "augment", "auto_augment",
               "reprob", "image_size", "arch", "drop_path", "compile", "compile_mode", "seed", "epochs", "lr",
               "weight_decay", "momentum", "batch_size", "lr_granularity", "warmup_epochs", "warmup_lr", "clip_grad",
               "label_smoothing", "mixup", "cutmix", "optimizer", "mixed_precision", "channels_last", "data_pipeline",
               "num_workers", "sync_bn", "compile_backend")
# ... and these do not: where things are, how they are shown, evaluation beyond the test set, and the cycles
NOT_PHASE1_KEYS = ("config", "data_dir", "download", "output_dir", "cache_dir", "eval_batch_size", "quiet",
                   "with_tracking", "report_to", "cpu", "member_parallel", "list_stages", "ood_dataset",
                   "shift_dataset", "pretrained", "members", "cycle_lr", "cycle_epochs", "cycle_lr_mult", "method")
MEMBER_FILES = ("weights", "probs", "logits", "val_probs", "val_logits")  # a member's files besides its record


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path, write_fn):
    """write_fn(tmp_path) writes the file; it then replaces `path` in one rename (never a half-written file), with the
    usual permissions. An OSError names `path`, not the temporary file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=os.path.basename(path) + ".", suffix=".tmp")
    os.close(fd)
    try:
        write_fn(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp (and safetensors) create 0600
        os.replace(tmp, path)
    except OSError as e:
        raise OSError(e.errno, e.strerror, path) from e
    except RuntimeError as e:  # C++ writers (torch.save) report a full disk as "iostream error"
        if shutil.disk_usage(folder).free < (1 << 20):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path) from e
        raise
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def strict(obj):
    """obj with every NaN/inf float replaced by None, for strict JSON (a value that does not exist is null)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    return obj


def save_json(path, obj):
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(strict(obj), f, indent=2, sort_keys=True, allow_nan=False)
            f.write("\n")
    atomic_write(path, write)


def load_json(path):
    with open(path) as f:
        return json.load(f)


def save_yaml(path, obj):
    def write(tmp):
        with open(tmp, "w") as f:
            yaml.safe_dump(obj, f, sort_keys=True, default_flow_style=False)
    atomic_write(path, write)


def save_weights(path, state_dict):
    state = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    atomic_write(path, lambda tmp: save_file(state, tmp))


def load_weights(path):
    return load_file(path, device="cpu")


def save_array(path, array):
    def write(tmp):
        with open(tmp, "wb") as f:
            np.save(f, np.asarray(array))
    atomic_write(path, write)


def save_torch(path, obj):
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def file_sha256(path):
    """sha256 of a file's content (member files in records, pre-trained checkpoints in phase-I cache keys)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def copy_file(src, dst):
    """Put a copy of `src` at `dst`, atomically (a copy, not a link: damage to one never spreads to the other)."""
    atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))


def record_digest(record):
    """sha256 of a member record's content, without its own digest field."""
    body = {k: v for k, v in record.items() if k != "record_sha256"}
    return hashlib.sha256(json.dumps(strict(body), sort_keys=True).encode()).hexdigest()


# arguments added after runs were made, with the value that reproduces the older behaviour: a run directory written
# before they existed resumes when they keep that value
LATER_ARGS = {"freeze": "none", "frozen_bn": "eval", "cycle_lr_mult": None, "data_pipeline": "torchvision",
              "channels_last": "auto", "sync_bn": True, "dataset_name": None, "data_files": None,
              "image_column": None, "label_column": None, "train_split": "train", "test_split": "test",
              "train_dir": None, "test_dir": None, "val_split": None, "val_split_name": None, "auto_augment": None,
              "reprob": 0.0, "drop_path": 0.0, "compile": False, "compile_mode": "default",
              "compile_backend": "inductor", "optimizer": "sgd", "warmup_epochs": 0.0, "warmup_lr": 0.0,
              "clip_grad": None, "label_smoothing": 0.0, "mixup": 0.0, "cutmix": 0.0, "standard": False,
              "reference": "model1", "rtd_overlap": "off"}


def config_diff(old, new):
    keys = (set(old) | set(new)) - NON_RESULT_ARGS
    if old.get("data_pipeline") == new.get("data_pipeline") == "device":
        keys.discard("num_workers")  # workers change the random streams of the torchvision pipeline only
    same = lambda k: old.get(k) == new.get(k) or (k not in old and k in LATER_ARGS and new.get(k) == LATER_ARGS[k])
    return sorted(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if not same(k))


class RunDir:
    """The directory of one experiment. Only the writing process (see lib.experiment) writes; every process may read.

    A directory holding a different run is refused, unless nothing was trained in it yet (no member file and no
    resume point: e.g. a run that stopped on bad input), whose settings are then replaced."""

    def __init__(self, path, config, is_main=True):
        self.path, self.is_main = path, is_main
        stale = self.check(path, config)
        if is_main:
            os.makedirs(path, exist_ok=True)
            cfg_path = os.path.join(path, "config.json")
            if stale or not os.path.exists(cfg_path):
                save_yaml(os.path.join(path, "config.yaml"), {k: v for k, v in config.items() if k != "config"})
                save_json(cfg_path, config)
        self.config = config

    @staticmethod
    def check(path, config):
        """Refuse `path` if it holds another run (read only; UserError). True when it holds settings that differ but
        nothing trained, which may be replaced."""
        cfg_path = os.path.join(path, "config.json")
        check(not os.path.exists(path) or os.path.isdir(path), f"--output_dir {path} exists and is not a folder")
        trained = os.path.isdir(path) and any(f.startswith("member_") for f in os.listdir(path))
        if os.path.exists(cfg_path):
            try:
                old = load_json(cfg_path)
            except (OSError, ValueError) as e:
                raise UserError(f"{cfg_path} is unreadable ({e}); move it away or choose another --output_dir")
            diff = config_diff(old, config)
            check(not diff or not trained, f"--output_dir {path} holds a different run ({'; '.join(diff[:4])}); "
                                           f"re-run with the same arguments to resume, or choose another --output_dir")
            return bool(diff)
        check(not trained, f"--output_dir {path} holds member files but no config.json; choose another --output_dir")
        return False

    def clean(self):
        """Remove what a killed process may have left (call while holding the directory's lock): orphaned temporary
        files, and resume points of members that were finished just before the kill."""
        for tmp in glob.glob(os.path.join(glob.escape(self.path), "*.tmp")):
            os.remove(tmp)
        for resume in glob.glob(os.path.join(glob.escape(self.path), "member_*.resume.pt")):
            i = int(os.path.basename(resume)[len("member_"):-len(".resume.pt")])
            if self.done(i):
                os.remove(resume)

    def file(self, name):
        return os.path.join(self.path, name)

    def weights(self, i):
        return self.file(f"member_{i}.safetensors")

    def probs(self, i):
        return self.file(f"member_{i}_probs.npy")

    def logits(self, i):
        return self.file(f"member_{i}_logits.npy")

    def val_probs(self, i):
        return self.file(f"member_{i}_val_probs.npy")

    def val_logits(self, i):
        return self.file(f"member_{i}_val_logits.npy")

    def record(self, i):
        return self.file(f"member_{i}.json")

    def resume(self, i):
        return self.file(f"member_{i}.resume.pt")

    def member_files(self, i):
        """{kind: path} of member i's files that exist, besides its record (MEMBER_FILES kinds)."""
        paths = {k: getattr(self, k)(i) for k in MEMBER_FILES}
        return {k: p for k, p in paths.items() if os.path.exists(p)}

    def done(self, i):
        return all(os.path.exists(f) for f in (self.weights(i), self.probs(i), self.record(i)))

    def completed_members(self):
        i = 0
        while self.done(i + 1):
            i += 1
        return i

    def write_member(self, i, arrays, weights, record):
        """Member i's files (arrays: {kind: array} of MEMBER_FILES kinds besides weights), then its record with their
        sha256 digests, written last: a member exists (done) only once its record is there."""
        save_weights(self.weights(i), weights)
        for kind, array in arrays.items():
            save_array(getattr(self, kind)(i), array)
        self.seal_member(i, record)

    def seal_member(self, i, record):
        """Member i's record with the sha256 digests of its files as they are now on disk."""
        self.write_member_record(i, dict(record, sha256={k: file_sha256(p) for k, p in self.member_files(i).items()}))

    def write_member_record(self, i, record):
        """Member i's record (e.g. copied from the cache with a few fields changed), with its own digest renewed."""
        record = {k: v for k, v in record.items() if k != "record_sha256"}
        save_json(self.record(i), dict(record, record_sha256=record_digest(record)))

    def verify_member(self, i):
        """Member i's record, after checking it and each file it lists against their sha256 digests. A damaged,
        truncated or altered file gives one line naming it and how to recover."""
        recover = (f"delete member {i}'s files (member_{i}.* and member_{i}_*) in {self.path} and re-run the same "
                   f"command: the member is trained again, identically")
        try:
            record = load_json(self.record(i))
        except (OSError, ValueError):
            raise UserError(f"{self.record(i)} is damaged (not readable JSON); {recover}")
        if "record_sha256" in record:
            check(record_digest(record) == record["record_sha256"], f"{self.record(i)} is damaged (its content does "
                                                                    f"not match its digest); {recover}")
        for kind, digest in record.get("sha256", {}).items():
            path = getattr(self, kind)(i)
            check(os.path.exists(path), f"{path} is missing; {recover}")
            check(file_sha256(path) == digest, f"{path} is damaged (its content does not match the digest in "
                                               f"{os.path.basename(self.record(i))}); {recover}")
        return record

    def load_member_weights(self, i):
        self.verify_member(i)
        return load_weights(self.weights(i))

    def load_probs(self, members=None, kind="probs"):
        n = self.completed_members() if members is None else members
        return np.stack([np.load(getattr(self, kind)(i)) for i in range(1, n + 1)])


def open_run(path, min_members=1):
    """The RunDir at `path` (read only), checked to hold at least `min_members` finished members and the labels."""
    check(os.path.isdir(path), f"run directory not found: {path}")
    cfg = os.path.join(path, "config.json")
    check(os.path.isfile(cfg), f"not a run directory (no config.json): {path}")
    try:
        config = load_json(cfg)
    except ValueError as e:
        raise UserError(f"{cfg} is unreadable ({e})")
    run = RunDir(path, config, is_main=False)
    n = run.completed_members()
    check(n >= min_members, f"{path} has {n} finished member(s); this needs at least {min_members}")
    check(os.path.isfile(run.file("labels.npy")), f"{path} has no labels.npy")
    return run


def find_runs(paths):
    """Run directories named in `paths` (any folder with a config.json), and the finished runs (config.json +
    metrics.json) found below the others, e.g. a sweep's output root; sorted, each once."""
    found = []
    for p in paths:
        check(os.path.isdir(p), f"not a directory: {p}")
        if os.path.isfile(os.path.join(p, "config.json")):
            found.append(p)
            continue
        for root, _dirs, files in os.walk(p):
            if "config.json" in files and "metrics.json" in files:
                found.append(root)
    check(found, f"no finished run (config.json + metrics.json) under {' '.join(map(str, paths))}")
    return sorted({os.path.normpath(f) for f in found})


def run_label(config, group_by=("method",)):
    """A run's table row: the first key's value, then key=value for the others ('StarSSE cycle_lr=0.1')."""
    return " ".join([str(config.get(group_by[0]))] + [f"{k}={config.get(k)}" for k in group_by[1:]])


def run_info(run, group_by=("method",)):
    c = run.config
    return {"run_dir": run.path, "group": run_label(c, group_by), "method": c.get("method"), "seed": c.get("seed")}


def write_csv(path, rows, columns):
    """rows (dicts) as a CSV file with these columns (other keys ignored), atomically."""
    def write(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
    atomic_write(path, write)


# the test metrics that get val_* twins in metrics.json
VAL_KEYS = ("member_accuracy", "avg_member_accuracy", "ensemble_accuracy", "ensemble_accuracy_by_size", "diversity",
            "nll", "ece", "brier")


def run_summary(run, probs, labels, config, val_probs=None):
    """metrics.json of a run: lib.metrics.summarize plus what the report needs from the config and member records,
    and the val_* twins of the test metrics when the members have validation probabilities (val_probs: when they
    are not (yet) the saved ones)."""
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
