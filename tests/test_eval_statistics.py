"""Tests of trainer.eval.statistics against hand-computed values: Gini variance, majority-vote
accuracy, discrete entropy and mutual information, histogram discretisation.

Shape legend: N images, M continuous dims, V votes, P images per vote, K categories, S shapes.
"""

from __future__ import annotations

import numpy as np
import pytest

from trainer.eval import (
    discrete_entropy,
    discrete_mutual_information,
    gini_variance,
    histogram_discretize,
    majority_vote_accuracy,
)


def test_gini_variance_hand_computed():
    # n = 4, counts (2, 1, 1): (16 - 6) / (2 * 4 * 3) = 10 / 24.
    assert gini_variance(np.array([0, 0, 1, 2])) == pytest.approx(10 / 24)
    # Labels only matter through their counts.
    assert gini_variance(np.array([7, 7, 3, 9])) == pytest.approx(10 / 24)
    assert gini_variance(np.array([5, 5, 5])) == 0.0
    # Two items that differ: (4 - 2) / (2 * 2 * 1) = 1/2, the sample variance of {0, 1}.
    assert gini_variance(np.array([0, 1])) == pytest.approx(np.var([0, 1], ddof=1))


def test_gini_variance_is_half_the_summed_one_hot_sample_variances():
    codes_N = np.random.default_rng(0).integers(0, 4, size=37)
    one_hot_NK = np.eye(4)[codes_N]
    assert gini_variance(codes_N) == pytest.approx(0.5 * one_hot_NK.var(axis=0, ddof=1).sum())


def test_majority_vote_accuracy_hand_computed():
    votes_DF = np.array([[5, 1, 0], [2, 2, 6], [0, 0, 0]])
    assert majority_vote_accuracy(votes_DF) == pytest.approx((5 + 6) / 16)


def test_mutual_information_of_identical_variables_is_their_entropy():
    a_N = np.random.default_rng(1).integers(0, 5, size=1000)
    counts = np.bincount(a_N)
    p = counts / counts.sum()
    assert discrete_entropy(a_N) == pytest.approx(-np.sum(p * np.log(p)))
    assert discrete_mutual_information(a_N, a_N) == pytest.approx(discrete_entropy(a_N))
    # A relabelling carries the same information.
    assert discrete_mutual_information(a_N, 10 - 3 * a_N) == pytest.approx(discrete_entropy(a_N))


def test_mutual_information_hand_computed():
    # Uniform x in {0, 1}, y = x on half the items and 0 otherwise: joint p(0,0) = 1/2,
    # p(1,0) = 1/4, p(1,1) = 1/4. I = H(y) + H(x) - H(x, y) = H(1/4,3/4) + log 2 - 1.5 log 2.
    x_N = np.array([0, 0, 1, 1])
    y_N = np.array([0, 0, 0, 1])
    h_y = -(0.25 * np.log(0.25) + 0.75 * np.log(0.75))
    assert discrete_mutual_information(x_N, y_N) == pytest.approx(h_y - 0.5 * np.log(2))
    # Independent variables: exactly 0.
    assert discrete_mutual_information(np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1])) == 0.0


def test_histogram_discretize_matches_numpy_histogram_bins():
    x_NM = np.random.default_rng(2).normal(size=(1000, 3))
    x_NM[:, 2] = 4.0  # constant column: one bin
    bins_NM = histogram_discretize(x_NM, 20)
    for j in range(2):
        edges = np.histogram(x_NM[:, j], 20)[1]
        # np.digitize against the 20 left edges gives 1..20 (the max lands in bin 20).
        np.testing.assert_array_equal(bins_NM[:, j], np.digitize(x_NM[:, j], edges[:-1]) - 1)
    assert bins_NM[:, :2].min() == 0 and bins_NM[:, :2].max() == 19
    assert (bins_NM[:, 2] == 0).all()
