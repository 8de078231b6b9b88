"""Known answers for the training-code agreement with the true shapes."""

import math

import numpy as np
import pytest

from trainer.core.agreement import agreement_metrics, best_match_accuracy, joint_counts


def test_permuted_codes_agree_fully_and_the_table_is_consumed():
    shapes = np.array([0, 0, 1, 1, 2, 2, 2])
    codes = (shapes + 1) % 3  # the same partition under other names
    metrics = {"loss/total": 1.0, **joint_counts(codes, shapes, 3, 3)}
    out = agreement_metrics(metrics)
    assert out["codes/shape_agreement"] == 1.0
    assert out["codes/share_1"] == pytest.approx(2 / 7)  # category 1 = shape 0
    assert out["codes/share_0"] == pytest.approx(3 / 7)
    assert metrics == {"loss/total": 1.0}  # the joint cells are removed


def test_one_category_for_everything_scores_the_largest_shape_share():
    shapes = np.array([0] * 5 + [1] * 3 + [2] * 2)
    out = agreement_metrics(joint_counts(np.zeros(10, dtype=int), shapes, 3, 3))
    assert out["codes/shape_agreement"] == pytest.approx(0.5)
    assert out["codes/share_0"] == 1.0 and out["codes/share_2"] == 0.0


def test_tables_summed_over_ranks_match_the_table_of_the_whole_batch():
    rng = np.random.default_rng(0)
    shapes, codes = rng.integers(0, 3, 64), rng.integers(0, 3, 64)
    whole = joint_counts(codes, shapes, 3, 3)
    halves = [joint_counts(codes[s], shapes[s], 3, 3) for s in (slice(0, 32), slice(32, 64))]
    summed = {k: halves[0][k] + halves[1][k] for k in whole}
    assert agreement_metrics(summed) == agreement_metrics(dict(whole))


def test_best_match_of_an_empty_table_is_nan():
    assert math.isnan(best_match_accuracy(np.zeros((3, 3))))
    assert agreement_metrics({"loss/recon": 2.0}) == {}
