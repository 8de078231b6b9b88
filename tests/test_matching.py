"""The exact one-to-one matching of small tables (trainer/core/matching.py)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from trainer.core.matching import best_matching


def _brute_force_total(table: np.ndarray, maximize: bool) -> float:
    rows, cols = table.shape
    if rows < cols:
        return _brute_force_total(table.T, maximize)
    totals = [
        sum(table[r, c] for c, r in enumerate(chosen))
        for chosen in itertools.permutations(range(rows), cols)
    ]
    return max(totals) if maximize else min(totals)


def test_a_known_confusion_table_is_matched_on_its_largest_cells():
    confusion_KS = np.array([[2, 30, 1], [25, 3, 4], [1, 2, 3], [0, 1, 28]])
    rows, cols = best_matching(confusion_KS)
    assert rows.tolist() == [0, 1, 3] and cols.tolist() == [1, 0, 2]


@pytest.mark.parametrize("shape", [(1, 1), (3, 3), (4, 3), (3, 5), (10, 3), (6, 6), (2, 7)])
@pytest.mark.parametrize("maximize", [True, False])
def test_the_total_equals_brute_force_and_scipy(shape, maximize):
    rng = np.random.default_rng(sum(shape) * 7 + maximize)
    for _ in range(5):
        table = rng.integers(0, 20, size=shape).astype(float)  # integer cells: many ties
        rows, cols = best_matching(table, maximize=maximize)
        assert len(rows) == min(shape) and len(set(rows)) == len(set(cols)) == min(shape)
        assert np.all(np.diff(rows) > 0)
        total = table[rows, cols].sum()
        assert total == _brute_force_total(table, maximize)
        ref_rows, ref_cols = linear_sum_assignment(table, maximize=maximize)
        assert total == table[ref_rows, ref_cols].sum()


def test_bad_tables_are_refused():
    with pytest.raises(ValueError, match="finite 2-D"):
        best_matching(np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="finite 2-D"):
        best_matching(np.array([[1.0, np.nan]]))
    with pytest.raises(ValueError, match="smaller side"):
        best_matching(np.zeros((17, 17)))
