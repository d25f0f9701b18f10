"""Results tables and plots across runs, shaped like the thesis' tables: one row per method and setting, mean +- std
(ddof=1, the sample std) over runs.

The rules that keep a table from misleading:
- a row is a method and every config key that varies among that method's runs (its swept settings), so different
  settings are different rows; seed, checkpoint and the keys that change no result are repetitions, not settings;
- runs of different ensemble sizes are never averaged together (a row that would mix them is split by size);
- a run found twice (same settings, seed and checkpoint, whatever its weights: e.g. a grid point equal to a core
  run) counts once, and the table says how many were dropped and how many of them had other weights;
- time columns compare like with like: seconds per cycle epoch, and the whole ensemble's seconds with phase I, each
  against the StarSSE runs of the same phase-I and cycle settings, beside the thesis' figure of the same quantity;
- `select_by`: one setting per method chosen on the validation split (or, flagged as optimistic, on the test set).
"""
import json
import math
import os
from collections import namedtuple

import matplotlib
import matplotlib.ticker
import numpy as np

from lib.evaluation import registry as R
from lib.evaluation.results import check_results
from lib.infra.errors import UserError, check
from lib.infra.figures import pyplot
from lib.infra.files import file_sha256, load_json, write_csv
from lib.runs.rundir import find_runs, run_label
from lib.settings import methods
from lib.settings.schema import LEGACY, NON_RESULT_KEYS, PHASE1_KEYS

DDOF = 1  # sample standard deviation over runs
# (metrics.json key, header, decimals) of the columns every table shows (lib.evaluation.registry: its COLUMN keys);
# its OPTIONAL ones (the soups) are shown when a run has them, the OOD AUROC of --ood_column on request
COLUMNS = R.columns(R.COLUMN)
UNITS = {"%": "in %", "nats": "in nats", "fraction": "as a fraction", "s": "in seconds"}  # the registry's units, said
# repetitions (seed, pre-trained checkpoint) and keys that change no result: never a setting, never a row of their own
NOT_SETTINGS = NON_RESULT_KEYS | {"seed", "pretrained", "method"}

# ----------------------------------------------------------------------------------------------------------------
# the thesis' figures our columns compare to

# the optimal cycles of SSE and StarSSE for BYOL ResNet-50 -> CIFAR-100 (thesis, NeurIPS appendix B), as ratios to
# phase I: cycle lr = 2 x lr (0.1), cycle epochs = int(0.5 x epochs) (12); the cycle grid is the same ratios
OPTIMAL_CYCLE = {"lr_ratio": 2.0, "epochs_ratio": 0.5}
# frozen-stage StarSSE (thesis section 5), per freeze level: (seconds per epoch relative to full fine-tuning: the epoch
# time "reduced 1.66, 2.5 and 3.125 times", whole-ensemble time relative to StarSSE, phase I included: table 4.1's
# x0.74 / x0.6 / x0.55 = (25 + 48 / 1.66) / 73 ...)
THESIS_PEFT_TIME = {"stage4": (1 / 1.66, 0.74), "stage5": (1 / 2.5, 0.60), "head": (1 / 3.125, 0.55)}
# what must be equal for two runs' times to compare: the phase-I settings but the seed, and the cycle length; the
# ensemble time also needs the same number of members
TIME_KEYS = tuple(k for k in PHASE1_KEYS if k != "seed") + ("cycle_epochs",)


def _clean(value):
    """Floats to 10 significant digits, so that 3 x 0.05 is the 0.15 it means (in labels and comparisons)."""
    if isinstance(value, float):
        return float(f"{value:.10g}")
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _value(cfg, key):
    """A config value; a key the run predates counts with the value that reproduces it (lib.settings.schema.LEGACY)."""
    return _clean(cfg[key] if key in cfg else LEGACY.get(key))


def cycle_ratios(cfg):
    """(cycle lr / phase-I lr, cycle epochs / phase-I epochs) of a run with cycles, else None."""
    try:
        return float(cfg["cycle_lr"]) / float(cfg["lr"]), float(cfg["cycle_epochs"]) / float(cfg["epochs"])
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None


def regime(cfg):
    """'optimal', 'more local' or 'semi-local' (thesis figure 4.5) of an SSE-family run's cycle setting, against
    OPTIMAL_CYCLE. Our rule, as the cycle grid is laid out: a lower cycle lr than the optimum is more local, a higher
    one semi-local (the restart lr decides how far a cycle moves from model 1); at the optimal lr, shorter cycles are
    more local, longer ones semi-local. None for runs without cycles (DE, fine-tunes, 1 member) and for other
    families than ResNets: the optimum is ResNet-50's (Swin-T's is selected on validation by its own grid)."""
    r = cycle_ratios(cfg)
    method = methods.get(cfg.get("method"))
    if r is None or method is None or not method.cycles or (cfg.get("members") or 2) < 2:
        return None
    if not str(cfg.get("arch", "resnet50")).removeprefix("timm/").startswith("resnet"):  # resnet50, resnet_mini
        return None
    opt_epochs = int(OPTIMAL_CYCLE["epochs_ratio"] * cfg["epochs"])  # as the sweeps round: 0.5 x 25 -> 12
    if not math.isclose(r[0], OPTIMAL_CYCLE["lr_ratio"], rel_tol=1e-6):
        return "more local" if r[0] < OPTIMAL_CYCLE["lr_ratio"] else "semi-local"
    if cfg["cycle_epochs"] == opt_epochs:
        return "optimal"
    return "more local" if cfg["cycle_epochs"] < opt_epochs else "semi-local"


def is_optimal_starsse(cfg):
    """A plain StarSSE run of the thesis' optimal cycle setting (no freeze, no extra loss)."""
    return _is_time_base(cfg) and regime(cfg) == "optimal"


# ----------------------------------------------------------------------------------------------------------------
# runs -> rows

Collection = namedtuple("Collection", "runs dropped repeats keys skipped unverified", defaults=((), ()))
Collection.__doc__ = """runs: [(row label, run dir, config, metrics)] counted in the table; dropped: [(run dir, the run
dir it duplicates)]: the same settings, seed and checkpoint, counted once; repeats: those of `dropped` whose member
weights differ (training that is not bit-reproducible, e.g. on GPUs); keys: {run dir: the config keys of its row};
skipped: [(run dir, why)] left out: partial, a damaged member, numbers computed from other members
(lib.evaluation.results.check_results); unverified: [run dir] counted whose metrics.json predates member digests."""


def setting_keys(configs):
    """The config keys whose values differ among `configs` (one method's runs): its swept settings."""
    keys = set().union(*configs) - NOT_SETTINGS
    return sorted(k for k in keys if len({json.dumps(_value(c, k), sort_keys=True) for c in configs}) > 1)


def group_keys(configs, group_by=None):
    """{run dir: the config keys of its row}: group_by when given, else the method and the keys that vary among
    that method's runs. configs: {run dir: config}."""
    if group_by:
        return {d: tuple(group_by) for d in configs}
    by_method = {}
    for d, c in configs.items():
        by_method.setdefault(c.get("method"), []).append(d)
    out = {}
    for dirs in by_method.values():
        keys = ("method", *setting_keys([configs[d] for d in dirs]))
        out.update(dict.fromkeys(dirs, keys))
    return out


def label(cfg, keys):
    """A row label: the first key's value, then key=value for the others that are set ('StarSSE cycle_epochs=12
    cycle_lr=0.1'); an unset (None) setting is left out, which keeps rows apart: its runs' rows name a value."""
    values = {k: _value(cfg, k) for k in keys}
    return run_label(values, [keys[0]] + [k for k in keys[1:] if values[k] is not None])


def member_digests(run_dir, members):
    """((kind, sha256), ...) identifying each member: the digest of its weights, from its record (sha256.weights,
    the file's content digest) or from member_<i>.safetensors itself; without weights, of its test probabilities
    (sha256.probs or member_<i>_probs.npy). None when a member has neither: the run cannot be compared."""
    out = []
    for i in range(1, members + 1):
        try:
            recorded = load_json(os.path.join(run_dir, f"member_{i}.json")).get("sha256") or {}
        except (OSError, ValueError):
            recorded = {}
        for kind, name in [("weights", f"member_{i}.safetensors"), ("probs", f"member_{i}_probs.npy")]:
            path = os.path.join(run_dir, name)
            if recorded.get(kind) or os.path.isfile(path):
                out.append((kind, recorded.get(kind) or file_sha256(path)))
                break
        else:
            return None
    return tuple(out)


def drop_duplicates(runs):
    """(kept runs, dropped, repeats). Runs with the same result-relevant settings (seed and checkpoint included) and
    number of members are one run, whatever their weights: the first (in run-directory order) is kept, the others
    are dropped (e.g. the cycle grid's point at 2x lr, 0.5x epochs repeats the core runs). repeats: the dropped runs
    whose members' digests (member_digests) differ from the kept run's (training that is not bit-reproducible, e.g. on
    GPUs: pseudo-replicates, not independent runs). Only runs whose settings collide are hashed, and only where a
    record lacks its digest."""
    same = {}
    for _l, d, cfg, met in runs:
        settings = {k: _value(cfg, k) for k in set(cfg) | set(LEGACY) if k not in NON_RESULT_KEYS}
        same.setdefault((json.dumps(settings, sort_keys=True), met.get(R.MEMBERS.key)), []).append(d)
    drop, dropped, repeats = set(), [], []
    for (_key, members), (kept, *others) in same.items():
        if not others:
            continue
        digest = member_digests(kept, members) if members else None
        for d in others:
            drop.add(d)
            dropped.append((d, kept))
            other = member_digests(d, members) if digest is not None else None
            if other is not None and other != digest:
                repeats.append((d, kept))
    return [r for r in runs if r[1] not in drop], dropped, repeats


def split_sizes(runs):
    """Runs relabelled so that no row mixes ensemble sizes: in a row whose runs have different numbers of members,
    each run's label gets ' members=M'."""
    sizes = {}
    for lab, _d, _cfg, met in runs:
        sizes.setdefault(lab, set()).add(met.get(R.MEMBERS.key))
    return [(f"{lab} members={met.get(R.MEMBERS.key)}" if len(sizes[lab]) > 1 else lab, d, cfg, met)
            for lab, d, cfg, met in runs]


def collect(paths, group_by=None, dedup=True):
    """Every finished run under `paths` (lib.runs.rundir.find_runs) as a Collection: each checked (its metrics.json
    computed from its members as they are now, every member file against its digest; partial runs and runs that fail
    are left out and named), labelled by group_keys, each size its own row, duplicates dropped."""
    configs, mets, skipped, unverified = {}, {}, [], []
    for d in find_runs(paths):
        check(os.path.isfile(os.path.join(d, "metrics.json")), f"{d} is not finished (no metrics.json)")
        try:
            config, met = load_json(os.path.join(d, "config.json")), load_json(os.path.join(d, "metrics.json"))
        except ValueError as e:
            raise UserError(f"{d}: config.json or metrics.json is unreadable ({e})")
        status, why = check_results(d, met)
        if status == "skip":
            skipped.append((d, why))
            continue
        if status == "unverified":
            unverified.append(d)
        configs[d], mets[d] = config, met
    check(configs, "no run to show: " + "; ".join(f"{d}: {why}" for d, why in skipped[:3]))
    keys = group_keys(configs, group_by)
    runs = [(label(configs[d], keys[d]), d, configs[d], mets[d]) for d in configs]
    dropped, repeats = [], []
    if dedup:
        runs, dropped, repeats = drop_duplicates(runs)
    return Collection(split_sizes(runs), dropped, repeats, {r[1]: keys[r[1]] for r in runs}, skipped, unverified)


def load_runs(paths, group_by=None):
    """[(row label, run dir, config, metrics)] for every finished run under `paths`, duplicates dropped."""
    return collect(paths, group_by).runs


# ----------------------------------------------------------------------------------------------------------------
# rows -> numbers

def _floats(values):
    return np.asarray([np.nan if v is None else v for v in values], dtype=float)


def mean_std(values):
    values = _floats(values)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return float("nan"), float("nan")
    return float(values.mean()), float(values.std(ddof=DDOF)) if len(values) > 1 else float("nan")


def _cycle_epoch_seconds(met):
    """Mean seconds per epoch of members 2..M (the cycles of SSE/StarSSE; other DE members), or of member 1."""
    per_epoch = [v for v in met.get(R.MEMBER_SECONDS_PER_EPOCH.key) or [] if v is not None]
    return float(np.mean(per_epoch[1:] if len(per_epoch) > 1 else per_epoch)) if per_epoch else float("nan")


def _ensemble_seconds(met):
    """Seconds of the whole ensemble, phase I included: the sum over members (a cached phase-I member counts with
    the seconds it took when it was trained)."""
    s = met.get(R.MEMBER_SECONDS.key) or []
    return float(sum(s)) if s and all(v is not None for v in s) else float("nan")


def _cycle_trainable(met):
    """Mean trainable fraction of members 2..M (None for a 1-member run)."""
    fractions = [v for v in (met.get(R.MEMBER_TRAINABLE_FRACTION.key) or [])[1:] if v is not None]
    return float(np.mean(fractions)) if fractions else None


def _is_time_base(cfg):
    """A plain StarSSE run (the reference method, nothing frozen): the time columns' denominator."""
    method = methods.get(cfg.get("method"))
    return method is not None and method.reference and _value(cfg, "freeze") in ("none", None)


def _time_key(cfg, met, with_members):
    key = tuple(json.dumps(_value(cfg, k), sort_keys=True) for k in TIME_KEYS)
    return key + ((met.get(R.MEMBERS.key),) if with_members else ())


def thesis_time(cfgs):
    """The thesis' (epoch ratio, ensemble fraction) for a row of frozen-stage StarSSE runs of one freeze level."""
    freeze = {_value(c, "freeze") for c in cfgs}
    if len(freeze) == 1 and all(getattr(methods.get(c.get("method")), "family", None) == "StarSSE" for c in cfgs):
        return THESIS_PEFT_TIME.get(freeze.pop())
    return None


def summarize_groups(runs, extra_keys=()):
    """{label: row} in the thesis' row order; a row holds (mean, std) of every column key, 'runs', 'members',
    'by_size' and 'member_acc' (mean curves), the time columns 'epoch_time' and 'ensemble_time' (ratios to the
    matching StarSSE runs; NaN without one) and 'thesis_time'. extra_keys: more metrics.json keys to average."""
    runs = split_sizes(runs)
    groups = {}
    for r in runs:
        groups.setdefault(r[0], []).append(r)
    optional = R.columns(R.OPTIONAL, {k for _l, _d, _c, m in runs for k in m})  # the soups some run has
    base = {}  # time key -> [seconds of the StarSSE runs with it]
    for _l, _d, cfg, met in runs:
        if _is_time_base(cfg):
            base.setdefault(("epoch",) + _time_key(cfg, met, False), []).append(_cycle_epoch_seconds(met))
            base.setdefault(("ensemble",) + _time_key(cfg, met, True), []).append(_ensemble_seconds(met))
    out = {}
    # the thesis' row order of the rows' method (lib.settings.methods), then the label
    for lab in sorted(groups, key=lambda lab: (methods.order(groups[lab][0][2].get("method")), lab)):
        items = groups[lab]
        mets = [m for _l, _d, _c, m in items]
        keys = [k for k, _n, _p in COLUMNS + optional] + list(extra_keys)
        row = {key: mean_std([m.get(key) for m in mets]) for key in keys}
        row["runs"] = len(mets)
        row["run_dirs"] = [d for _l, d, _c, _m in items]
        row["methods"] = sorted({str(c.get("method")) for _l, _d, c, _m in items})
        row["config"] = items[0][2]  # the settings the row's runs share (those its label names; plots shorten it)
        row["members"] = sorted({m.get(R.MEMBERS.key) for m in mets if m.get(R.MEMBERS.key) is not None})
        for curve, key in [("by_size", R.ENSEMBLE_ACCURACY_BY_SIZE.key), ("member_acc", R.MEMBER_ACCURACY.key)]:
            n = min(len(m.get(key) or []) for m in mets)  # the curve over the sizes / members every run has
            row[curve] = np.mean([_floats((m.get(key) or [])[:n]) for m in mets], axis=0).tolist()
        row["epoch_seconds"] = mean_std([_cycle_epoch_seconds(m) for m in mets])
        row["ensemble_seconds"] = mean_std([_ensemble_seconds(m) for m in mets])
        row["trainable"] = mean_std([_cycle_trainable(m) for m in mets])
        for kind, with_members in [("epoch", False), ("ensemble", True)]:
            matching = {(kind,) + _time_key(c, m, with_members) for _l, _d, c, m in items}
            ref = mean_std([s for k in matching for s in base.get(k, [])])[0]
            row[f"{kind}_time"] = row[f"{kind}_seconds"][0] / ref if np.isfinite(ref) and ref > 0 else float("nan")
        row["thesis_time"] = thesis_time([c for _l, _d, c, _m in items])
        out[lab] = row
    return out


def add_table_args(parser):
    """The flags of the results table (scripts/report.py, scripts/thesis_report.py)."""
    parser.add_argument("--select_by", choices=["val", "test", "none"], default="none",
                        help="mark, for each method, the setting with the best mean ensemble accuracy on the "
                             "validation split (val: runs trained with --val_split) or on the test set (test: "
                             "optimistic), and list its test numbers (default: none)")
    parser.add_argument("--ood_column", action="append", default=[], metavar="SET/SCORE",
                        help="add a column of the ensemble's OOD AUROC ood/SET/SCORE/auroc, e.g. noise/entropy "
                             "(repeatable)")
    return parser


def results_table(col, select_by="none", ood=()):
    """(summary, markdown) of a Collection: summarize_groups, select_settings (a UserError before anything is
    written), markdown_table."""
    for spec in ood:
        ood_key(spec)
    summary = summarize_groups(col.runs, [ood_key(s) for s in ood])
    selection = select_settings(summary, col.runs, select_by)
    return summary, markdown_table(summary, selection, ood, col.dropped, col.repeats, available_ood(col.runs),
                                   col.skipped, col.unverified)


# ----------------------------------------------------------------------------------------------------------------
# one setting per method (issue 13)

SELECT_KEYS = {"val": (R.VAL_ENSEMBLE_ACCURACY.key, "validation ensemble accuracy"),
               "test": (R.ENSEMBLE_ACCURACY.key, "test ensemble accuracy")}


def select_settings(summary, runs, by="none"):
    """{name: {'by', 'method', 'label', 'score', 'scores': {row label: score}}}: for each method (and ensemble size,
    if it has several: name 'StarSSE, M=15'), the row (setting) whose runs have the best mean ensemble accuracy on
    the validation split (by='val') or on the test set ('test'; ties: the first row in table order); {} for 'none'.
    'val' when a run has no validation ensemble accuracy (trained without a validation split) is a UserError."""
    if by == "none":
        return {}
    check(by in SELECT_KEYS, f"--select_by must be val, test or none, got {by!r}")
    key, _name = SELECT_KEYS[by]
    missing = [d for _l, d, _c, m in runs if m.get(key) is None]
    check(by != "val" or not missing,
          f"--select_by val needs the validation ensemble accuracy ({key} in metrics.json), which {len(missing)} of "
          f"{len(runs)} run(s) lack (e.g. {missing[0] if missing else ''}): train them with a validation split "
          f"(--val_split F), or use --select_by test (optimistic) or none")
    scores = {}
    for lab, _d, _c, m in split_sizes(runs):
        scores.setdefault(lab, []).append(m.get(key))
    out = {}  # (method, ensemble sizes) -> selection: a larger ensemble is no better setting of a smaller one
    for lab, row in summary.items():
        if len(row["methods"]) != 1:
            continue  # a row mixing methods (--group_by without method) is no setting of one method
        sel = out.setdefault((row["methods"][0], tuple(row["members"])),
                             {"by": by, "method": row["methods"][0], "label": None, "score": float("nan"),
                              "scores": {}})
        sel["scores"][lab] = score = mean_std(scores.get(lab, []))[0]
        if np.isfinite(score) and not score <= sel["score"]:  # NaN start: the first finite score wins
            sel.update(label=lab, score=score)
    sizes = {}
    for method, members in out:
        sizes[method] = sizes.get(method, 0) + 1
    return {(m if sizes[m] == 1 else f"{m}, M={'/'.join(map(str, members))}"): s
            for (m, members), s in out.items() if s["label"] is not None}


# ----------------------------------------------------------------------------------------------------------------
# markdown

def fmt(ms, digits=2):
    m, s = ms
    if not np.isfinite(m):
        return "-"
    return f"{m:.{digits}f} ± {s:.{digits}f}" if np.isfinite(s) else f"{m:.{digits}f}"


def ood_key(spec):
    """'noise/entropy' -> 'ood/noise/entropy/auroc' (the ensemble's AUROC of that score on that OOD set)."""
    name, _, score = str(spec).rpartition("/")
    scores = R.FIELDS["score"]
    check(bool(name) and score in scores,
          f"--ood_column must be SET/SCORE with SCORE one of {', '.join(scores)}, got {spec!r}")
    return R.OOD_AUROC.of(set=name, score=score)


def available_ood(runs):
    """The SET/SCORE pairs that some run has an ensemble AUROC for."""
    found = ((R.OOD_AUROC.match(k), v) for _l, _d, _c, m in runs for k, v in m.items())
    return sorted({f"{f['set']}/{f['score']}" for f, v in found if f is not None and v is not None})


def table_columns(summary, ood=()):
    """(key, header, decimals) of the columns shown: COLUMNS, the optional ones some row has, the asked OOD ones
    some row has."""
    rows = list(summary.values())
    has = lambda k: any(k in r and np.isfinite(r[k][0]) for r in rows)
    optional = R.columns(R.OPTIONAL, {k for r in rows for k in r})
    return list(COLUMNS) + [c for c in optional if has(c[0])] + \
        [(ood_key(s), R.header(ood_key(s)), R.OOD_AUROC.decimals) for s in ood if has(ood_key(s))]


def _ratio(value, thesis):
    if not np.isfinite(value):
        return "-"
    return f"x{value:.2f}" + (f" (thesis x{thesis:.2f})" if thesis is not None else "")


def _listed(pairs, sep):
    return "; ".join(f"{a} {sep} {b}" for a, b in pairs[:3]) + (" ..." if len(pairs) > 3 else "")


def markdown_table(summary, selection=None, ood=(), dropped=(), repeats=(), ood_available=(), skipped=(),
                   unverified=()):
    """The results table and its notes. selection: select_settings' result (the chosen rows are marked, and listed
    with what chose them); ood: SET/SCORE columns (--ood_column); dropped / repeats / skipped / unverified: from
    collect."""
    selection = selection or {}
    rows = list(summary.values())
    shown = table_columns(summary, ood)
    timed = any(np.isfinite(r["epoch_time"]) or np.isfinite(r["ensemble_time"]) for r in rows)
    chosen = {s["label"] for s in selection.values()}
    head = "| Algorithm | runs | M | " + " | ".join(n for _k, n, _p in shown) + " |" + \
        (" trained params (cycles) | epoch time vs StarSSE | ensemble time vs StarSSE |" if timed else "")
    lines = [head, "|" + "---|" * (len(shown) + 3 + 3 * timed)]
    for lab, row in summary.items():
        cells = [fmt(row[k], p) for k, _n, p in shown]
        if timed:
            frac = row["trainable"][0]
            thesis = row["thesis_time"] or (None, None)
            cells += [f"{100 * frac:.1f} %" if np.isfinite(frac) else "-", _ratio(row["epoch_time"], thesis[0]),
                      _ratio(row["ensemble_time"], thesis[1])]
        name = f"**{lab}** (selected)" if lab in chosen else lab
        lines.append(f"| {name} | {row['runs']} | {'/'.join(map(str, row['members']))} | " + " | ".join(cells) + " |")
    lines.append("")
    if timed:
        lines.append("trained params: share of parameters trained in members 2..M. epoch time vs StarSSE: seconds "
                     "per epoch of members 2..M (the cycles; a 1-member run: its member) over those of the StarSSE "
                     "runs (no freeze) with the same phase-I settings and cycle epochs; the thesis' figures of this "
                     "quantity for frozen stage4 / stage5 / head: x0.60 / x0.40 / x0.32 (epoch time cut 1.66 / 2.5 / "
                     "3.125 times, section 5). ensemble time vs StarSSE: seconds of the whole ensemble, phase I "
                     "included (sum over members), over those of the StarSSE runs with the same phase-I settings, "
                     "cycle epochs and M; the thesis' x0.74 / x0.60 / x0.55 (table 4.1: (25 + 48 / 1.66) / 73 = 0.74).")
    lines.append(f"mean ± std over runs (std with ddof={DDOF}; a single run shows its value). "
                 + ", ".join(f"{h} {UNITS[R.lookup(k).unit]}" for k, h, _p in shown if R.lookup(k).unit)
                 + f". {R.DIVERSITY.label} = 100 * mean over member pairs of disagreement / max(err1, err2), "
                   f"{R.DIVERSITY_RANGE}. Every key: docs/metrics.md.")
    keys = [k for k, _n, _p in shown]
    for k in keys:  # the columns shown only when there is something to show, with what they are
        if R.lookup(k).table in (R.OPTIONAL, R.ON_REQUEST):
            lines.append(f"{R.header(k)}: {R.lookup(k).definition} (metrics.json {k}).")
    if skipped:
        lines.append(f"{len(skipped)} run(s) left out: " + "; ".join(f"{d} ({why})" for d, why in skipped) + ".")
    if unverified:
        more = " ..." if len(unverified) > 3 else ""
        lines.append(f"{len(unverified)} run(s) counted but not verified: their metrics.json predates member digests "
                     f"(scripts/evaluate.py RUN records them): {', '.join(unverified[:3])}{more}.")
    missing = [s for s in ood if ood_key(s) not in keys]
    if missing:
        lines.append(f"--ood_column {' '.join(missing)}: no run has it (available: "
                     f"{', '.join(ood_available) or 'none'}).")
    if dropped:
        lines.append(f"{len(dropped)} duplicate run(s) dropped: the same settings, seed and checkpoint as a run "
                     f"counted, whatever their weights ({_listed(dropped, '=')}).")
    if repeats:
        lines.append(f"{len(repeats)} of them with other member weights (training not bit-reproducible, e.g. on "
                     f"GPUs): pseudo-replicates of the run counted, not independent runs ({_listed(repeats, '~')}).")
    if selection:
        lines += ["", selection_table(summary, selection, shown)]
    return "\n".join(lines)


def selection_table(summary, selection, shown):
    """The chosen setting of each method, what chose it and its test numbers."""
    by = next(iter(selection.values()))["by"]
    key, criterion = SELECT_KEYS[by]
    lines = [f"One setting per method, selected by the {criterion} (`{key}`, mean over runs); its test numbers:", "",
             "| Algorithm | setting | selected on | runs | M | " + " | ".join(n for _k, n, _p in shown) + " |",
             "|" + "---|" * (len(shown) + 5)]
    for name, sel in selection.items():
        row, method = summary[sel["label"]], sel["method"]
        setting = sel["label"][len(method):].strip() if sel["label"].startswith(method) else sel["label"]
        others = [s for lab, s in sel["scores"].items() if lab != sel["label"] and np.isfinite(s)]
        against = " (the only setting)" if not others else f" (the other setting: {others[0]:.2f})" \
            if len(others) == 1 else f" ({len(others)} other settings: {min(others):.2f} .. {max(others):.2f})"
        lines.append(f"| {name} | {setting or '-'} | {by} {sel['score']:.2f}{against} | {row['runs']} | "
                     f"{'/'.join(map(str, row['members']))} | " + " | ".join(fmt(row[k], p) for k, _n, p in shown)
                     + " |")
    if by == "test":
        lines += ["", "Selected on the test set: the numbers that chose the setting also report it, so they are "
                      "optimistic; `--select_by val` on runs with a validation split (`--val_split`) is unbiased."]
    return "\n".join(lines)


# runs.csv: the run, then these metrics.json keys (the two lists last, joined by spaces)
RUN_METRICS = [R.MEMBERS, R.AVG_MEMBER_ACCURACY, R.DIVERSITY, R.ENSEMBLE_ACCURACY, R.NLL, R.ECE, R.BRIER,
               R.VAL_ENSEMBLE_ACCURACY, R.MEMBER_ACCURACY, R.ENSEMBLE_ACCURACY_BY_SIZE]
RUN_COLUMNS = ["group", "run_dir", "method", "seed"] + [m.key for m in RUN_METRICS]


def _list(values):
    return " ".join("" if a is None else f"{a:.4f}" for a in values or [])


def runs_csv(path, runs):
    """runs.csv: one row per run counted in the table (RUN_COLUMNS)."""
    write_csv(path, [{"group": lab, "run_dir": d, "method": cfg.get("method"), "seed": cfg.get("seed"),
                      **{m.key: _list(met.get(m.key)) if isinstance(met.get(m.key), list) else met.get(m.key)
                         for m in RUN_METRICS}}
                     for lab, d, cfg, met in runs], RUN_COLUMNS)


def _abbreviation(key, taken):
    """A short name for a setting: the initials of its words (cycle_lr -> cl), a short word as it is (lr, seed), a
    longer one by its first letters; a digit is added when another setting has it already."""
    words = key.split("_")
    base = "".join(w[0] for w in words) if len(words) > 1 else key if len(key) <= 5 else key[:4]
    name, k = base, 2
    while name in taken:
        name, k = f"{base}{k}", k + 1
    return name


def _short_value(value, width=12):
    """A value as a legend shows it: a path by its last part, a list joined, at most `width` characters."""
    if isinstance(value, (list, tuple)):
        text = "+".join(_short_value(v, width) for v in value)
    else:
        text = str(value)
        if "/" in text:
            text = text.rstrip("/").rsplit("/", 1)[-1]
    return text if len(text) <= width else text[:width - 1] + "~"


def legend_labels(summary):
    """({row label: short legend label}, [(abbreviation, setting)]): each row's method, then only the settings that
    differ among the rows of that method, abbreviated (the key explains them; report.md's rows keep full names)."""
    configs = {lab: row.get("config") or {"method": lab} for lab, row in summary.items()}
    keys = group_keys(configs)
    used = sorted({k for ks in keys.values() for k in ks[1:]})
    abbr = {}
    for k in used:
        abbr[k] = _abbreviation(k, set(abbr.values()))
    short = {}
    for lab, cfg in configs.items():
        values = [(abbr[k], _value(cfg, k)) for k in keys[lab][1:]]
        short[lab] = " ".join([str(cfg.get("method", lab))] + [f"{a}={_short_value(v)}" for a, v in values
                                                                if v is not None])
    return short, [(abbr[k], k) for k in used]


def plot_curves(summary, key, ylabel, path):
    """One curve per row; the legend beside the axes with short labels (legend_labels), the key under it."""
    plt = pyplot()
    short, key_table = legend_labels(summary)
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for lab, row in summary.items():
        ys = row[key]
        runs = f"{row['runs']} run{'s' if row['runs'] > 1 else ''}"
        ax.plot(range(1, len(ys) + 1), ys, marker="o", label=f"{short[lab]} ({runs})")
    ax.set_xlabel("ensemble size" if key == "by_size" else "member index")
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False)
    if key_table:
        fig.text(0.01, 0.01, "key: " + ", ".join(f"{a} = {k}" for a, k in key_table), fontsize=8, va="bottom",
                 wrap=True)
    fig.tight_layout(rect=(0, 0.06 if key_table else 0, 1, 1))
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)
