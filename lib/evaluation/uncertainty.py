"""What ensembles are for beyond accuracy: out-of-distribution detection, selective prediction, calibration (adaptive
ECE, reliability diagrams, temperature scaling) and accuracy under distribution shift, from saved arrays only.

Shapes as in lib/evaluation/metrics.py: `probs` and `logits` are (members, samples, classes) (a single model's (samples,
classes) counts as one member); `labels` is (samples,). The ensemble's prediction is the mean of the members'
probabilities. Every returned metric is a plain Python number or None where it is undefined (an empty set, a
single member's mutual information): never NaN, so metrics.json stays strict JSON.

OOD scores are oriented "higher = more likely out-of-distribution". AUROC, AUPR and FPR95 treat OOD samples as the
positive class; FPR95-ID (`fpr95_id`) treats the in-distribution (test) samples as positive, the convention of
OpenOOD and of Hendrycks et al.'s tables. The scores:
    msp                 - max_c p(c)                        (Hendrycks & Gimpel 2017)
    entropy             H(p) = - sum_c p(c) log p(c)        (nats)
    mutual_information  H(mean_m p_m) - mean_m H(p_m)       ensemble only (Depeweg et al. 2018); 0 for equal members
    energy              - logsumexp_c z(c)                  (Liu et al. 2020, temperature 1)
    max_logit           - max_c z(c)                        (Hendrycks et al. 2022)
For the ensemble, p is the mean of the members' probabilities (so its entropy is the entropy of the mean: the total
predictive uncertainty, not the mean of the members' entropies) and z the mean of the members' logits (energy and
max logit of the mean logits); for a member, its own p and z. Other libraries define the ensemble's scores
differently (torch-uncertainty's entropy criterion averages the members' entropies, and recent versions accept
energy and max logit for single models only): compare numbers only under the same definition.
"""
import math

import numpy as np
from scipy.special import entr, log_softmax, logsumexp, softmax

from lib.evaluation import metrics
from lib.infra.figures import pyplot, save_figure

SCORES = ("msp", "entropy", "mutual_information", "energy", "max_logit")
COVERAGES = (80, 90, 95)                # selective prediction: accuracy of the most confident 80/90/95 %
TPR_FOR_FPR = 95                        # FPR95: false-positive rate at 95 % true-positive rate
N_BINS = 15                             # ECE / adaptive ECE / reliability bins (lib.evaluation.metrics.ece uses 15)
T_BOUNDS = (0.05, 20.0)                 # temperature search range (log-uniform); wider is never useful in practice


def _members(a):
    a = np.asarray(a, dtype=np.float64)
    return a[None] if a.ndim == 2 else a


def finite_or_none(x):
    """A plain float, or None for NaN / infinity / None (strict JSON)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


# ----------------------------------------------------------------------------------------------------------------
# OOD detection

def ood_scores(probs=None, logits=None):
    """{score: (ensemble scores (samples,), member scores (members, samples) or None)}; higher = more likely OOD.

    Give logits where they exist (probabilities are then their softmax, and energy / max logit are added); with
    probabilities alone, energy and max_logit are absent. mutual_information has no member scores, and is absent
    for a single member (it is identically 0)."""
    if logits is not None:
        z = _members(logits)
        p = softmax(z, axis=-1)
    else:
        z, p = None, _members(probs)
    mean_p = p.mean(axis=0)
    member_h = entr(p).sum(axis=-1)                     # (members, samples); entr: 0 log 0 = 0
    out = {"msp": (-mean_p.max(axis=-1), -p.max(axis=-1)),
           "entropy": (entr(mean_p).sum(axis=-1), member_h)}
    if len(p) > 1:
        out["mutual_information"] = (entr(mean_p).sum(axis=-1) - member_h.mean(axis=0), None)
    if z is not None:
        mean_z = z.mean(axis=0)
        out["energy"] = (-logsumexp(mean_z, axis=-1), -logsumexp(z, axis=-1))
        out["max_logit"] = (-mean_z.max(axis=-1), -z.max(axis=-1))
    return out


def _counts_by_threshold(in_scores, out_scores):
    """Cumulative (true positives, false positives) when every distinct score, from the highest down, is the
    threshold of "score >= t means OOD"."""
    scores = np.concatenate([in_scores, out_scores])
    is_out = np.concatenate([np.zeros(len(in_scores)), np.ones(len(out_scores))])
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], is_out[order]
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]  # last index of each group of tied scores
    tp = np.cumsum(y)[last]
    fp = np.arange(1, len(s) + 1)[last] - tp
    return tp, fp


def ood_metrics(in_scores, out_scores):
    """{"auroc", "aupr", "fpr95", "fpr95_id"} of separating OOD from in-distribution samples by `score`:
    AUROC = P(score_ood > score_in) + P(tie) / 2 (the Mann-Whitney statistic, = the ROC area, whichever class is
    positive); AUPR = average precision sum_k (R_k - R_k-1) P_k over thresholds, OOD positive (as scikit-learn's);
    FPR95 (OOD positive) = the smallest fraction of in-distribution samples flagged by a threshold that flags >= 95 %
    of the OOD samples; FPR95-ID (in-distribution positive, OpenOOD's) = the smallest fraction of OOD samples accepted
    by a threshold that accepts >= 95 % of the in-distribution samples. None where either set is empty."""
    a, b = np.asarray(in_scores, dtype=np.float64).ravel(), np.asarray(out_scores, dtype=np.float64).ravel()
    if len(a) == 0 or len(b) == 0:
        return {"auroc": None, "aupr": None, "fpr95": None, "fpr95_id": None}
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("OOD scores must be finite")
    from scipy.stats import mannwhitneyu  # imported here: scipy.stats costs every training script 0.3 s at start
    auroc = mannwhitneyu(b, a, method="asymptotic").statistic / (len(a) * len(b))
    tp, fp = _counts_by_threshold(a, b)
    recall, precision = tp / len(b), tp / (tp + fp)
    aupr = float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
    return {"auroc": float(auroc), "aupr": aupr, "fpr95": _fpr_at_tpr(tp, fp, len(b), len(a)),
            "fpr95_id": _fpr_at_tpr(*_counts_by_threshold(-b, -a), len(a), len(b))}


def _fpr_at_tpr(tp, fp, positives, negatives):
    """The false-positive rate at the first threshold whose true-positive rate reaches TPR_FOR_FPR (exact integer
    test), from _counts_by_threshold's cumulative counts."""
    k = int(np.argmax(tp * 100 >= TPR_FOR_FPR * positives))
    return float(fp[k] / negatives)


def ood_report(in_out, out_out):
    """Flat {"<score>/auroc": ..., "<score>/member_auroc": [...], ...} from two ood_scores results (in-distribution,
    OOD), for every score both have."""
    res = {}
    for score in SCORES:
        if score not in in_out or score not in out_out:
            continue
        (ens_in, mem_in), (ens_out, mem_out) = in_out[score], out_out[score]
        for k, v in ood_metrics(ens_in, ens_out).items():
            res[f"{score}/{k}"] = finite_or_none(v)
        if mem_in is not None:
            per_member = [ood_metrics(i, o) for i, o in zip(mem_in, mem_out)]
            for k in per_member[0]:
                res[f"{score}/member_{k}"] = [finite_or_none(m[k]) for m in per_member]
    return res


# ----------------------------------------------------------------------------------------------------------------
# selective prediction

def _expected_errors_at(confidence, correct):
    """(samples,) expected number of errors among the k most confident samples, k = 1..n. Tied confidences have
    no order: the errors of a tied group are spread evenly over its positions (the mean over tie orders)."""
    conf = np.asarray(confidence, dtype=np.float64)
    err = 1.0 - np.asarray(correct, dtype=np.float64)
    order = np.argsort(-conf, kind="stable")
    c, e = conf[order], err[order]
    n = len(c)
    ends = np.r_[np.flatnonzero(np.diff(c) != 0), n - 1]    # last position of each tied group
    starts = np.r_[0, ends[:-1] + 1]
    cum_end = np.cumsum(e)[ends]
    before = np.r_[0.0, cum_end[:-1]]                      # errors before each group
    group = np.repeat(np.arange(len(ends)), ends - starts + 1)
    k = np.arange(1, n + 1)
    frac = (k - starts[group]) / (ends[group] - starts[group] + 1)
    return before[group] + (cum_end[group] - before[group]) * frac


def selective(confidence, correct, coverages=COVERAGES):
    """Selective prediction from a confidence ranking (the most confident samples are answered first):
    {"aurc": area under the risk-coverage curve = mean over k = 1..n of (errors among the k most confident) / k
    (Geifman et al. 2019; a fraction), "acc@80": accuracy (%) on the ceil(80 % * n) most confident samples, ...}."""
    n = len(confidence)
    if n == 0:
        return {"aurc": None, **{f"acc@{c}": None for c in coverages}}
    errs = _expected_errors_at(confidence, correct)
    k = np.arange(1, n + 1)
    res = {"aurc": float(np.mean(errs / k))}
    for c in coverages:
        m = max(1, -(-c * n // 100))  # ceil(c % of n) in integers
        res[f"acc@{c}"] = 100.0 * (1.0 - errs[m - 1] / m)
    return res


def selective_report(probs, labels):
    """sel/* of the ensemble: confidence = the max of its mean probability."""
    p = _members(probs).mean(axis=0)
    return {k: finite_or_none(v) for k, v in selective(p.max(axis=-1), p.argmax(axis=-1) == labels).items()}


# ----------------------------------------------------------------------------------------------------------------
# calibration

def adaptive_ece(probs, labels, n_bins=N_BINS):
    """Adaptive ECE (a fraction) of the ensemble: the samples sorted by confidence are cut into n_bins bins of equal
    size (sizes differ by at most one; ties are cut in their stable order); sum over bins of
    |B|/n * |accuracy(B) - mean confidence(B)| (Nixon et al. 2019)."""
    p = _members(probs).mean(axis=0)
    if len(p) == 0:
        return None
    conf, correct = p.max(axis=-1), (p.argmax(axis=-1) == labels).astype(np.float64)
    order = np.argsort(conf, kind="stable")
    total = 0.0
    for b in np.array_split(order, min(n_bins, len(order))):
        total += len(b) / len(order) * abs(correct[b].mean() - conf[b].mean())
    return float(total)


def reliability(probs, labels, n_bins=N_BINS):
    """Reliability-diagram data of the ensemble over n_bins equal-width confidence bins (as lib.evaluation.metrics.ece):
    {"edges": (n_bins + 1,), "count", "accuracy", "confidence": (n_bins,) with NaN in empty bins}."""
    p = _members(probs).mean(axis=0)
    conf, correct = p.max(axis=-1), (p.argmax(axis=-1) == labels).astype(np.float64)
    bins = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.bincount(bins, correct, minlength=n_bins) / count
        mean_conf = np.bincount(bins, conf, minlength=n_bins) / count
    return {"edges": np.linspace(0, 1, n_bins + 1), "count": count, "accuracy": acc, "confidence": mean_conf}


def plot_reliability(curves, path, title="reliability diagram"):
    """One panel per curve ({label: (probs, labels)}): accuracy per confidence bin (bars), the mean confidence of
    each bin (dots) and the diagonal of perfect calibration; ECE and adaptive ECE in the panel title. PNG at path."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 4.2), squeeze=False)
    for ax, (label, (probs, labels)) in zip(axes[0], curves.items()):
        r = reliability(probs, labels)
        width = r["edges"][1] - r["edges"][0]
        ax.bar(r["edges"][:-1], np.nan_to_num(r["accuracy"]), width=width, align="edge", edgecolor="black",
               color="tab:blue", alpha=0.7, label="accuracy")
        ax.plot(r["confidence"], r["confidence"], "o", color="tab:red", ms=3, label="mean confidence")
        ax.plot([0, 1], [0, 1], "--", color="gray", lw=1)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy",
               title=f"{label}\nECE {metrics.ece(probs, labels):.3f}, adaptive ECE {adaptive_ece(probs, labels):.3f}")
        ax.legend(loc="upper left", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


def tempered_probs(logits, temperature):
    """(samples, classes): the mean over members of softmax(z_m / T)."""
    return softmax(_members(logits) / temperature, axis=-1).mean(axis=0)


def _nll_at(z, labels, temperature):
    """NLL (nats) of mean_m softmax(z_m / T), computed in log space."""
    logp = log_softmax(z / temperature, axis=-1)[:, np.arange(len(labels)), labels]  # (members, samples)
    return float(-np.mean(logsumexp(logp, axis=0) - math.log(len(z))))


def fit_temperature(logits, labels, bounds=T_BOUNDS):
    """Temperature scaling (Guo et al. 2017): the T in `bounds` minimising the NLL of mean_m softmax(z_m / T) on
    held-out (validation) logits; one model's logits give its own temperature, several members' logits one
    temperature shared by all members before their probabilities are averaged. Bounded search over log T."""
    z, labels = _members(logits), np.asarray(labels)
    from scipy.optimize import minimize_scalar  # imported here, as scipy.stats above
    res = minimize_scalar(lambda log_t: _nll_at(z, labels, math.exp(log_t)), method="bounded",
                          bounds=(math.log(bounds[0]), math.log(bounds[1])), options={"xatol": 1e-6})
    return float(math.exp(res.x))


def calibration_report(test_probs, test_labels, test_logits=None, val_logits=None, val_labels=None):
    """cal/*: adaptive ECE of the ensemble; with validation logits (and test logits), temperature scaling fitted
    on the validation split: the ensemble's shared temperature, its ECE, NLL and adaptive ECE on the test set after
    TS, and each member's own temperature."""
    res = {"aece": finite_or_none(adaptive_ece(test_probs, test_labels))}
    if val_logits is None or test_logits is None or val_labels is None or len(val_labels) == 0:
        return res
    t = fit_temperature(val_logits, val_labels)
    p = tempered_probs(test_logits, t)
    res.update({"ts/temperature": t, "ts/ece": finite_or_none(metrics.ece(p, test_labels)),
                "ts/nll": finite_or_none(metrics.nll(p, test_labels)),
                "ts/aece": finite_or_none(adaptive_ece(p, test_labels)),
                "ts/member_temperature": [fit_temperature(v, val_labels) for v in _members(val_logits)]})
    return res


# ----------------------------------------------------------------------------------------------------------------
# distribution shift

def _part_metrics(probs, labels):
    probs = _members(probs)
    return {"acc": metrics.ensemble_accuracy(probs, labels), "nll": metrics.nll(probs, labels),
            "ece": metrics.ece(probs, labels), "member_acc": metrics.member_accuracy(probs, labels).tolist(),
            "member_nll": [metrics.nll(p, labels) for p in probs],
            "member_ece": [metrics.ece(p, labels) for p in probs]}


def shift_report(parts):
    """shift/<set>/*: {part name: (probs (members, samples, classes), labels)} -> flat {"acc", "nll", "ece",
    "member_acc", "member_nll", "member_ece": the mean over the parts (each part weighs the same, as the mean
    corruption accuracy of CIFAR-C), "n_parts", and "<part>/acc", "<part>/nll", "<part>/ece", "<part>/member_acc"
    for every part when there are several; parts named "<corruption>/<severity>" also give the means per severity
    "severity_<s>/acc" ... (every key of the set)}."""
    per = {name: _part_metrics(p, y) for name, (p, y) in parts.items() if len(y) > 0}
    res = {"n_parts": len(per)}
    if not per:
        return res

    def mean_into(prefix, names):
        for k in ("acc", "nll", "ece"):
            res[prefix + k] = finite_or_none(np.mean([per[n][k] for n in names]))
        for k in ("member_acc", "member_nll", "member_ece"):
            res[prefix + k] = [finite_or_none(v) for v in np.mean([per[n][k] for n in names], axis=0)]

    mean_into("", list(per))
    if len(per) > 1:
        for name, m in per.items():
            res.update({f"{name}/{k}": finite_or_none(m[k]) for k in ("acc", "nll", "ece")})
            res[f"{name}/member_acc"] = [finite_or_none(x) for x in m["member_acc"]]
        severities = sorted({n.split("/")[-1] for n in per if n.count("/") == 1})
        if len(severities) > 1:
            for s in severities:
                mean_into(f"severity_{s}/", [n for n in per if n.count("/") == 1 and n.split("/")[-1] == s])
    return res
