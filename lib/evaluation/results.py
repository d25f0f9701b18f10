"""metrics.json: what every number in it was computed from, the one function that writes it, the lines that print
it, and the check its readers make.

    result = core_metrics(run, n)                                     # the run's own keys, from its saved predictions
    write_metrics(run, {**result, **soup_keys}, member_digests(run, n))   # the one writer (training, evaluate, soup)
    reason = check_results(run_dir, metrics)                          # a reader: None when the numbers stand

Provenance. Every write records `member_sha256`, the digests of the members the numbers were computed from
(lib.runs.rundir.RunDir.member_digest: the record's own digest, which covers its files'). Each write recomputes the
run's own keys (the `run` group of lib.evaluation.registry) and keeps the other groups of the old file (soups, OOD and
shifted sets) only when they were computed from the same members; the others are dropped, with a note naming the
command that computes them again, and so are their saved predictions.

Saved predictions. The members' logits on every OOD and shifted set lie in the run folder, with the set's spec and
their digests, so that every number in metrics.json can be recomputed from the folder:

    <run>/ood/<set>/set.json                  {"kind", "name", "spec", "note", "member_sha256", "parts": [{"name",
                                               "samples", "logits_sha256", "labels_sha256"}]}
    <run>/ood/<set>/<part>/logits.npy         (members, samples, classes) float32; <part> is "all" for a set of one
    <run>/shift/<set>/<part>/logits.npy       the same for a shifted set, and its labels.npy (samples,) int64
"""
import os
import shutil
from dataclasses import dataclass

import numpy as np

from lib.evaluation import metrics, registry, uncertainty
from lib.infra.errors import UserError, check
from lib.infra.files import file_sha256, load_json, save_array, save_json
from lib.runs.rundir import open_run

R = registry
SET_FILE, LOGITS, LABELS = "set.json", "logits.npy", "labels.npy"
KINDS = ("ood", "shift")  # the kinds of evaluation sets, each a folder of the run and a group of keys


# ----------------------------------------------------------------------------------------------------------------
# the run's own keys

def run_summary(run, probs, labels, config, val_probs=None):
    """lib.evaluation.metrics.summarize of the members' test probabilities, what the report needs from the config and
    the member records, and the val_* twins (registry.VAL_KEYS) when the members have validation probabilities
    (val_probs: when they are not (yet) the saved ones)."""
    result = metrics.summarize(probs, labels)
    n = len(probs)
    if val_probs is None and all(os.path.exists(run.val_probs(i)) for i in range(1, n + 1)):
        val_probs = run.load_probs(n, "val_probs")
    if os.path.exists(run.file("val_labels.npy")) and val_probs is not None:
        val = metrics.summarize(val_probs, np.load(run.file("val_labels.npy")))
        result.update({f"val_{k}": val[k] for k in R.VAL_KEYS})
    records = [load_json(run.record(i)) for i in range(1, n + 1)]
    result.update({R.METHOD.key: config["method"], R.SEED.key: config["seed"], R.DATASET.key: config["dataset"],
                   R.MEMBER_SECONDS.key: [r["seconds"] for r in records],
                   R.MEMBER_SECONDS_PER_EPOCH.key: [r["seconds_per_epoch"] for r in records],
                   R.MEMBER_TRAINABLE_FRACTION.key: [r["trainable_fraction"] for r in records]})
    planned = config.get("members", n)
    if n < planned:
        result.update({R.PARTIAL.key: True, R.PLANNED_MEMBERS.key: planned})
    return result


def saved(run, n, kind):
    """(members, samples, classes) of the members' saved `kind` arrays (logits, val_logits, ...), each checked against
    its record's digest, or None when a member lacks the file (runs made before it existed)."""
    if not all(os.path.exists(getattr(run, kind)(i)) for i in range(1, n + 1)):
        return None
    return run.load_probs(n, kind)


def saved_arrays(run, n, given=None):
    """{probs, logits, val_probs, val_logits} of members 1..n: those `given` (predicted again, not saved yet), else the
    saved ones (checked against their digests; None where a member lacks the file)."""
    given = given or {}
    out = {kind: given[kind] if given.get(kind) is not None else saved(run, n, kind)
           for kind in ("probs", "logits", "val_probs", "val_logits")}
    check(out["probs"] is not None, f"{run.path}: a member's test probabilities are missing")
    return out


def check_finite(array, what):
    """Refuse NaN/inf predictions (damaged weights): nothing computed from them may replace a good result."""
    if not np.isfinite(array).all():
        bad = [i + 1 for i, a in enumerate(array) if not np.isfinite(a).all()]
        raise UserError(f"the predictions of member(s) {bad} on {what} are not finite (NaN or inf): their weights are "
                        f"damaged; nothing was written")


def core_metrics(run, n, arrays=None, log=print):
    """The `run` group of metrics.json for members 1..n, from their saved predictions (or those in `arrays`, see
    saved_arrays): run_summary, selective prediction (sel/*) and calibration (cal/*; temperature scaling when the
    members have validation logits and test logits)."""
    arrays = saved_arrays(run, n, arrays)
    probs, logits, val_logits = arrays["probs"], arrays["logits"], arrays["val_logits"]
    check_finite(probs, "the test set")
    labels = np.load(run.file("labels.npy"))
    val_labels = np.load(run.file("val_labels.npy")) if os.path.exists(run.file("val_labels.npy")) else None
    result = run_summary(run, probs, labels, run.config, arrays["val_probs"])
    result.update(R.within(R.SELECTIVE, uncertainty.selective_report(probs, labels)))
    if val_logits is None or val_labels is None or logits is None:
        log("note: cal/ts (temperature scaling) skipped: the run has no validation logits "
            "(train it with --val_split F or --val_split_name to have them)")
        val_logits = None
    result.update(R.within(R.CALIBRATION,
                           uncertainty.calibration_report(probs, labels, logits, val_logits, val_labels)))
    return result


# ----------------------------------------------------------------------------------------------------------------
# saved predictions on evaluation sets

@dataclass
class SetPredictions:
    """The members' logits on one evaluation set: kind ('ood' or 'shift'), name, spec (as given to --ood_dataset /
    --shift_dataset), note (what was done to its images), parts {part name: (logits (members, samples, classes),
    labels (samples,) or None)}."""
    kind: str
    name: str
    spec: str
    note: str
    parts: dict


def save_set(run, preds, members):
    """The arrays of `preds`, then its set.json (spec, members' digests, the arrays' digests), atomically each; the
    folder's earlier parts are replaced."""
    folder = run.eval_set(preds.kind, preds.name)
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    parts = []
    for part, (logits, labels) in preds.parts.items():
        entry = {"name": part, "samples": int(logits.shape[1])}
        save_array(os.path.join(folder, part, LOGITS), logits.astype(np.float32))
        entry["logits_sha256"] = file_sha256(os.path.join(folder, part, LOGITS))
        if labels is not None:
            save_array(os.path.join(folder, part, LABELS), np.asarray(labels, dtype=np.int64))
            entry["labels_sha256"] = file_sha256(os.path.join(folder, part, LABELS))
        parts.append(entry)
    save_json(os.path.join(folder, SET_FILE), {"kind": preds.kind, "name": preds.name, "spec": preds.spec,
                                               "note": preds.note, "member_sha256": list(members), "parts": parts})


def load_set(run, kind, name):
    """(set.json's content, {part: (logits, labels or None)}) of a saved evaluation set, each array checked against
    its digest (UserError naming a damaged one)."""
    folder = run.eval_set(kind, name)
    path = os.path.join(folder, SET_FILE)
    check(os.path.isfile(path), f"{run.path} has no saved predictions on {kind} set {name} ({path})")
    info = load_json(path)
    parts = {}
    for p in info["parts"]:
        arrays = []
        for file, digest in ((LOGITS, p["logits_sha256"]), (LABELS, p.get("labels_sha256"))):
            f = os.path.join(folder, p["name"], file)
            if digest is None:
                arrays.append(None)
                continue
            check(os.path.isfile(f) and file_sha256(f) == digest,
                  f"{f} is missing or damaged (its content does not match the digest in {path})")
            arrays.append(np.load(f))
        parts[p["name"]] = tuple(arrays)
    return info, parts


def _saved_sets(run):
    """{group ('ood/<set>'): set.json content} of the saved evaluation sets of `run` (unreadable ones: None)."""
    out = {}
    for kind in KINDS:
        root = os.path.join(run.path, kind)
        for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
            try:
                out[f"{kind}/{name}"] = load_json(os.path.join(root, name, SET_FILE))
            except (OSError, ValueError):
                out[f"{kind}/{name}"] = None
    return out


# ----------------------------------------------------------------------------------------------------------------
# the one writer

def member_digests(run, n):
    """The digests of members 1..n (RunDir.member_digest), each member checked against its record first."""
    return [run.member_digest(i) for i in range(1, n + 1)]


def _recompute(run, group, saved_set):
    """The command that computes a dropped group again."""
    kind, _, name = group.partition("/")
    if kind == "soup":
        return f"scripts/soup.py {run.path} --mode {name}"
    spec = (saved_set or {}).get("spec") or name
    return f"scripts/evaluate.py {run.path} --{kind}_dataset {spec}"


def write_metrics(run, result, members, sets=(), log=print):
    """Write <run>/metrics.json: `result` (every key registered in lib.evaluation.registry, the `run` group among them),
    computed from the members whose digests are `members`, and `sets` (SetPredictions) saved first. The groups of the
    old file that `result` does not recompute are kept when they were computed from the same members, else dropped,
    with their saved predictions and a note naming the command that computes them again. Returns the new content."""
    unknown = [k for k in result if not R.known(k)]
    if unknown:
        raise ValueError(f"unregistered metrics.json key(s) {unknown[:3]}: add them to lib/evaluation/registry.py")
    if R.MEMBERS.key not in result:
        raise ValueError("write_metrics: the run's own keys (core_metrics) must be part of every write")
    check(member_digests(run, len(members)) == list(members),
          f"the members of {run.path} changed while it was evaluated: run the same command again")
    path = run.file("metrics.json")
    try:
        old = load_json(path) if os.path.exists(path) else {}
    except (OSError, ValueError):
        old = {}  # a damaged metrics.json is replaced
    same = old.get(R.MEMBER_SHA256.key) == list(members) if R.MEMBER_SHA256.key in old else \
        old.get(R.MEMBERS.key) == len(members)  # a file written before digests: the same number of members
    fresh = {R.group(k) for k in result}
    kept, dropped = {}, set()
    for k, v in old.items():
        g = R.group(k) if R.known(k) else "run"
        if g == "run" or g in fresh:
            continue  # recomputed now (an old key no longer registered goes with the run's own keys)
        if same:
            kept[k] = v
        else:
            dropped.add(g)
    on_disk = _saved_sets(run)
    for s in sets:  # the predictions first: a kill before metrics.json leaves them orphaned, removed next time
        save_set(run, s, members)
    save_json(path, {**kept, **result, R.MEMBER_SHA256.key: list(members)})
    valid = {f"{s.kind}/{s.name}" for s in sets} | \
        {g for g in {R.group(k) for k in kept} if (on_disk.get(g) or {}).get("member_sha256") == list(members)}
    for g in set(on_disk) - valid:  # computed from other members, or orphaned
        folder = run.eval_set(*g.split("/", 1))
        shutil.rmtree(folder)
        if not os.listdir(os.path.dirname(folder)):
            os.rmdir(os.path.dirname(folder))
    if dropped:
        log(f"note: {path}: dropped {', '.join(sorted(dropped))}, computed from other members than the run's "
            f"{len(members)} now; to compute them again: "
            + "; ".join(_recompute(run, g, on_disk.get(g)) for g in sorted(dropped)))
    return load_json(path)


# ----------------------------------------------------------------------------------------------------------------
# readers

def check_results(run_dir, met):
    """(status, reason) of a run's metrics.json `met` for a reader: ('ok', None) when its numbers were computed from the
    run's members as they are now (each member file checked against its record's digest); ('unverified', why) for a
    metrics.json written before member digests; ('skip', why) for a partial run, a damaged member or numbers computed
    from other members."""
    if R.MEMBERS.key not in met:
        return "skip", "its metrics.json holds no test metrics"
    if met.get(R.PARTIAL.key):
        return "skip", f"partial: {met.get(R.MEMBERS.key)} of {met.get(R.PLANNED_MEMBERS.key)} members"
    recorded = met.get(R.MEMBER_SHA256.key)
    if recorded is None:
        return "unverified", "its metrics.json predates member digests"
    try:
        run = open_run(run_dir, verify=False)
        n = run.completed_members()
        if n != len(recorded):
            return "skip", (f"its metrics.json was computed from {len(recorded)} member(s), the run has {n} now "
                            f"(re-run its training command, or scripts/evaluate.py)")
        changed = [i for i, d in enumerate(member_digests(run, n), start=1) if d != recorded[i - 1]]
    except UserError as e:
        return "skip", str(e)
    if changed:
        return "skip", (f"member(s) {', '.join(map(str, changed))} changed after its metrics.json was written (re-run "
                        f"scripts/evaluate.py {run_dir})")
    return "ok", None


# ----------------------------------------------------------------------------------------------------------------
# printed lines

def _cells(result, keys):
    return " | ".join(R.show(k, result[k]) for k in keys)


def _printed(result, test):
    return [k for k in result if R.known(k) and R.lookup(k).printed and test(k)]


def result_lines(result):
    """The lines evaluate.py and the end of training print: the run (with PARTIAL when it is), selective prediction
    and calibration, each OOD set (AUROC / FPR95 / FPR95-ID per score), each shifted set, each soup; the keys shown
    are the registry's `printed` ones, in its order."""
    order = {m.key: i for i, m in enumerate(R.METRICS)}
    by_order = lambda keys: sorted(keys, key=lambda k: order[R.lookup(k).key])
    n = result.get(R.MEMBERS.key)
    head = f"[{result.get(R.METHOD.key)}] {n} members"
    if result.get(R.PARTIAL.key):
        head += f" (PARTIAL: {n} of {result.get(R.PLANNED_MEMBERS.key)})"
    lines = [f"{head} | " + _cells(result, by_order(_printed(result, lambda k: R.group(k) == "run" and "/" not in k)))]
    for prefix in (R.SELECTIVE, R.CALIBRATION):
        keys = by_order(_printed(result, lambda k: k.startswith(prefix + "/")))
        if keys:
            lines.append(f"{'selective' if prefix == R.SELECTIVE else 'calibration'}: " + _cells(result, keys))
    groups = sorted({R.group(k) for k in result} - {"run"})
    auroc, fpr, fpr_id = R.OOD_AUROC, R.OOD_FPR95, R.OOD_FPR95_ID
    is_ood = lambda g: g.split("/")[0] == R.OOD.split("/")[0]
    for g in (g for g in groups if is_ood(g)):
        name = g.split("/", 1)[1]
        cells = [f"{s} " + "/".join(m.format(result.get(m.of(set=name, score=s))) for m in (auroc, fpr, fpr_id))
                 for s in R.FIELDS["score"] if auroc.of(set=name, score=s) in result]
        lines.append(f"OOD {name} ({auroc.short}/{fpr.short}/{fpr_id.short}): " + " | ".join(cells)
                     + f"   [{fpr.short}: OOD samples positive; {fpr_id.short}: test samples positive]")
    for g in (g for g in groups if not is_ood(g)):
        keys = by_order(_printed(result, lambda k: R.group(k) == g))
        if g.split("/")[0] == R.SHIFT.split("/")[0]:
            name = g.split("/", 1)[1]
            lines.append(f"shift {name} ({result.get(R.SHIFT_PARTS.of(set=name))} part(s)): "
                         + " | ".join(f"{R.lookup(k).short} {R.lookup(k).format(result[k])}" for k in keys))
        elif keys:
            lines.append(_cells(result, keys))
    return lines
