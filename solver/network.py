"""The assignment problem and its min-cost-flow network, in plain numpy (no Pyomo, no Ray).

Legend: N items, K categories, T slots per category (T = N), A arcs, V nodes.

Problem: choose one category k_i per item i minimising
    sum_i U[i, k_i] + lam * sum_k c_k (c_k - 1) / 2,        c_k = #{i : k_i = k}.
The penalty is convex in c_k, so the problem is a min-cost flow:
    source -> item i          capacity 1, cost 0            (N arcs; the source supplies N)
    item i -> category k      capacity 1, cost U[i, k]      (N * K arcs)
    category k -> sink, slot t capacity 1, cost lam * t     (K * T arcs, t = 0 .. T-1)
The t-th item placed in a category pays t * lam, so c items pay lam * c (c - 1) / 2. The
constraint matrix is a network matrix (totally unimodular), so the LP optimum is integral.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def validate_problem(unary_NK: object, lam: object) -> tuple[np.ndarray, float]:
    """Check one problem and return (unary as C-contiguous float64 (N, K), lam as float).

    Raises ValueError naming the problem: not a 2-D numeric array, N = 0, K < 1, NaN or inf
    entries, lam negative / NaN / inf / not a real number.
    """
    if isinstance(lam, bool) or not isinstance(lam, (int, float, np.integer, np.floating)):
        raise ValueError(f"lam must be a real number, got {type(lam).__name__}")
    lam_f = float(lam)
    if not np.isfinite(lam_f):
        raise ValueError(f"lam must be finite, got {lam_f}")
    if lam_f < 0:
        raise ValueError(f"lam must be >= 0, got {lam_f}")
    try:
        arr = np.asarray(unary_NK)
    except Exception as exc:  # ragged nested lists and the like
        raise ValueError(f"unary must be a 2-D numeric array: {exc}") from exc
    if arr.dtype == np.bool_ or not (
        np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
    ):
        raise ValueError(f"unary must be a 2-D array of real numbers, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"unary must be a 2-D array (N, K), got shape {arr.shape}")
    n, k = arr.shape
    if n == 0:
        raise ValueError(f"unary has no items (N = 0), shape {arr.shape}")
    if k < 1:
        raise ValueError(f"unary needs at least one category (K >= 1), shape {arr.shape}")
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    bad = ~np.isfinite(arr)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise ValueError(
            f"unary has {int(bad.sum())} NaN or inf entries (first at [{i}, {j}]: {arr[i, j]})"
        )
    return arr, lam_f


def assignment_cost(unary_NK: np.ndarray, labels_N: np.ndarray, lam: float) -> float:
    """The objective sum_i U[i, k_i] + lam * sum_k c_k (c_k - 1) / 2 of one labelling."""
    n, k = unary_NK.shape
    labels_N = np.asarray(labels_N, dtype=np.int64)
    counts_K = np.bincount(labels_N, minlength=k).astype(np.float64)
    unary_sum = float(unary_NK[np.arange(n), labels_N].sum())
    return unary_sum + lam * float((counts_K * (counts_K - 1.0) / 2.0).sum())


@dataclass(frozen=True)
class FlowNetwork:
    """Node and arc numbering of the network for N items and K categories.

    Nodes: source 0, items 1..N, categories N+1..N+K, sink N+K+1. Arcs, in this order: N
    source arcs, N*K item arcs (item-major: arc N + i*K + k), K*T slot arcs (category-major).
    Every arc has capacity 1. Used by flow solvers that take an explicit graph (the OR-Tools
    baseline in benchmarks/solver.py); the Pyomo model in solver/model.py is the LP of the
    same network.
    """

    n: int
    k: int

    @property
    def num_slots(self) -> int:
        """Slots per category: N, enough for every item to go to one category."""
        return self.n

    @property
    def source(self) -> int:
        return 0

    @property
    def sink(self) -> int:
        return self.n + self.k + 1

    @property
    def num_nodes(self) -> int:
        return self.n + self.k + 2

    def arcs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(tail_A, head_A, capacity_A) as int64 arrays."""
        n, k, t = self.n, self.k, self.num_slots
        items_N = 1 + np.arange(n)
        cats_K = 1 + n + np.arange(k)
        tail_A = np.concatenate(
            [np.full(n, self.source), np.repeat(items_N, k), np.repeat(cats_K, t)]
        )
        head_A = np.concatenate([items_N, np.tile(cats_K, n), np.full(k * t, self.sink)])
        return tail_A, head_A, np.ones(len(tail_A), dtype=np.int64)

    def supplies(self) -> np.ndarray:
        """Node supplies, shape (V,): +N at the source, -N at the sink."""
        supply_V = np.zeros(self.num_nodes, dtype=np.int64)
        supply_V[self.source] = self.n
        supply_V[self.sink] = -self.n
        return supply_V

    def labels_from_item_flows(self, item_flow_NK: np.ndarray) -> np.ndarray:
        """Labels (N,) from the flows on the N*K item arcs; each item must send exactly 1."""
        flow_NK = np.asarray(item_flow_NK).reshape(self.n, self.k)
        if not np.array_equal(flow_NK.sum(axis=1), np.ones(self.n)):
            raise ValueError("item arc flows do not send exactly one unit per item")
        return flow_NK.argmax(axis=1).astype(np.int64)
