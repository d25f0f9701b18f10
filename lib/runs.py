"""Runs on disk: one directory per experiment; every file written to a temporary name, then renamed. This module
is the one place that writes and reads runs (RunDir, open_run, find_runs, run_label, write_csv, run_summary).

    <output_dir>/config.json            the settings (a re-run with other settings is refused)
    <output_dir>/config.yaml            the same settings as flags: `--config config.yaml` repeats the run
    <output_dir>/member_<i>.safetensors  member i's weights (BatchNorm buffers included), written when its cycle ends
    <output_dir>/member_<i>_probs.npy    member i's test-set probabilities (samples, classes), float32
    <output_dir>/member_<i>.json         member i's record (epochs, seconds, trainable fraction, accuracy)
    <output_dir>/member_<i>.resume.pt    the member being trained: weights, optimizer, next epoch (deleted when done)
    <output_dir>/labels.npy              test labels in the order of the probabilities
    <output_dir>/metrics.json            lib.metrics.summarize of all members
"""
import csv
import json
import os
import shutil
import tempfile

import numpy as np
import torch
import yaml
from safetensors.torch import load_file, save_file

from . import metrics
from .errors import UserError, check

# arguments that do not change any result, so a re-run may change them
NON_RESULT_ARGS = {"with_tracking", "num_workers", "output_dir", "cache_dir", "data_dir", "download", "cpu",
                   "eval_batch_size", "quiet", "member_parallel", "config", "report_to"}


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path, write_fn):
    """write_fn(tmp_path) writes the file; it then replaces `path` in one rename (never a half-written file)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=os.path.basename(path) + ".", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the usual permissions
    try:
        write_fn(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_json(path, obj):
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
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


def link_or_copy(src, dst):
    """Put `src` at `dst` (hard link where the file system allows, else a copy), atomically."""
    def write(tmp):
        os.remove(tmp)
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
    atomic_write(dst, write)


# arguments added after runs were made, with the value that reproduces the older behaviour: a run directory written
# before they existed resumes when they keep that value
LATER_ARGS = {"freeze": "none", "frozen_bn": "eval", "cycle_lr_mult": None, "data_pipeline": "torchvision",
              "channels_last": "auto", "sync_bn": True}


def config_diff(old, new):
    keys = (set(old) | set(new)) - NON_RESULT_ARGS
    same = lambda k: old.get(k) == new.get(k) or (k not in old and k in LATER_ARGS and new.get(k) == LATER_ARGS[k])
    return sorted(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if not same(k))


class RunDir:
    """The directory of one experiment. Only the main process writes; every process may read."""

    def __init__(self, path, config, is_main=True):
        self.path, self.is_main = path, is_main
        cfg_path = os.path.join(path, "config.json")
        if os.path.exists(cfg_path):
            try:
                old = load_json(cfg_path)
            except (OSError, ValueError) as e:
                raise UserError(f"{cfg_path} is unreadable ({e}); move it away or choose another --output_dir")
            diff = config_diff(old, config)
            check(not diff, f"--output_dir {path} holds a different run ({'; '.join(diff[:4])}); "
                            f"re-run with the same arguments to resume, or choose another --output_dir")
        elif os.path.isdir(path) and any(f.startswith("member_") for f in os.listdir(path)):
            raise UserError(f"--output_dir {path} holds member files but no config.json; choose another --output_dir")
        if is_main:
            os.makedirs(path, exist_ok=True)
            if not os.path.exists(cfg_path):
                save_yaml(os.path.join(path, "config.yaml"), {k: v for k, v in config.items() if k != "config"})
                save_json(cfg_path, config)
        self.config = config

    def file(self, name):
        return os.path.join(self.path, name)

    def weights(self, i):
        return self.file(f"member_{i}.safetensors")

    def probs(self, i):
        return self.file(f"member_{i}_probs.npy")

    def record(self, i):
        return self.file(f"member_{i}.json")

    def resume(self, i):
        return self.file(f"member_{i}.resume.pt")

    def done(self, i):
        return all(os.path.exists(f) for f in (self.weights(i), self.probs(i), self.record(i)))

    def completed_members(self):
        i = 0
        while self.done(i + 1):
            i += 1
        return i

    def load_probs(self, members=None):
        n = self.completed_members() if members is None else members
        return np.stack([np.load(self.probs(i)) for i in range(1, n + 1)])


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


def run_summary(run, probs, labels, config):
    """metrics.json of a run: lib.metrics.summarize plus what the report needs from the config and member records."""
    result = metrics.summarize(probs, labels)
    records = [load_json(run.record(i)) for i in range(1, len(probs) + 1)]
    result.update(method=config["method"], seed=config["seed"], dataset=config["dataset"],
                  member_seconds=[r["seconds"] for r in records],
                  member_seconds_per_epoch=[r["seconds_per_epoch"] for r in records],
                  member_trainable_fraction=[r["trainable_fraction"] for r in records])
    return result
