"""Tests of trainer.eval.discrete_accuracy: the best matching of codes to shapes on known
labellings and confusion matrices, and the true shapes as codes.

Shape legend: N images, M continuous dims, V votes, P images per vote, K categories, S shapes.
"""

from __future__ import annotations

import numpy as np
import pytest
from eval_helpers import (
    FakeDSprites,
)

from trainer.eval import (
    FactorRepresenter,
    compute_discrete_accuracy,
    factor_dim_mi,
)
from trainer.eval.discrete_accuracy import _discrete_accuracy_core as accuracy_core
from trainer.eval.discrete_accuracy import confusion_matrix


@pytest.fixture(scope="module")
def data() -> FakeDSprites:
    return FakeDSprites()


def test_discrete_accuracy_of_a_permuted_labelling_is_one():
    shapes_N = np.random.default_rng(0).integers(0, 3, size=500)
    codes_N = np.array([2, 0, 1])[shapes_N]  # a relabelling of the shapes
    result = accuracy_core(codes_N, shapes_N)
    assert result.score == 1.0
    assert result.details["category_to_shape"] == {0: 1, 1: 2, 2: 0}


def test_discrete_accuracy_of_a_known_confusion_matrix():
    # confusion (K=3 rows, S=3 cols):  [[10, 2, 0], [1, 3, 8], [4, 5, 1]]
    # best matching: cat0->shape0 (10), cat1->shape2 (8), cat2->shape1 (5): 23 of 34.
    confusion = np.array([[10, 2, 0], [1, 3, 8], [4, 5, 1]])
    codes, shapes = np.nonzero(confusion)
    reps = confusion[codes, shapes]
    result = accuracy_core(np.repeat(codes, reps), np.repeat(shapes, reps))
    np.testing.assert_array_equal(result.details["confusion_KS"], confusion)
    assert result.score == pytest.approx(23 / 34)


def test_discrete_accuracy_with_more_or_fewer_categories_than_shapes():
    shapes_N = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 2])
    # K = 4: shape 2 split over categories 2 and 3; only one of them can be matched (3 of 5).
    codes_N = np.array([0, 0, 0, 1, 1, 2, 2, 2, 3, 3])
    assert accuracy_core(codes_N, shapes_N).score == pytest.approx(8 / 10)
    # K = 2: shapes 0 and 1 merged in category 0; best: cat0->shape0 (3), cat1->shape2 (5).
    codes_N = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    assert accuracy_core(codes_N, shapes_N).score == pytest.approx(8 / 10)


def test_discrete_accuracy_of_the_true_shapes_is_one(data):
    result = compute_discrete_accuracy(
        FactorRepresenter(data), data, np.random.default_rng(0), num_samples=2000
    )
    assert result.score == 1.0


def test_confusion_matrix_of_a_known_assignment():
    codes_N = np.array([0, 0, 1, 2, 2, 2, 1])
    shapes_N = np.array([0, 1, 1, 2, 2, 0, 1])
    expected_KS = np.array([[1, 1, 0], [0, 2, 0], [1, 0, 2]])
    np.testing.assert_array_equal(confusion_matrix(codes_N, shapes_N), expected_KS)
    padded_KS = confusion_matrix(codes_N, shapes_N, num_categories=4, num_shapes=3)
    np.testing.assert_array_equal(padded_KS, np.vstack([expected_KS, np.zeros((1, 3))]))
    result = factor_dim_mi._factor_dim_mi_core(
        np.zeros((7, 1)),
        codes_N,
        shapes_N[:, None],
        ["shape"],
        shapes_N=shapes_N,
        num_categories=4,
        num_shapes=3,
    )
    table = result.details["table"]
    assert table["confusion/code2/square"] == 1.0 and table["confusion/code2/heart"] == 2.0
    assert table["confusion/code1/ellipse"] == 2.0 and table["confusion/code3/square"] == 0.0
    assert sum(v for k, v in table.items() if k.startswith("confusion/")) == 7
