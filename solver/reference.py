"""Independent exact reference for the assignment problem (tests and benchmarks, not training).

The same problem is a rectangular assignment in which category k offers N slots and slot t costs
U[i, k] + lam * t (the t-th item placed in a category pays t * lam), solved by scipy's
Hungarian-type `linear_sum_assignment` on the (N, K*N) expanded matrix. Exact, but O(N^3): fine
for checking, far too slow for training at large N.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment


def expanded_assignment(
    unary_NK: np.ndarray, lam: float, slot_costs_N: np.ndarray | None = None
) -> np.ndarray:
    """(N,) int64 labels of an optimal assignment, from scipy on the expanded matrix.

    `slot_costs_N[t]` is what the t-th item placed in a category pays (default `lam * t`; the
    authors' integer formulation passes its own rounded slot costs).
    """
    n, k = unary_NK.shape
    slots_N = lam * np.arange(n) if slot_costs_N is None else np.asarray(slot_costs_N)
    big = (unary_NK[:, :, None] + slots_N[None, None, :]).reshape(n, k * n)
    rows, cols = linear_sum_assignment(big)
    labels_N = np.empty(n, dtype=np.int64)
    labels_N[rows] = cols // n
    return labels_N
