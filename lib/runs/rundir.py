"""Runs on disk: one directory per experiment; every file written to a temporary name, then renamed. This module
is the one place that writes and reads runs (RunDir, open_run, find_runs, run_label).

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
    <output_dir>/metrics.json              every result of the run (lib.evaluation.registry; strict JSON: undefined
                                           values are null), and the digests of the members it was computed from
    <output_dir>/ood/<set>/, shift/<set>/  the members' logits on each evaluation set, its spec and digests
                                           (lib.evaluation.results)
    <output_dir>/classes.json, README.md   the class names and the model card, written when the run finishes
                                           (lib/ensemble/card.py; lib.ensemble.load.load_ensemble reads the run)
    <output_dir>/.lock                     held by the run writing the directory (lib.infra.locks)
"""
import glob
import hashlib
import json
import os

import numpy as np

from lib.infra.errors import UserError, check
from lib.infra.files import file_sha256, load_json, load_weights, save_array, save_json, save_weights, save_yaml, strict
from lib.settings import schema

MEMBER_FILES = ("weights", "probs", "logits", "val_probs", "val_logits")  # a member's files besides its record


_DIGESTS = {}  # (path, inode, size, mtime) -> sha256: every reader in one process hashes a file once


def _digest(path):
    """file_sha256, remembered for this process while the file keeps its inode, size and modification time (a file
    rewritten or changed in place gets a new one): a report and the analyses after it hash each member file once."""
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = file_sha256(path)
    return _DIGESTS[key]


def record_digest(record):
    """sha256 of a member record's content, without its own digest field."""
    body = {k: v for k, v in record.items() if k != "record_sha256"}
    return hashlib.sha256(json.dumps(strict(body), sort_keys=True).encode()).hexdigest()


# facts of a run that config.json records besides its settings, since they are recorded: an older run did not say
# (and is taken as it is). processes: how many processes train each member together (1 for member-parallel runs);
# DDP on N processes gives other numbers than one process, so members trained under different counts never mix.
RUN_FACTS = ("processes",)


def config_diff(old, new):
    keys = (set(old) | set(new)) - schema.NON_RESULT_KEYS
    if old.get("data_pipeline") == new.get("data_pipeline") == "device":
        keys.discard("num_workers")  # workers change the random streams of the torchvision pipeline only
    legacy = schema.LEGACY  # a run recorded before a setting existed had the value that reproduces it
    same = lambda k: old.get(k) == new.get(k) or (k not in old and k in legacy and new.get(k) == legacy[k]) or \
        (k not in old and k in RUN_FACTS)
    return sorted(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if not same(k))


class RunDir:
    """The directory of one experiment. Only the writing process (see lib.training.experiment) writes; every process may read.

    A directory holding a different run is refused, unless nothing was trained in it yet (no member file and no
    resume point: e.g. a run that stopped on bad input), whose settings are then replaced."""

    def __init__(self, path, config, is_main=True):
        self.path, self.is_main = path, is_main
        stale = self.check(path, config)
        if is_main:
            os.makedirs(path, exist_ok=True)
            cfg_path = os.path.join(path, "config.json")
            if stale or not os.path.exists(cfg_path):
                save_yaml(os.path.join(path, "config.yaml"), {k: v for k, v in config.items() if k != "config" and k not in RUN_FACTS})
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

    def eval_set(self, kind, name):
        """The folder of the saved predictions on evaluation set `name` (kind: 'ood' or 'shift')."""
        return os.path.join(self.path, kind, name)

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

    def verify_member(self, i, kinds=None):
        """Member i's record, after checking it and each file it lists (or only those of `kinds`) against their
        sha256 digests. A damaged, truncated or altered file gives one line naming it and how to recover."""
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
            if kinds is not None and kind not in kinds:
                continue
            path = getattr(self, kind)(i)
            check(os.path.exists(path), f"{path} is missing; {recover}")
            check(_digest(path) == digest, f"{path} is damaged (its content does not match the digest in "
                                           f"{os.path.basename(self.record(i))}); {recover}")
        return record

    def discard_member(self, i):
        """Remove member i's files, record and resume point (a damaged cache entry, before it is trained again)."""
        for path in [*self.member_files(i).values(), self.record(i), self.resume(i)]:
            if os.path.exists(path):
                os.remove(path)

    def member_digest(self, i):
        """One sha256 naming member i as it is on disk (the results computed from it record it): its record's own
        digest, which covers the digests of its files; for a record written before digests, a digest of the
        record's and the member files' contents."""
        record = self.verify_member(i)
        if "record_sha256" in record and "sha256" in record:
            return record["record_sha256"]
        parts = [_digest(self.record(i))] + [f"{k}:{_digest(p)}" for k, p in sorted(self.member_files(i).items())]
        return hashlib.sha256(" ".join(parts).encode()).hexdigest()

    def load_member_weights(self, i):
        self.verify_member(i)
        return load_weights(self.weights(i))

    def load_probs(self, members=None, kind="probs"):
        """(members, samples, classes): the `kind` arrays (probs, logits, val_probs, val_logits) of members 1..n,
        each checked against its record's digest first."""
        n = self.completed_members() if members is None else members
        for i in range(1, n + 1):
            self.verify_member(i, (kind,))
        return np.stack([np.load(getattr(self, kind)(i)) for i in range(1, n + 1)])


def open_run(path, min_members=1, verify=True):
    """The RunDir at `path` (read only), checked to hold at least `min_members` finished members and the labels, and
    (verify) every file of its finished members against their records' digests: a damaged one is one line."""
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
    if verify:
        for i in range(1, n + 1):
            run.verify_member(i)
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


def check_one_arch(configs, what):
    """UserError unless the runs {run dir: config} share one architecture: an analysis that pools runs (a
    correlation over their pairs, subsets, distances to member 1) compares like with like, and the thesis' analyses
    are of ResNet-50 runs only (a Swin-T sweep writing under the same root must not enter them)."""
    first = {}
    for d, c in configs.items():
        first.setdefault(c.get("arch"), d)
    check(len(first) <= 1, f"{what} pools runs of one architecture; these are of {len(first)}: "
                           + "; ".join(f"{a} (e.g. {d})" for a, d in first.items())
                           + ": give each architecture's runs apart")
