"""Known-answer tests of the assignment solver (solver/): brute force, an independent exact
oracle, the authors' integer-scaled formulation, reuse == fresh, ties, bad input, and that HiGHS
solves exactly the LP the Pyomo model defines.

Legend: N items, K categories, T slots per category, S enumerated labellings, C LP columns.
"""

from __future__ import annotations

import itertools

import numpy as np
import pyomo.environ as pyo
import pytest

from solver import AssignmentSolver, SolverError, assign, assignment_cost, get_solver
from solver.model import build_model, objective_cost_map
from solver.reference import expanded_assignment


def brute_force_costs(unary_NK: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """(labellings_SN, cost_S) over all K^N labellings."""
    n, k = unary_NK.shape
    labels_SN = np.array(list(itertools.product(range(k), repeat=n)), dtype=np.int64)
    unary_S = unary_NK[np.arange(n)[None, :], labels_SN].sum(axis=1)
    counts_SK = (labels_SN[:, :, None] == np.arange(k)[None, None, :]).sum(axis=1)
    return labels_SN, unary_S + lam * (counts_SK * (counts_SK - 1) / 2).sum(axis=1)


def authors_integer_problem(unary_NK: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """The authors' scaled costs: (round(U * 10,000) int64 (N, K), slot costs round(lam*1e4)*t)."""
    n = unary_NK.shape[0]
    return np.rint(unary_NK * 10_000).astype(np.int64), int(round(lam * 10_000)) * np.arange(n)


def integer_cost(int_unary_NK: np.ndarray, slot_T: np.ndarray, labels_N: np.ndarray) -> int:
    counts_K = np.bincount(labels_N, minlength=int_unary_NK.shape[1])
    slots = sum(int(slot_T[:c].sum()) for c in counts_K)
    return int(int_unary_NK[np.arange(len(labels_N)), labels_N].sum()) + slots


def integer_oracle(int_unary_NK: np.ndarray, slot_T: np.ndarray) -> np.ndarray:
    """Exact labels of the integer problem (scipy on the expanded int64 matrix)."""
    return expanded_assignment(int_unary_NK, 0.0, slot_costs_N=slot_T)


# -- exactness -------------------------------------------------------------------------------


@pytest.mark.parametrize("lam", [0.0, 0.05, 5.0])
def test_exhaustive_enumeration_on_tiny_instances(lam: float) -> None:
    rng = np.random.default_rng(7)
    unique_checked = 0
    for n in range(1, 8):
        for k in range(1, 4):
            for _ in range(3):
                unary_NK = rng.normal(size=(n, k)) + rng.normal(size=k)[None, :]
                labels_N = assign(unary_NK, lam)
                assert labels_N.shape == (n,) and labels_N.dtype == np.int64
                assert labels_N.min() >= 0 and labels_N.max() < k
                all_SN, cost_S = brute_force_costs(unary_NK, lam)
                order = np.argsort(cost_S, kind="stable")
                best = cost_S[order[0]]
                assert assignment_cost(unary_NK, labels_N, lam) == pytest.approx(best, abs=1e-9)
                if len(order) == 1 or cost_S[order[1]] > best + 1e-9:
                    np.testing.assert_array_equal(labels_N, all_SN[order[0]])
                    unique_checked += 1
    assert unique_checked >= 50  # of 63 instances: the label comparison really ran


def test_large_lambda_balances_and_zero_lambda_is_row_argmin() -> None:
    # Hand-computed: lam = 100 dwarfs the unary spread, so 6 items spread 2/2/2 (penalty
    # 3 * 100 * 1); lam = 0 is the per-row argmin.
    unary_NK = np.array([[0.0, 1, 2], [0, 1, 2], [0, 1, 2], [0, 1, 2], [2, 0, 1], [2, 0, 1]])
    balanced = assign(unary_NK, 100.0)
    assert np.bincount(balanced, minlength=3).tolist() == [2, 2, 2]
    # Best 2/2/2 split: items 4, 5 take category 1 (cost 0), two of items 0-3 take 0 (cost 0),
    # the other two take 2 (cost 2 each): 4 + 3 * 100.
    assert assignment_cost(unary_NK, balanced, 100.0) == pytest.approx(304.0)
    np.testing.assert_array_equal(assign(unary_NK, 0.0), [0, 0, 0, 0, 1, 1])


@pytest.mark.parametrize("n", [16, 64, 150])
def test_objective_equals_expanded_assignment_oracle(n: int) -> None:
    rng = np.random.default_rng(n)
    for k in (2, 5, 10):
        for lam in (0.0, 0.01, 0.3, 3.0):
            unary_NK = rng.uniform(0, 10, size=(n, k)) + rng.uniform(0, 5, size=k)[None, :]
            labels_N = assign(unary_NK, lam)
            ours = assignment_cost(unary_NK, labels_N, lam)
            exact = assignment_cost(unary_NK, expanded_assignment(unary_NK, lam), lam)
            assert ours == pytest.approx(exact, rel=1e-12, abs=1e-9), (n, k, lam)


def test_equals_authors_integer_formulation_at_their_setting() -> None:
    """N = 64, K = 3, lam = 0.001; the authors scale costs by 10,000 to integers."""
    n, k, lam = 64, 3, 0.001
    rng = np.random.default_rng(2019)
    for _ in range(20):
        unary_NK = 2000 + 300 * rng.uniform(size=(n, k)) + rng.uniform(0, 20, size=k)[None, :]
        labels_N = assign(unary_NK, lam)
        int_unary_NK, slot_T = authors_integer_problem(unary_NK, lam)
        theirs = integer_oracle(int_unary_NK, slot_T)
        assert integer_cost(int_unary_NK, slot_T, labels_N) == integer_cost(
            int_unary_NK, slot_T, theirs
        )
        np.testing.assert_array_equal(labels_N, theirs)
    # On a 1e-4 grid the integer problem is exactly 10,000 x ours: objectives agree exactly.
    for _ in range(10):
        unary_NK = rng.integers(1_000_000, 1_500_000, size=(n, k)) / 10_000
        labels_N = assign(unary_NK, lam)
        int_unary_NK, slot_T = authors_integer_problem(unary_NK, lam)
        best = integer_cost(int_unary_NK, slot_T, integer_oracle(int_unary_NK, slot_T))
        assert integer_cost(int_unary_NK, slot_T, labels_N) == best
        assert 10_000 * assignment_cost(unary_NK, labels_N, lam) == pytest.approx(best, abs=1e-4)


def test_equals_authors_network_on_ortools_when_installed() -> None:
    """The authors' network on OR-Tools (the `bench` extra) gives the same labels."""
    min_cost_flow = pytest.importorskip("ortools.graph.python.min_cost_flow")
    from solver.network import FlowNetwork

    n, k, lam = 64, 3, 0.001
    net = FlowNetwork(n, k)
    tail_A, head_A, cap_A = net.arcs()
    rng = np.random.default_rng(5)
    for _ in range(10):
        unary_NK = 100 + 50 * rng.uniform(size=(n, k)) + np.arange(k)[None, :]
        # Arc order: N source arcs (cost 0), N*K item arcs (item-major), K*N slot arcs (lam * t).
        slot_T = lam * np.arange(net.num_slots)
        arc_cost_A = np.concatenate([np.zeros(n), unary_NK.reshape(-1), np.tile(slot_T, k)])
        cost_A = np.rint(arc_cost_A * 10_000).astype(np.int64)
        flow = min_cost_flow.SimpleMinCostFlow()
        flow.add_arcs_with_capacity_and_unit_cost(tail_A, head_A, cap_A, cost_A)
        flow.set_nodes_supplies(np.arange(net.num_nodes), net.supplies())
        assert flow.solve() == flow.OPTIMAL
        theirs = net.labels_from_item_flows(flow.flows(np.arange(n, n + n * k)))
        np.testing.assert_array_equal(assign(unary_NK, lam), theirs)


# -- reuse, ties, determinism ----------------------------------------------------------------


def test_reused_solver_answers_exactly_as_fresh_solves() -> None:
    n, k = 24, 3
    rng = np.random.default_rng(11)
    reused = AssignmentSolver(n, k)
    model_before = reused.model
    lams = (0.0, 0.05, 1.0, 4.0)
    warm = fallbacks = 0
    for trial in range(100):
        lam = lams[trial % len(lams)]
        if trial % 2:
            unary_NK = rng.integers(0, 3, size=(n, k)).astype(np.float64)  # many exact ties
        else:
            unary_NK = rng.normal(size=(n, k)) * 2.0
        got = reused.solve(unary_NK, lam)
        warm += reused.last.warm
        fallbacks += reused.last.tie_fallback
        fresh = AssignmentSolver(n, k).solve(unary_NK, lam)
        np.testing.assert_array_equal(got, fresh, err_msg=f"trial {trial}, lam {lam}")
    assert reused.model is model_before  # built once, never rebuilt
    assert warm == 99  # every solve after the first started from the previous prices
    assert fallbacks > 0  # tied instances really went through the tie check


def test_tie_check_finds_exactly_the_instances_with_several_optima() -> None:
    # After a warm solve the cold re-solve runs iff the tie check finds another optimum; by
    # enumeration of all 3^6 labellings, that is iff more than one labelling is optimal.
    n, k = 6, 3
    rng = np.random.default_rng(21)
    solver = AssignmentSolver(n, k)
    solver.solve(rng.normal(size=(n, k)), 0.5)
    seen = set()
    for trial in range(60):
        lam = (0.0, 0.5, 1.0)[trial % 3]
        if trial % 2:
            unary_NK = rng.integers(0, 3, size=(n, k)).astype(np.float64)
        else:
            unary_NK = rng.normal(size=(n, k))
        _, costs = brute_force_costs(unary_NK, lam)
        several = int(np.sum(costs <= costs.min() + 1e-9)) > 1
        solver.solve(unary_NK, lam)
        assert solver.last.warm
        assert solver.last.tie_fallback == several, f"trial {trial}"
        seen.add(several)
    assert seen == {True, False}


def test_zero_lambda_ties_go_to_lowest_category_index() -> None:
    rng = np.random.default_rng(3)
    solver = AssignmentSolver(40, 4)
    solver.solve(rng.normal(size=(40, 4)), 0.7)  # some history, so the next solve is warm
    for _ in range(5):
        unary_NK = rng.integers(0, 2, size=(40, 4)).astype(np.float64)
        np.testing.assert_array_equal(solver.solve(unary_NK, 0.0), unary_NK.argmin(axis=1))


def test_identical_input_gives_identical_labels_whatever_came_before() -> None:
    rng = np.random.default_rng(4)
    unary_NK = np.repeat(rng.integers(0, 3, size=(6, 3)).astype(np.float64), 5, axis=0)
    first = assign(unary_NK, 0.5)
    for _ in range(5):
        assign(rng.normal(size=unary_NK.shape), float(rng.uniform(0, 2)))
        np.testing.assert_array_equal(assign(unary_NK, 0.5), first)


def test_shared_solver_is_built_once_per_shape() -> None:
    a = get_solver(9, 2)
    assign(np.zeros((9, 2)), 0.1)
    assert get_solver(9, 2) is a and a.model is get_solver(9, 2).model


def test_one_category_and_one_item() -> None:
    np.testing.assert_array_equal(assign(np.arange(5.0)[:, None], 2.0), np.zeros(5))
    np.testing.assert_array_equal(assign(np.array([[3.0, 1.0, 2.0]]), 1.0), [1])


# -- the Pyomo model is the definition -------------------------------------------------------


def test_highs_holds_exactly_the_pyomo_lp() -> None:
    n, k = 5, 3
    solver = AssignmentSolver(n, k)
    unary_NK = np.random.default_rng(8).normal(size=(n, k))
    lam = 0.4
    labels_N = solver.solve(unary_NK, lam)
    model, lp = solver.model, solver._highs.getLp()
    vars_ = list(model.component_data_objects(pyo.Var))
    cons = list(model.component_data_objects(pyo.Constraint))
    # The solver's public index arrays name the HiGHS column / row of every Pyomo component.
    column = {id(model.x[i, c]): solver.x_col_NK[i, c] for i in range(n) for c in range(k)}
    column |= {id(model.slot[c, t]): solver.slot_col_KT[c, t] for c in range(k) for t in range(n)}
    row = {id(model.one_category[i]): solver.item_row_N[i] for i in range(n)}
    row |= {id(model.balance[c]): solver.balance_row_K[c] for c in range(k)}
    assert sorted(column.values()) == list(range(n * k + k * n))
    assert sorted(row.values()) == list(range(n + k))
    assert lp.num_col_ == len(vars_) == n * k + k * n
    assert lp.num_row_ == len(cons) == n + k
    # Constraint matrix and bounds, entry by entry, against Pyomo's own representation.
    from pyomo.repn import generate_standard_repn

    dense_RC = np.zeros((lp.num_row_, lp.num_col_))
    start, index, value = (
        np.asarray(a) for a in (lp.a_matrix_.start_, lp.a_matrix_.index_, lp.a_matrix_.value_)
    )
    for col in range(lp.num_col_):
        dense_RC[index[start[col] : start[col + 1]], col] = value[start[col] : start[col + 1]]
    expect_RC = np.zeros_like(dense_RC)
    for con in cons:
        repn = generate_standard_repn(con.body)
        r = row[id(con)]
        for coef, var in zip(repn.linear_coefs, repn.linear_vars, strict=True):
            expect_RC[r, column[id(var)]] = coef
        assert lp.row_lower_[r] == pyo.value(con.lower) == lp.row_upper_[r]
    np.testing.assert_array_equal(dense_RC, expect_RC)
    for var in vars_:
        col = column[id(var)]
        assert (lp.col_lower_[col], lp.col_upper_[col]) == (0.0, 1.0)
    # Costs HiGHS holds == the Pyomo objective's coefficients at these parameters.
    model.unary.store_values({(i, c): float(unary_NK[i, c]) for i in range(n) for c in range(k)})
    model.lam.set_value(lam)
    repn = generate_standard_repn(model.obj.expr, compute_values=True)
    cost_C = np.zeros(lp.num_col_)
    for coef, var in zip(repn.linear_coefs, repn.linear_vars, strict=True):
        cost_C[column[id(var)]] = coef
    np.testing.assert_allclose(np.asarray(lp.col_cost_), cost_C, rtol=0, atol=1e-15)
    # The Pyomo objective at HiGHS's solution is the optimum, and its x gives the labels.
    col_value = np.asarray(solver._highs.getSolution().col_value)
    for var in vars_:
        var.set_value(float(col_value[column[id(var)]]))
    assert pyo.value(model.obj) == pytest.approx(solver.last.objective, abs=1e-12)
    assert solver.last.objective == pytest.approx(assignment_cost(unary_NK, labels_N, lam))
    x_NK = np.array([[pyo.value(model.x[i, c]) for c in range(k)] for i in range(n)])
    np.testing.assert_array_equal(x_NK.argmax(axis=1), labels_N)
    for con in cons:
        assert pyo.value(con.body) == pytest.approx(pyo.value(con.lower), abs=1e-9)


def test_cost_map_rejects_an_objective_it_cannot_represent() -> None:
    model = build_model(3, 2)
    model.obj.expr = model.obj.expr + model.lam * model.lam * model.x[0, 0]
    cols = {id(v): i for i, v in enumerate(model.component_data_objects(pyo.Var))}
    with pytest.raises(RuntimeError, match="not affine"):
        objective_cost_map(model, lambda v: cols[id(v)], len(cols))


# -- failures are loud -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("unary", "lam", "match"),
    [
        (np.array([[1.0, np.nan], [0.0, 1.0]]), 0.1, "NaN or inf"),
        (np.array([[1.0, np.inf], [0.0, 1.0]]), 0.1, "NaN or inf"),
        (np.array([[1.0, -np.inf]]), 0.1, "NaN or inf"),
        (np.array([1.0, 2.0, 3.0]), 0.1, "2-D"),
        (np.ones((2, 2, 2)), 0.1, "2-D"),
        (np.ones((0, 3)), 0.1, "N = 0"),
        (np.ones((4, 0)), 0.1, "K >= 1"),
        (np.ones((4, 3)), -0.001, ">= 0"),
        (np.ones((4, 3)), float("nan"), "finite"),
        (np.ones((4, 3)), float("inf"), "finite"),
        (np.array([["a", "b"]]), 0.1, "real numbers"),
        (np.ones((4, 3)), "0.1", "real number"),
    ],
)
def test_bad_input_raises_value_error_naming_the_problem(unary, lam, match) -> None:
    with pytest.raises(ValueError, match=match):
        assign(unary, lam)


def test_wrong_shape_for_a_solver_raises() -> None:
    with pytest.raises(ValueError, match=r"does not match this solver's \(5, 3\)"):
        AssignmentSolver(5, 3).solve(np.zeros((6, 3)), 0.1)


def test_non_optimal_status_raises_with_the_status() -> None:
    solver = AssignmentSolver(20, 3)
    solver._highs.setOptionValue("simplex_iteration_limit", 0)
    unary_NK = np.random.default_rng(0).normal(size=(20, 3)) + np.array([0.0, 5.0, 10.0])
    with pytest.raises(SolverError, match="model status 'Iteration limit reached'"):
        solver.solve(unary_NK, 1.0)


class _FractionalHighs:
    """Delegates to a real highspy object but reports x = 0.5 everywhere."""

    def __init__(self, real):
        self._real = real

    def __getattr__(self, name):
        return getattr(self._real, name)

    def getSolution(self):  # noqa: N802 - highspy's name
        real = self._real.getSolution()

        class Fake:
            col_value = [0.5] * len(real.col_value)
            row_dual = real.row_dual

        return Fake()


def test_non_integral_solution_raises() -> None:
    solver = AssignmentSolver(6, 2)
    solver._highs = _FractionalHighs(solver._highs)
    with pytest.raises(SolverError, match="not one category per item"):
        solver.solve(np.random.default_rng(1).normal(size=(6, 2)), 0.3)


def test_a_pyomo_without_the_highs_attributes_is_named_in_the_error() -> None:
    from solver.solve import _highs_handles

    with pytest.raises(RuntimeError, match=r"does not expose _solver_model .* pyomo 6\.10"):
        _highs_handles(object())
