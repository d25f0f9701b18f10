"""Metrics against hand computations."""
import numpy as np
import pytest

from lib.evaluation import metrics

# 2 members, 4 samples, 3 classes
P = np.array([
    [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.4, 0.5, 0.1], [0.3, 0.3, 0.4]],   # predicts 0 1 1 2
    [[0.6, 0.3, 0.1], [0.2, 0.3, 0.5], [0.9, 0.05, 0.05], [0.1, 0.1, 0.8]],  # predicts 0 2 0 2
])
Y = np.array([0, 1, 0, 2])


def test_member_and_ensemble_accuracy():
    assert metrics.member_accuracy(P, Y).tolist() == [75.0, 75.0]  # member 1 misses sample 2, member 2 sample 1
    # mean probs: s0 [.65 .25 .1] -> 0 ok; s1 [.15 .55 .3] -> 1 ok; s2 [.65 .275 .075] -> 0 ok; s3 [.2 .2 .6] -> 2 ok
    assert metrics.ensemble_accuracy(P, Y) == 100.0
    assert metrics.ensemble_accuracy_by_size(P, Y).tolist() == [75.0, 100.0]


def test_diversity_by_hand():
    # disagreement on samples 1 and 2 -> 0.5; errors 0.25 and 0.25 -> 100 * 0.5 / 0.25 = 200
    assert metrics.diversity(P, Y) == pytest.approx(200.0)
    three = np.concatenate([P, P[:1]])  # member 3 = member 1: pair (1,3) has 0 disagreement, (2,3) as (1,2)
    m = metrics.pairwise_diversity(three, Y)
    assert m[0, 2] == 0.0 and m[1, 2] == pytest.approx(200.0) and m[0, 1] == pytest.approx(200.0)
    assert metrics.diversity(three, Y) == pytest.approx(400.0 / 3)
    perfect = np.stack([np.eye(3)[Y], np.eye(3)[Y]])
    assert metrics.diversity(perfect, Y) == 0.0  # both perfect: no disagreement possible
    assert np.isnan(metrics.diversity(P[:1], Y))


def test_ece_by_hand():
    p = np.array([[0.9, 0.1], [0.6, 0.4], [0.55, 0.45], [0.2, 0.8]])
    y = np.array([0, 1, 0, 1])
    # confidences .9 .6 .55 .8, correct 1 0 1 1; with 2 bins (0,.5] (.5,1]: one bin, acc .75, conf .7125
    assert metrics.ece(p, y, n_bins=2) == pytest.approx(abs(0.75 - 0.7125))
    # with 15 bins: .9 -> bin 13, .6 -> bin 8, .55 -> bin 8, .8 -> bin 11
    expected = 0.25 * abs(1 - 0.9) + 0.5 * abs(0.5 - 0.575) + 0.25 * abs(1 - 0.8)
    assert metrics.ece(p, y) == pytest.approx(expected)
    # an ensemble is averaged first
    assert metrics.ece(np.stack([p, p]), y) == pytest.approx(expected)


def test_nll_and_brier_by_hand():
    p = np.array([[0.5, 0.5], [0.25, 0.75]])
    y = np.array([0, 1])
    assert metrics.nll(p, y) == pytest.approx(-(np.log(0.5) + np.log(0.75)) / 2)
    assert metrics.brier(p, y) == pytest.approx(((0.25 + 0.25) + (0.0625 + 0.0625)) / 2)


def test_summarize_keys_and_values():
    s = metrics.summarize(P, Y)
    assert s["members"] == 2 and s["avg_member_accuracy"] == 75.0 and s["ensemble_accuracy"] == 100.0
    assert s["pairwise_diversity"][0][1] == pytest.approx(200.0)
