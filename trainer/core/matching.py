"""The best one-to-one matching of the rows of a small table to its columns (no scipy).

Legend: R rows, C columns (a confusion table: learned categories x true shapes).

Exact by dynamic programming over the subsets of the smaller side: the items of the larger side
are taken one by one, each either left unmatched or matched to one still free element of the
smaller side; the state is the set of smaller-side elements already used. Cost
O(max(R, C) * 2^min(R, C) * min(R, C)): meant for the tables of this project (a few categories
against 3 shapes), not for large assignment problems.
"""

from __future__ import annotations

import numpy as np

MAX_SMALLER_SIDE = 16
"""The largest min(R, C) accepted (2^16 states per item)."""


def best_matching(table_RC: np.ndarray, maximize: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of a matching of min(R, C) pairs with the largest (maximize=True) or
    smallest total of `table_RC[rows, cols]`; rows increasing, as scipy's
    `linear_sum_assignment` returns them. Raises ValueError for a table that is not 2-D and
    finite, or whose smaller side exceeds MAX_SMALLER_SIDE."""
    table = np.asarray(table_RC, dtype=np.float64)
    if table.ndim != 2 or not np.isfinite(table).all():
        raise ValueError(f"best_matching needs a finite 2-D table, got shape {table.shape}")
    transposed = table.shape[0] < table.shape[1]
    weight = table.T if transposed else table  # (larger side, smaller side)
    if not maximize:
        weight = -weight
    num_items, num_slots = weight.shape
    if num_slots > MAX_SMALLER_SIDE:
        raise ValueError(
            f"best_matching: the smaller side has {num_slots} > {MAX_SMALLER_SIDE} elements"
        )
    if num_slots == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    num_states = 1 << num_slots
    best = np.full(num_states, -np.inf)
    best[0] = 0.0
    # chosen[j, state]: the slot item j took to reach `state` (-1: item j stayed unmatched).
    chosen = np.full((num_items, num_states), -1, dtype=np.int64)
    for j in range(num_items):
        after = best.copy()
        for state in np.flatnonzero(np.isfinite(best)):
            for slot in range(num_slots):
                if state >> slot & 1:
                    continue
                value = best[state] + weight[j, slot]
                target = state | (1 << slot)
                if value > after[target]:
                    after[target] = value
                    chosen[j, target] = slot
        best = after
    state, pairs = num_states - 1, []
    for j in range(num_items - 1, -1, -1):
        slot = int(chosen[j, state])
        if slot >= 0:
            pairs.append((j, slot))
            state ^= 1 << slot
    items = np.array([p[0] for p in pairs], dtype=np.int64)
    slots = np.array([p[1] for p in pairs], dtype=np.int64)
    rows, cols = (slots, items) if transposed else (items, slots)
    order = np.argsort(rows)
    return rows[order], cols[order]
