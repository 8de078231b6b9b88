"""The Pyomo model of the assignment network: the one definition of the LP the solver runs.

Legend: N items, K categories, T slots per category (T = N), C LP columns.

Built once per shape (N, K); the costs are mutable parameters `unary[i, k]` and `lam`.
Columns: x[i, k]     flow on the arc item i -> category k, in [0, 1]
         slot[k, t]  flow on slot arc t of category k (cost lam * t), in [0, 1]
Rows:    one_category[i]  sum_k x[i, k] == 1
             (the source supplies N units through N arcs of capacity 1, so every source arc is
             saturated and each item node passes exactly one unit on: the source arcs and the
             source node fold into these rows)
         balance[k]       sum_i x[i, k] - sum_t slot[k, t] == 0   (conservation at category k)
             (the sink's conservation row is minus the sum of the others and is left out)
Objective: minimise sum_{i,k} unary[i, k] x[i, k] + sum_{k,t} lam * t * slot[k, t].

The solver (solver/solve.py) does not write the parameters on every solve: setting N*K Pyomo
parameters costs far more than the solve. It derives, once, from this objective how every LP
column's cost depends on (unary, lam) (`objective_cost_map`) and then writes whole cost vectors
straight into HiGHS.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyomo.environ as pyo
from pyomo.core.base.var import VarData
from pyomo.repn import generate_standard_repn

from solver.network import FlowNetwork


def build_model(n: int, k: int) -> pyo.ConcreteModel:
    """The LP of `FlowNetwork(n, k)` with mutable costs (all zero until set)."""
    if n < 1 or k < 1:
        raise ValueError(f"model needs N >= 1 and K >= 1, got N={n}, K={k}")
    num_slots = FlowNetwork(n, k).num_slots
    m = pyo.ConcreteModel(name=f"assignment_{n}x{k}")
    m.I = pyo.RangeSet(0, n - 1)
    m.K = pyo.RangeSet(0, k - 1)
    m.T = pyo.RangeSet(0, num_slots - 1)
    m.unary = pyo.Param(m.I, m.K, mutable=True, initialize=0.0)
    m.lam = pyo.Param(mutable=True, initialize=0.0)
    m.x = pyo.Var(m.I, m.K, bounds=(0, 1))
    m.slot = pyo.Var(m.K, m.T, bounds=(0, 1))
    m.one_category = pyo.Constraint(m.I, rule=lambda m, i: sum(m.x[i, c] for c in m.K) == 1)
    m.balance = pyo.Constraint(
        m.K,
        rule=lambda m, c: sum(m.x[i, c] for i in m.I) - sum(m.slot[c, t] for t in m.T) == 0,
    )
    m.obj = pyo.Objective(
        expr=sum(m.unary[i, c] * m.x[i, c] for i in m.I for c in m.K)
        + sum(m.lam * t * m.slot[c, t] for c in m.K for t in m.T),
        sense=pyo.minimize,
    )
    return m


def model_shape(model: pyo.ConcreteModel) -> tuple[int, int]:
    """(N, K) of a model from `build_model`."""
    return len(model.I), len(model.K)


@dataclass(frozen=True)
class CostMap:
    """Every LP column's objective coefficient as an affine function of (unary, lam).

    cost_C[c] = unary.flat[unary_index_C[c]] (0 where the index is -1) + lam * lam_coef_C[c].
    """

    unary_index_C: np.ndarray
    lam_coef_C: np.ndarray

    def unary_columns(self) -> tuple[np.ndarray, np.ndarray]:
        """(columns whose cost holds a unary entry, the flat unary index of each)."""
        cols = np.flatnonzero(self.unary_index_C >= 0)
        return cols, self.unary_index_C[cols]

    def costs(self, unary_NK: np.ndarray, lam: float) -> np.ndarray:
        """The cost vector (C,) for one problem."""
        cost_C = lam * self.lam_coef_C
        cols, idx = self.unary_columns()
        cost_C[cols] += unary_NK.reshape(-1)[idx]
        return cost_C


def objective_cost_map(
    model: pyo.ConcreteModel, column_of: Callable[[VarData], int], num_cols: int
) -> CostMap:
    """Derive the CostMap of `model.obj` by evaluating its coefficients at probe parameters.

    `column_of(var)` gives a variable's LP column. Probes: unary = 0, lam = 1 gives each
    column's lam coefficient; unary[i, k] = i*K + k + 1, lam = 0 names the unary entry of each
    column. A third, random probe must match the map exactly, else RuntimeError: the objective
    is then not of the form this map assumes. The parameters are restored afterwards.
    """
    n, k = model_shape(model)
    repn = generate_standard_repn(model.obj.expr, compute_values=False)
    if repn.quadratic_vars or repn.nonlinear_expr is not None:
        raise RuntimeError("the assignment objective must be linear in the variables")
    cols = np.array([column_of(v) for v in repn.linear_vars], dtype=np.int64)
    if len(np.unique(cols)) != len(cols):
        raise RuntimeError("a variable appears twice in the linear objective")

    saved_unary = {key: pyo.value(p) for key, p in model.unary.items()}
    saved_lam = pyo.value(model.lam)

    def probe(unary_NK: np.ndarray, lam: float) -> tuple[np.ndarray, float]:
        model.unary.store_values(
            {(i, c): float(unary_NK[i, c]) for i in range(n) for c in range(k)}
        )
        model.lam.set_value(lam)
        coef = np.array([pyo.value(e) for e in repn.linear_coefs], dtype=np.float64)
        return coef, float(pyo.value(repn.constant))

    try:
        lam_coef, const_a = probe(np.zeros((n, k)), 1.0)
        ids = np.arange(1, n * k + 1, dtype=np.float64).reshape(n, k)
        which, const_b = probe(ids, 0.0)
        rng = np.random.default_rng(12345)
        check_unary, check_lam = rng.uniform(-3.0, 3.0, (n, k)), float(rng.uniform(0.5, 2.0))
        got, const_c = probe(check_unary, check_lam)
    finally:
        model.unary.store_values(saved_unary)
        model.lam.set_value(saved_lam)

    if const_a != 0.0 or const_b != 0.0 or const_c != 0.0:
        raise RuntimeError("the assignment objective must have no constant term")
    index = np.rint(which).astype(np.int64) - 1
    if not np.array_equal(index + 1, which) or index.min() < -1 or index.max() >= n * k:
        raise RuntimeError("an objective coefficient is not a single unary entry or zero")
    unary_index_C = np.full(num_cols, -1, dtype=np.int64)
    lam_coef_C = np.zeros(num_cols, dtype=np.float64)
    unary_index_C[cols] = index
    lam_coef_C[cols] = lam_coef
    cost_map = CostMap(unary_index_C, lam_coef_C)
    expect = cost_map.costs(check_unary, check_lam)[cols]
    if not np.allclose(got, expect, rtol=1e-12, atol=1e-12):
        raise RuntimeError("objective coefficients are not affine in (unary, lam) as mapped")
    return cost_map
