"""Ensemble metrics from saved test-set probabilities.

`probs` has shape (members, samples, classes); `labels` has shape (samples,). Accuracy and diversity are in
percent; NLL is in nats per sample; ECE and the Brier score are fractions (ECE in [0, 1]).
The ensemble's prediction is the mean of the members' probabilities (softmax averaging).
"""
import itertools

import numpy as np

from lib.evaluation import registry as R

EPS = 1e-12


def _as_members(probs):
    probs = np.asarray(probs, dtype=np.float64)
    return probs[None] if probs.ndim == 2 else probs


def _ensemble(probs):
    """(samples, classes) probabilities of the ensemble of all members (or a single prediction as is)."""
    return _as_members(probs).mean(axis=0)


def accuracy(p, labels):
    """Top-1 accuracy (%) of one prediction p: (samples, classes)."""
    return 100.0 * float(np.mean(np.argmax(p, axis=-1) == labels))


def member_accuracy(probs, labels):
    """(members,) accuracy of each member (%)."""
    return np.array([accuracy(p, labels) for p in _as_members(probs)])


def ensemble_accuracy(probs, labels):
    """Accuracy (%) of the ensemble of all members: argmax of the mean probability."""
    return accuracy(_ensemble(probs), labels)


def ensemble_accuracy_by_size(probs, labels):
    """(members,) accuracy (%) of the ensemble of the first k members, k = 1..M (thesis figures of ensemble size)."""
    probs = _as_members(probs)
    running = np.cumsum(probs, axis=0)  # the sum of the first k members has the same argmax as their mean
    return np.array([accuracy(running[k], labels) for k in range(len(probs))])


def pairwise_diversity(probs, labels):
    """(M, M) matrix: 100 * mean(pred_i != pred_j) / max(err_i, err_j), zero on the diagonal (thesis table 6.2).

    Two members that are both perfect cannot disagree; their diversity is defined as 0.
    """
    probs = _as_members(probs)
    preds = np.argmax(probs, axis=-1)
    errs = np.mean(preds != labels[None], axis=1)
    m = len(probs)
    out = np.zeros((m, m))
    for i, j in itertools.combinations(range(m), 2):
        denom = max(errs[i], errs[j])
        out[i, j] = out[j, i] = 0.0 if denom == 0 else 100.0 * np.mean(preds[i] != preds[j]) / denom
    return out


def diversity(probs, labels):
    """Thesis diversity (%): the mean of pairwise_diversity over all member pairs (Fort et al. 2020 normalisation).
    NaN for a single member."""
    probs = _as_members(probs)
    m = len(probs)
    if m < 2:
        return float("nan")
    return float(pairwise_diversity(probs, labels)[np.triu_indices(m, k=1)].mean())


def nll(probs, labels):
    """Negative log-likelihood (nats per sample) of the ensemble."""
    p = _ensemble(probs)
    return float(-np.mean(np.log(np.clip(p[np.arange(len(labels)), labels], EPS, None))))


def ece(probs, labels, n_bins=15):
    """Expected calibration error (fraction) of the ensemble: confidences in n_bins equal-width bins
    (i/n, (i+1)/n]; sum over bins of |B|/n * |accuracy(B) - mean confidence(B)| (Guo et al. 2017)."""
    p = _ensemble(probs)
    conf, correct = p.max(axis=-1), (p.argmax(axis=-1) == labels).astype(np.float64)
    bins = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        in_bin = bins == b
        if in_bin.any():
            total += in_bin.mean() * abs(correct[in_bin].mean() - conf[in_bin].mean())
    return float(total)


def brier(probs, labels):
    """Brier score of the ensemble: mean over samples of the squared distance to the one-hot label."""
    p = _ensemble(probs)
    onehot = np.zeros_like(p)
    onehot[np.arange(len(labels)), labels] = 1.0
    return float(np.mean(np.sum((p - onehot) ** 2, axis=-1)))


def summarize(probs, labels):
    """Every metric of a run, as plain Python numbers, under its metrics.json key (lib.evaluation.registry)."""
    probs = _as_members(probs)
    member_acc = member_accuracy(probs, labels)
    return {
        R.MEMBERS.key: len(probs),
        R.MEMBER_ACCURACY.key: member_acc.tolist(),
        R.AVG_MEMBER_ACCURACY.key: float(member_acc.mean()),
        R.ENSEMBLE_ACCURACY.key: ensemble_accuracy(probs, labels),
        R.ENSEMBLE_ACCURACY_BY_SIZE.key: ensemble_accuracy_by_size(probs, labels).tolist(),
        R.DIVERSITY.key: diversity(probs, labels),
        R.PAIRWISE_DIVERSITY.key: pairwise_diversity(probs, labels).tolist(),
        R.NLL.key: nll(probs, labels),
        R.ECE.key: ece(probs, labels),
        R.BRIER.key: brier(probs, labels),
        R.MEMBER_NLL.key: [nll(p, labels) for p in probs],
    }
