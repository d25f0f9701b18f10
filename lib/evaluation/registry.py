"""Every metrics.json key, once: its key (or key pattern), short label, direction, format, unit, the results-table
column that shows it, and its definition. metrics.json is written from it (lib.evaluation.results refuses a key it
does not know), evaluate.py prints from it, the results tables take their columns from it, and docs/metrics.md is
generated from it:

    python -m lib.evaluation.registry > docs/metrics.md

A pattern names its variable parts in braces: `ood/{set}/{score}/auroc` is `ood/svhn/energy/auroc` for the set
svhn and the score energy. FIELDS lists the values a part can take where they are fixed ({set} and {part} are the
names of the evaluation sets and their parts).

The keys form groups (`group`): `run` (the test metrics, their validation twins, selective prediction and
calibration: recomputed from the saved predictions on every write), `soup/<mode>`, `ood/<set>` and `shift/<set>`
(computed by scripts/soup.py or for each evaluation set). Every group in a metrics.json was computed from the members
whose digests `member_sha256` lists (lib.evaluation.results).
"""
import functools
import re
from dataclasses import dataclass

HIGHER, LOWER = "higher", "lower"                 # direction: which way is better
COLUMN, OPTIONAL, ON_REQUEST = "column", "optional column", "on request"  # where the results table shows a key
# the values of a pattern's fixed parts, in the order tables and docs list them
FIELDS = {"score": ("msp", "entropy", "mutual_information", "energy", "max_logit"),   # OOD scores
          "coverage": (80, 90, 95),                                                  # selective prediction (%)
          "mode": ("uniform", "greedy")}                                             # model soups
# the parts of a pattern that may hold a slash: the parts of a shifted set ("<corruption>/<severity>")
_SLASHED = {"part"}


@dataclass(frozen=True)
class Metric:
    """One metrics.json key or key pattern. label: a short name (a template with the pattern's fields, e.g.
    "AUROC {set}/{score}"); direction: HIGHER, LOWER or None (a count, a setting, a record); decimals: how many the
    tables and printed lines show (None: shown as is); unit: "%", "nats", "fraction", "s" or "" (none);
    table: COLUMN (every results table), OPTIONAL (when a run has it), ON_REQUEST (report.py --ood_column) or None;
    definition: what it is, in words a reader can check against the code; val: it has a validation twin val_<key>
    (runs with a validation split); printed: evaluate.py and the end of training print it (lib.evaluation.results
    .result_lines)."""
    key: str
    label: str
    direction: str
    decimals: int
    unit: str
    table: str
    definition: str
    val: bool = False
    printed: bool = False

    @property
    def fields(self):
        return re.findall(r"{(\w+)}", self.key)

    @property
    def short(self):
        """The label without its variable parts ('AUROC {set}/{score}' -> 'AUROC')."""
        return re.sub(r"\s*\S*{\w+}\S*", "", self.label).strip() or self.label

    @property
    def group(self):
        """'run', or 'soup/<mode>', 'ood/<set>', 'shift/<set>' as a pattern: the unit a derived result is kept or
        dropped in."""
        head = self.key.split("/")[0]
        return "/".join(self.key.split("/")[:2]) if head in ("soup", "ood", "shift") else "run"

    def of(self, **values):
        """The concrete key: Metric('ood/{set}/{score}/auroc').of(set='svhn', score='msp') -> 'ood/svhn/msp/auroc'."""
        missing = set(self.fields) - set(values)
        if missing:
            raise ValueError(f"{self.key} needs {', '.join(sorted(missing))}")
        return self.key.format(**values)

    def header(self, key=None):
        """The label of `key` (an instance of this pattern; default: the key itself)."""
        return self.label.format(**self.match(key or self.key)) if self.fields else self.label

    def match(self, key):
        """{field: value} when `key` is an instance of this pattern, else None."""
        m = _regex(self.key).fullmatch(key)
        return None if m is None else m.groupdict()

    def format(self, value):
        """The value as tables and printed lines show it: '-' where it is undefined (null), a list joined by spaces."""
        if value is None or (isinstance(value, float) and value != value):
            return "-"
        if isinstance(value, (list, tuple)):
            return " ".join(self.format(v) for v in value)
        if self.decimals is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
            return f"{value:.{self.decimals}f}"
        return str(value)


@functools.lru_cache(maxsize=None)
def _regex(pattern):
    out, pos = "", 0
    for m in re.finditer(r"{(\w+)}", pattern):
        out += re.escape(pattern[pos:m.start()])
        out += f"(?P<{m.group(1)}>.+)" if m.group(1) in _SLASHED else f"(?P<{m.group(1)}>[^/]+)"
        pos = m.end()
    return re.compile(out + re.escape(pattern[pos:]))


M = Metric
DIVERSITY_RANGE = ("from 0 (every pair predicts the same labels) to at most 200: two members disagree only where at "
                   "least one is wrong, so the disagreement is at most err1 + err2 <= 2 max(err1, err2); 100 means the "
                   "members disagree as often as the weaker one errs, and values above 100 mean they err on largely "
                   "different samples")

_RUN = [
    M("method", "method", None, None, "", None, "the run's method (config.json)"),
    M("seed", "seed", None, None, "", None, "the run's seed (config.json)"),
    M("dataset", "data", None, None, "", None, "the run's data set (config.json)"),
    M("members", "M", None, None, "", None, "the number of members every number of this file was computed from"),
    M("member_sha256", "members' digests", None, None, "", None,
      "one sha256 per member, naming the member every number of this file was computed from: its record's own digest "
      "(`member_<i>.json`, which holds the digests of the member's files). A member trained again, or predictions "
      "replaced, give another digest, and the results computed from the old one are dropped or recomputed"),
    M("partial", "partial", None, None, "", None,
      "true when the run was evaluated before all its members were trained (scripts/evaluate.py --partial)"),
    M("planned_members", "planned M", None, None, "", None, "the run's --members, with partial"),
    M("member_accuracy", "member acc.", HIGHER, 2, "%", None, "test accuracy of each member (a list)", val=True,
      printed=True),
    M("avg_member_accuracy", "avg. acc.", HIGHER, 2, "%", COLUMN, "the mean of the members' test accuracies",
      val=True, printed=True),
    M("diversity", "div.", None, 2, "%", COLUMN,
      "the mean over member pairs of pairwise_diversity (thesis section 3, Fort et al. 2020): "
      "100 * mean(pred1 != pred2) / max(err1, err2); null for one member. Its range: " + DIVERSITY_RANGE, val=True,
      printed=True),
    M("ensemble_accuracy", "ens. acc.", HIGHER, 2, "%", COLUMN,
      "test accuracy of the ensemble: the argmax of the members' mean probability", val=True, printed=True),
    M("ensemble_accuracy_by_size", "ens. acc. by size", HIGHER, 2, "%", None,
      "test accuracy of the ensemble of the first k members, k = 1..M (a list)", val=True, printed=True),
    M("pairwise_diversity", "pairwise div.", None, 2, "%", None,
      "the M x M matrix of 100 * mean(pred_i != pred_j) / max(err_i, err_j), 0 on the diagonal and for two perfect "
      "members"),
    M("nll", "NLL", LOWER, 3, "nats", COLUMN,
      "negative log-likelihood of the ensemble's mean probability, per test sample", val=True, printed=True),
    M("ece", "ECE", LOWER, 3, "fraction", COLUMN,
      "expected calibration error of the ensemble: 15 equal-width confidence bins, the size-weighted mean of "
      "|accuracy - mean confidence| (Guo et al. 2017)", val=True, printed=True),
    M("brier", "Brier", LOWER, 3, "", None,
      "Brier score of the ensemble: the mean over samples of the squared distance to the one-hot label", val=True,
      printed=True),
    M("member_nll", "member NLL", LOWER, 3, "nats", None, "each member's test NLL (a list)"),
    M("member_seconds", "member s", None, 1, "s", None,
      "each member's seconds: training (all resumed segments) and its evaluation; a cached phase-I member counts "
      "with the seconds it took when it was trained (the time columns are computed from these)"),
    M("member_seconds_per_epoch", "s / epoch", None, 2, "s", None, "each member's mean seconds per epoch"),
    M("member_trainable_fraction", "trained params", None, 3, "fraction", None,
      "each member's share of parameters trained (frozen stages excluded)"),
    M("sel/aurc", "AURC", LOWER, 4, "fraction", None,
      "area under the risk-coverage curve of the ensemble (confidence: its max mean probability): the mean over "
      "k = 1..n of the error rate among the k most confident test samples (Geifman et al. 2019); tied confidences "
      "count in expectation over their orders", printed=True),
    M("sel/acc@{coverage}", "acc@{coverage}", HIGHER, 2, "%", None,
      "accuracy of the ensemble on its ceil(coverage % * n) most confident test samples", printed=True),
    M("cal/aece", "adaptive ECE", LOWER, 4, "fraction", None,
      "adaptive ECE of the ensemble: the test samples sorted by confidence cut into 15 bins of equal size, the "
      "size-weighted mean of |accuracy - mean confidence| (Nixon et al. 2019)", printed=True),
    M("cal/ts/temperature", "TS temperature", None, 3, "", None,
      "temperature scaling (Guo et al. 2017; runs with a validation split): the one temperature T, shared by all "
      "members, minimising the validation NLL of mean_m softmax(z_m / T) (bounded search over log T in [0.05, 20])",
      printed=True),
    M("cal/ts/ece", "ECE after TS", LOWER, 4, "fraction", None, "test ECE of mean_m softmax(z_m / T)", printed=True),
    M("cal/ts/nll", "NLL after TS", LOWER, 4, "nats", None, "test NLL of mean_m softmax(z_m / T)", printed=True),
    M("cal/ts/aece", "adaptive ECE after TS", LOWER, 4, "fraction", None,
      "test adaptive ECE of mean_m softmax(z_m / T)", printed=True),
    M("cal/ts/member_temperature", "member TS temperature", None, 3, "", None,
      "each member's own temperature, fitted on its validation logits (a list)"),
]

_OOD_POSITIVE = "OOD samples are the positive class"
_ID_POSITIVE = "in-distribution (test) samples are the positive class"
_OOD = [
    M("ood/{set}/samples", "samples", None, None, "", None, "the number of images of the OOD set"),
    M("ood/{set}/{score}/auroc", "AUROC {set}/{score}", HIGHER, 3, "", ON_REQUEST,
      "area under the ROC curve of telling the OOD set from the test set by the ensemble's score: "
      "P(score of an OOD sample > score of a test sample), ties counted one half (the Mann-Whitney statistic); "
      "the same with either class positive", printed=True),
    M("ood/{set}/{score}/aupr", "AUPR {set}/{score}", HIGHER, 3, "", None,
      f"average precision, {_OOD_POSITIVE} (scikit-learn's average_precision_score)"),
    M("ood/{set}/{score}/fpr95", "FPR95 {set}/{score}", LOWER, 3, "fraction", None,
      f"{_OOD_POSITIVE}: the fraction of test samples flagged as OOD by the threshold that flags 95 % of the OOD "
      f"samples (the smallest such fraction)", printed=True),
    M("ood/{set}/{score}/fpr95_id", "FPR95-ID {set}/{score}", LOWER, 3, "fraction", None,
      f"{_ID_POSITIVE} (the convention of OpenOOD and Hendrycks et al.'s tables): the fraction of OOD samples "
      f"accepted as in-distribution by the threshold that accepts 95 % of the test samples (the smallest such "
      f"fraction)", printed=True),
    M("ood/{set}/{score}/member_auroc", "member AUROC", HIGHER, 3, "", None,
      "each member's AUROC with its own score (a list; not for mutual_information, an ensemble-only score)"),
    M("ood/{set}/{score}/member_aupr", "member AUPR", HIGHER, 3, "", None,
      f"each member's AUPR, {_OOD_POSITIVE} (a list)"),
    M("ood/{set}/{score}/member_fpr95", "member FPR95", LOWER, 3, "fraction", None,
      f"each member's FPR95, {_OOD_POSITIVE} (a list)"),
    M("ood/{set}/{score}/member_fpr95_id", "member FPR95-ID", LOWER, 3, "fraction", None,
      f"each member's FPR95, {_ID_POSITIVE} (a list)"),
]

_SHIFT_MEANS = [
    ("acc", "acc.", HIGHER, 2, "%", "ensemble accuracy"),
    ("nll", "NLL", LOWER, 3, "nats", "ensemble NLL"),
    ("ece", "ECE", LOWER, 3, "fraction", "ensemble ECE (15 bins)"),
    ("member_acc", "member acc.", HIGHER, 2, "%", "each member's accuracy (a list)"),
    ("member_nll", "member NLL", LOWER, 3, "nats", "each member's NLL (a list)"),
    ("member_ece", "member ECE", LOWER, 3, "fraction", "each member's ECE (a list)"),
]
_SHIFT = [M("shift/{set}/n_parts", "parts", None, None, "", None,
            "the number of the shifted set's parts (CIFAR-C: one per corruption and severity)")]
_SHIFT += [M(f"shift/{{set}}/{k}", f"{label} {{set}}", d, dec, unit, None,
             f"{what} on the shifted set: the mean over its parts, each part weighing the same (as the mean "
             f"corruption accuracy of CIFAR-C)", printed=not k.startswith("member_"))
           for k, label, d, dec, unit, what in _SHIFT_MEANS]
_SHIFT += [M(f"shift/{{set}}/severity_{{severity}}/{k}", f"{label} {{set}} severity {{severity}}", d, dec, unit, None,
             f"{what}, the mean over the parts of one severity (parts named `<corruption>/<severity>`)")
           for k, label, d, dec, unit, what in _SHIFT_MEANS]
_SHIFT += [M(f"shift/{{set}}/{{part}}/{k}", f"{label} {{set}}/{{part}}", d, dec, unit, None,
             f"{what} on one part of a set of several parts")
           for k, label, d, dec, unit, what in _SHIFT_MEANS[:4]]

_SOUP = [
    M("soup/{mode}/acc", "{mode} soup", HIGHER, 2, "%", OPTIONAL,
      "test accuracy of the model whose weights are the soup of the members' (uniform: the mean of all; greedy: "
      "Wortsman et al. 2022, members added by validation accuracy while it does not drop), its BatchNorm statistics "
      "re-estimated on training batches", printed=True),
    M("soup/{mode}/nll", "{mode} soup NLL", LOWER, 3, "nats", None, "the soup's test NLL", printed=True),
    M("soup/{mode}/ece", "{mode} soup ECE", LOWER, 3, "fraction", None, "the soup's test ECE (15 bins)", printed=True),
    M("soup/greedy/members", "greedy soup members", None, None, "", None,
      "the members the greedy soup kept, in the order they joined"),
]

_BASE = _RUN + _OOD + _SHIFT + _SOUP
# the validation twins of the test metrics (runs with a validation split): val_<key>, the same metric on it
VALIDATION = [M(f"val_{m.key}", f"val. {m.label}", m.direction, m.decimals, m.unit, None,
                f"`{m.key}` on the validation split") for m in _BASE if m.val]
METRICS = tuple(_BASE[:len(_RUN)] + VALIDATION + _BASE[len(_RUN):])
VAL_KEYS = tuple(m.key for m in _BASE if m.val)  # the test metrics that get val_* twins

_BY_KEY = {m.key: m for m in METRICS}
_PATTERNS = [m for m in METRICS if m.fields]
# a key is matched by its most specific pattern: the one with the fewest variable parts, then the longest
_PATTERNS.sort(key=lambda m: (len(m.fields), "part" in m.fields, -len(m.key)))


@functools.lru_cache(maxsize=None)
def lookup(key):
    """The Metric of a concrete metrics.json key; KeyError for a key no entry describes."""
    if key in _BY_KEY:
        return _BY_KEY[key]
    for m in _PATTERNS:
        if m.match(key) is not None:
            return m
    raise KeyError(f"{key!r} is not a registered metrics.json key (lib/evaluation/registry.py)")


def known(key):
    try:
        lookup(key)
        return True
    except KeyError:
        return False


def group(key):
    """The group of a concrete key: 'run', or 'soup/uniform', 'ood/svhn', 'shift/cifar-c', ..."""
    m = lookup(key)
    return "run" if m.group == "run" else "/".join(key.split("/")[:2])


def get(key):
    """The Metric registered under exactly this key or pattern (KeyError otherwise): how code names a metric."""
    return _BY_KEY[key]


def header(key):
    """The label of a concrete key, e.g. 'AUROC noise/entropy', 'uniform soup'."""
    return lookup(key).header(key)


def show(key, value):
    """'label value' as printed lines show a key."""
    return f"{header(key)} {lookup(key).format(value)}"


def columns(table, present=()):
    """[(key, header, decimals)] of the results-table columns of one placement (COLUMN, or OPTIONAL: every instance
    of an optional pattern among the keys `present`, in FIELDS order)."""
    out = []
    for m in METRICS:
        if m.table != table:
            continue
        if not m.fields:
            out.append((m.key, m.label, m.decimals))
            continue
        domain = [dict(zip(m.fields, vals)) for vals in _product([FIELDS.get(f, ()) for f in m.fields])]
        out += [(m.of(**d), m.header(m.of(**d)), m.decimals) for d in domain if m.of(**d) in present]
    return out


def within(prefix, values, **fields):
    """{'<prefix>/<name>': value} for the {name: value} a computation returns (lib.evaluation.uncertainty's reports),
    prefix a group pattern (OOD, SHIFT, SOUP, SELECTIVE, CALIBRATION) filled with `fields`; each key must be
    registered (KeyError otherwise)."""
    out = {f"{prefix.format(**fields)}/{k}": v for k, v in values.items()}
    for k in out:
        lookup(k)
    return out


# the key prefixes of the groups, and the keys code refers to by name: a key renamed here is renamed everywhere
OOD, SHIFT, SOUP, SELECTIVE, CALIBRATION = "ood/{set}", "shift/{set}", "soup/{mode}", "sel", "cal"
METHOD, SEED, DATASET, MEMBERS, MEMBER_SHA256, PARTIAL, PLANNED_MEMBERS = (
    _BY_KEY[k] for k in ("method", "seed", "dataset", "members", "member_sha256", "partial", "planned_members"))
MEMBER_ACCURACY, ENSEMBLE_ACCURACY, ENSEMBLE_ACCURACY_BY_SIZE, BRIER = (
    _BY_KEY[k] for k in ("member_accuracy", "ensemble_accuracy", "ensemble_accuracy_by_size", "brier"))
AVG_MEMBER_ACCURACY, DIVERSITY, NLL, ECE = (_BY_KEY[k] for k in ("avg_member_accuracy", "diversity", "nll", "ece"))
PAIRWISE_DIVERSITY, MEMBER_NLL = _BY_KEY["pairwise_diversity"], _BY_KEY["member_nll"]
TS_TEMPERATURE = _BY_KEY["cal/ts/temperature"]
VAL_ENSEMBLE_ACCURACY = _BY_KEY["val_ensemble_accuracy"]
MEMBER_SECONDS, MEMBER_SECONDS_PER_EPOCH, MEMBER_TRAINABLE_FRACTION = (
    _BY_KEY[k] for k in ("member_seconds", "member_seconds_per_epoch", "member_trainable_fraction"))
OOD_AUROC, OOD_FPR95, OOD_FPR95_ID = (_BY_KEY[f"ood/{{set}}/{{score}}/{k}"] for k in ("auroc", "fpr95", "fpr95_id"))
OOD_SAMPLES, SHIFT_PARTS = _BY_KEY["ood/{set}/samples"], _BY_KEY["shift/{set}/n_parts"]
GREEDY_MEMBERS = _BY_KEY["soup/greedy/members"]


def _product(lists):
    out = [()]
    for values in lists:
        out = [o + (v,) for o in out for v in values]
    return out


# ----------------------------------------------------------------------------------------------------------------
# docs/metrics.md

_SECTIONS = [("The run", lambda m: m.group == "run" and "/" not in m.key and not m.key.startswith("val_")),
             ("Validation twins (runs with a validation split)", lambda m: m.key.startswith("val_")),
             ("Selective prediction and calibration", lambda m: m.key.startswith(("sel/", "cal/"))),
             ("Out-of-distribution detection", lambda m: m.key.startswith("ood/")),
             ("Distribution shift", lambda m: m.key.startswith("shift/")),
             ("Model soups", lambda m: m.key.startswith("soup/"))]


def markdown():
    """docs/metrics.md: every key, grouped, with its label, unit, direction, table and definition."""
    fields = "; ".join(f"`{{{k}}}`: {', '.join(map(str, v))}" for k, v in FIELDS.items())
    lines = ["# metrics.json keys", "",
             "Generated from `lib/evaluation/registry.py` (`python -m lib.evaluation.registry > docs/metrics.md`); a "
             "test fails when this page differs from the registry. metrics.json is strict JSON: a value that does not "
             "exist (the diversity of one member) is `null`, never NaN. Accuracy, diversity and coverage are in "
             "percent; ECE, AURC and FPR95 are fractions; NLL is in nats.", "",
             f"Parts of a pattern in braces: {fields}; `{{set}}` is an evaluation set's name (`noise`, `svhn`, a "
             f"folder's name) and `{{part}}` one of its parts (`<corruption>/<severity>` for CIFAR-C).", "",
             "Every result in a metrics.json was computed from the members listed in `member_sha256`. When a member "
             "changes (trained again, its predictions replaced), the next write recomputes the run's own keys from "
             "the saved predictions and drops the soups and the OOD and shifted sets computed from the old members, "
             "saying how to compute them again; readers (report.py, the analyses) check the digests first.", ""]
    for title, test in _SECTIONS:
        lines += [f"## {title}", "", "| key | label | unit | better | results table | definition |",
                  "|---|---|---|---|---|---|"]
        for m in METRICS:
            if test(m):
                cells = [f"`{m.key}`", m.label, m.unit or "-", m.direction or "-", m.table or "-", m.definition]
                lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(), end="")
