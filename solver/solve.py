"""Solve the assignment LP with HiGHS, reusing one Pyomo model per shape across solves.

Legend: N items, K categories, T slots per category (T = N), C LP columns, R LP rows.

One `AssignmentSolver` per shape (N, K): the Pyomo model (solver/model.py) is built once and
handed once to HiGHS through Pyomo's persistent HiGHS interface. Each solve then talks to the
underlying `highspy.Highs` object directly, because the per-coefficient path through Pyomo
costs several times the solve itself:
  1. write the new costs into HiGHS in one vectorised call (columns and their cost formula come
     from the Pyomo objective, see `objective_cost_map`);
  2. give HiGHS a starting basis (below), presolve off (it gains nothing on this LP);
  3. run the dual simplex; require status Optimal and an integral x with one category per
     item, and check HiGHS's objective against the labels' own cost (else SolverError);
  4. read the solution vector once and map columns back through precomputed index arrays.

Starting basis. Given category prices p_K, put each item in argmin_k (U[i, k] + q_k) with
q_k = lam * t_k, t_k = round(p_k / lam), make slot t_k of category k basic and the cheaper
slots full. This basis is dual feasible (all reduced costs have the right sign), so the dual
simplex only repairs the slot counts. Warm solves take p_K from the previous solve's duals
(consecutive batches have similar prices): a few iterations at N = 64 and tens instead of
thousands at N = 4096. (Keeping HiGHS's own basis, the previous optimum, needs no basis from
Python but 23-95 iterations at N = 64; measured interleaved with this start it was slower in
5 of 7 comparisons.) Cold solves (the first one, or `warm_start=False`) take p_K = lam * N / K,
a deterministic function of the input.

Ties. The labels are always an optimal assignment. Where several assignments are optimal,
which one a warm solve finds could depend on the previous solves; so after a warm solve the
solver looks for alternative optima (a cycle of zero reduced-cost moves, see `_has_ties`) and,
if there is one, solves again from the cold start. Hence the result is a deterministic function
of (unary, lam) alone: a reused solver answers exactly as a fresh one. With lam = 0 the cold
start is the per-row argmin with the lowest category index on ties, which is already optimal,
so lam = 0 returns exactly that (ties -> lowest index).
"""

from __future__ import annotations

import functools
import threading
import time
from dataclasses import dataclass

import highspy
import numpy as np
from pyomo.contrib.solver.common.factory import SolverFactory

from solver.model import build_model, objective_cost_map
from solver.network import FlowNetwork, assignment_cost, validate_problem

_HIGHS_OPTIONS: dict[str, bool | int | str] = {
    "output_flag": False,
    "presolve": "off",  # a full pass over the LP every solve, and nothing to remove here
    "solver": "simplex",
    "simplex_strategy": 1,  # dual simplex: the starting basis is dual feasible
    "simplex_scale_strategy": 0,  # every matrix entry is +-1; scaling only costs time
    "random_seed": 0,
}
_INTEGRALITY_TOL = 1e-6
_LOWER, _BASIC, _UPPER = 0, 1, 2  # codes of _BASIS_STATUS
_BASIS_STATUS = np.array(
    [
        highspy.HighsBasisStatus.kLower,
        highspy.HighsBasisStatus.kBasic,
        highspy.HighsBasisStatus.kUpper,
    ],
    dtype=object,
)


class SolverError(RuntimeError):
    """HiGHS did not return an optimal, integral assignment (the message states the status)."""


@dataclass(frozen=True)
class SolveInfo:
    """What the last solve did."""

    objective: float
    """Optimal value of sum_i U[i, k_i] + lam * sum_k c_k (c_k - 1) / 2."""
    iterations: int
    """Simplex iterations, both runs together when the tie check re-solved."""
    solve_ms: float
    """Wall time of `solve`, validation to labels."""
    warm: bool
    """The first run started from the previous solve's prices."""
    tie_fallback: bool
    """Alternative optima were found after the warm run, so the cold start decided."""


@dataclass(frozen=True)
class _Run:
    labels_N: np.ndarray
    item_dual_N: np.ndarray
    balance_dual_K: np.ndarray
    objective: float
    iterations: int


def _highs_handles(opt: object) -> tuple[highspy.Highs, dict, dict]:
    """The highspy object and the var/constraint -> index maps inside Pyomo's HiGHS interface."""
    highs = getattr(opt, "_solver_model", None)
    var_map = getattr(opt, "_pyomo_var_to_solver_var_map", None)
    con_map = getattr(opt, "_pyomo_con_to_solver_con_map", None)
    if not isinstance(highs, highspy.Highs) or var_map is None or con_map is None:
        import pyomo.version

        raise RuntimeError(
            f"Pyomo {pyomo.version.version}'s persistent HiGHS interface (pyomo.contrib.solver "
            "'highs') does not expose _solver_model / _pyomo_var_to_solver_var_map / "
            "_pyomo_con_to_solver_con_map, which solver/solve.py reads; it is tested with "
            "pyomo 6.10 (the range pinned in pyproject.toml)"
        )
    return highs, var_map, con_map


class AssignmentSolver:
    """Reusable exact solver for one shape (N, K); `solve(unary_NK, lam) -> labels_N`.

    Not thread-safe: one solve at a time (the Ray actor runs calls one by one).
    """

    def __init__(self, n: int, k: int, *, warm_start: bool = True):
        net = FlowNetwork(n, k)
        self.n, self.k, self.num_slots = n, k, net.num_slots
        self.warm_start = warm_start
        self.model = build_model(n, k)
        self._opt = SolverFactory("highs")
        self._opt.set_instance(self.model)
        highs, var_map, con_map = _highs_handles(self._opt)
        self._highs, self._var_map, self._con_map = highs, var_map, con_map
        m = self.model
        self.x_col_NK = np.array(
            [[var_map[id(m.x[i, c])] for c in range(k)] for i in range(n)], dtype=np.int64
        )
        self.slot_col_KT = np.array(
            [[var_map[id(m.slot[c, t])] for t in range(self.num_slots)] for c in range(k)],
            dtype=np.int64,
        )
        self.item_row_N = np.array([con_map[m.one_category[i]] for i in range(n)], np.int64)
        self.balance_row_K = np.array([con_map[m.balance[c]] for c in range(k)], np.int64)
        self.num_cols, self.num_rows = highs.getNumCol(), highs.getNumRow()
        if self.num_cols != n * k + k * self.num_slots or self.num_rows != n + k:
            raise RuntimeError(
                f"HiGHS holds {self.num_cols} columns / {self.num_rows} rows, the Pyomo model "
                f"has {n * k + k * self.num_slots} / {n + k}"
            )
        self.cost_map = objective_cost_map(m, lambda v: var_map[id(v)], self.num_cols)
        ucols, uidx = self.cost_map.unary_columns()
        order = np.argsort(ucols)  # HiGHS wants index sets in increasing order
        self._unary_cols = ucols[order].astype(np.int32)
        self._unary_src = uidx[order]
        self._all_cols = np.arange(self.num_cols, dtype=np.int32)
        for name, value in _HIGHS_OPTIONS.items():
            if highs.setOptionValue(name, value) != highspy.HighsStatus.kOk:
                raise RuntimeError(f"HiGHS rejected option {name}={value!r}")
        # One basis object reused by every run: its row statuses (all rows at their bound,
        # equality rows) never change, so only the column statuses are written per run.
        self._basis = highspy.HighsBasis()
        self._basis.row_status = [highspy.HighsBasisStatus.kLower] * self.num_rows
        self._slot_t_KT = np.broadcast_to(np.arange(self.num_slots), (k, self.num_slots))
        self._lam_in_highs: float | None = None
        self._prices_K: np.ndarray | None = None
        self.last: SolveInfo | None = None

    # -- public -----------------------------------------------------------------------------

    @property
    def last_solve_ms(self) -> float:
        """`last.solve_ms`: the time of the latest solve (RuntimeError before the first)."""
        if self.last is None:
            raise RuntimeError("no solve has run on this solver yet")
        return self.last.solve_ms

    def solve(self, unary_NK: np.ndarray, lam: float) -> np.ndarray:
        """Optimal labels (N,) int64 in [0, K) for one problem of this solver's shape.

        Raises ValueError on bad input or another shape, SolverError when HiGHS does not
        return an optimal, integral assignment.
        """
        started = time.perf_counter()
        unary_NK, lam = validate_problem(unary_NK, lam)
        return self.solve_valid(unary_NK, lam, started=started)

    def solve_valid(
        self, unary_NK: np.ndarray, lam: float, *, started: float | None = None
    ) -> np.ndarray:
        """`solve` for input that `validate_problem` already returned (C-contiguous float64,
        finite; lam a finite float >= 0): the matrix is not checked again. `started` is the
        perf_counter time `last.solve_ms` counts from (default: now)."""
        started = time.perf_counter() if started is None else started
        if unary_NK.shape != (self.n, self.k):
            raise ValueError(
                f"unary shape {unary_NK.shape} does not match this solver's ({self.n}, {self.k})"
            )
        self._write_costs(unary_NK, lam)
        warm_prices_K = self._prices_K if self.warm_start else None
        warm = warm_prices_K is not None
        if warm_prices_K is not None:
            run = self._run(unary_NK, lam, warm_prices_K, cold=False)
        else:
            run = self._run(unary_NK, lam, self._cold_prices(lam), cold=True)
        iterations, tie_fallback = run.iterations, False
        if warm and self._has_ties(unary_NK, lam, run):
            run = self._run(unary_NK, lam, self._cold_prices(lam), cold=True)
            iterations, tie_fallback = iterations + run.iterations, True
        self._prices_K = -run.balance_dual_K
        self.last = SolveInfo(
            objective=run.objective,
            iterations=iterations,
            solve_ms=1e3 * (time.perf_counter() - started),
            warm=warm,
            tie_fallback=tie_fallback,
        )
        return run.labels_N

    # -- steps ------------------------------------------------------------------------------

    def _write_costs(self, unary_NK: np.ndarray, lam: float) -> None:
        """One vectorised cost update; the lam-only columns are rewritten only when lam moved."""
        if lam == self._lam_in_highs:
            cols, costs = self._unary_cols, unary_NK.reshape(-1)[self._unary_src]
        else:
            cols, costs = self._all_cols, self.cost_map.costs(unary_NK, lam)
        status = self._highs.changeColsCost(len(cols), cols, np.ascontiguousarray(costs))
        if status != highspy.HighsStatus.kOk:
            raise SolverError(f"HiGHS rejected the cost update (status {status})")
        self._lam_in_highs = lam

    def _cold_prices(self, lam: float) -> np.ndarray:
        """Equal prices lam * N / K: the start depends on the input only."""
        return np.full(self.k, lam * self.n / self.k)

    def _start_basis(self, unary_NK: np.ndarray, lam: float, prices_K: np.ndarray):
        """A dual feasible basis around category prices (see the module docstring)."""
        n, k, num_slots = self.n, self.k, self.num_slots
        if lam > 0:
            t_K = np.clip(np.rint(prices_K / lam), 0, num_slots - 1).astype(np.int64)
            labels_N = np.argmin(unary_NK + lam * t_K, axis=1)
        else:
            # All slots cost 0: any t_K is dual feasible, so take the counts (primal feasible).
            labels_N = np.argmin(unary_NK, axis=1)
            t_K = np.minimum(np.bincount(labels_N, minlength=k), num_slots - 1)
        status_C = np.full(self.num_cols, _LOWER, dtype=np.int8)
        status_C[self.x_col_NK[np.arange(n), labels_N]] = _BASIC
        slot_status_KT = np.where(self._slot_t_KT < t_K[:, None], _UPPER, _LOWER).astype(np.int8)
        slot_status_KT[np.arange(k), t_K] = _BASIC
        status_C[self.slot_col_KT] = slot_status_KT
        self._basis.col_status = _BASIS_STATUS[status_C].tolist()
        return self._basis

    def _run(self, unary_NK: np.ndarray, lam: float, prices_K: np.ndarray, cold: bool) -> _Run:
        """One HiGHS run from the basis around `prices_K`; checks status, integrality and the
        objective."""
        highs = self._highs
        if cold:
            highs.clearSolver()  # nothing carried over from earlier runs
        if highs.setBasis(self._start_basis(unary_NK, lam, prices_K)) != highspy.HighsStatus.kOk:
            raise SolverError("HiGHS rejected the starting basis")
        run_status = highs.run()
        model_status = highs.getModelStatus()
        if model_status != highspy.HighsModelStatus.kOptimal:
            raise SolverError(
                f"HiGHS ended with model status '{highs.modelStatusToString(model_status)}' "
                f"(run status {run_status}) on a ({self.n}, {self.k}) problem with lam={lam}; "
                "no assignment returned"
            )
        solution = highs.getSolution()
        col_value = np.asarray(solution.col_value)
        x_NK = col_value[self.x_col_NK]
        rounded_NK = np.rint(x_NK)
        off = float(np.abs(x_NK - rounded_NK).max())
        per_item = rounded_NK.sum(axis=1)
        if off > _INTEGRALITY_TOL or rounded_NK.min() < 0 or not np.all(per_item == 1):
            raise SolverError(
                f"HiGHS status Optimal but x is not one category per item (largest distance to "
                f"an integer {off:.3g}, items with != 1 category: {int((per_item != 1).sum())})"
            )
        labels_N = rounded_NK.argmax(axis=1).astype(np.int64)
        objective = highs.getObjectiveValue()
        own = assignment_cost(unary_NK, labels_N, lam)
        if abs(objective - own) > 1e-9 * max(1.0, abs(own)) + 1e-6:
            raise SolverError(
                f"HiGHS objective {objective!r} differs from the cost of its labels {own!r}"
            )
        row_dual = np.asarray(solution.row_dual)
        return _Run(
            labels_N=labels_N,
            item_dual_N=row_dual[self.item_row_N],
            balance_dual_K=row_dual[self.balance_row_K],
            objective=own,
            iterations=int(highs.getInfoValue("simplex_iteration_count")[1]),
        )

    def _has_ties(self, unary_NK: np.ndarray, lam: float, run: _Run) -> bool:
        """Whether another assignment has (numerically) the same cost.

        With the duals (u_N, y_K) of the run, an item i moving from its category a to b costs
        rc[i, b] - rc[i, a] (reduced costs rc = U - u - y); category b absorbing one more item
        costs its next slot's reduced cost, category a releasing one earns its last used slot's.
        Any other feasible assignment differs by cycles of such moves (category -> category via
        an item, category -> sink by absorbing, sink -> category by releasing), and its extra
        cost is the sum of the moves' costs, each >= 0 at an optimum. So an alternative optimum
        exists iff the moves of (near) zero cost contain a cycle through an item move.
        """
        n, k = self.n, self.k
        labels_N = run.labels_N
        y_K = run.balance_dual_K
        rc_NK = unary_NK - run.item_dual_N[:, None] - y_K[None, :]
        move_NK = rc_NK - rc_NK[np.arange(n), labels_N][:, None]
        scale = max(1.0, float(np.abs(unary_NK).max()), lam * n)
        tol = 1e-6 + 1e-9 * scale  # above HiGHS's 1e-7 tolerances summed over a short cycle
        free_NK = move_NK <= tol
        free_NK[np.arange(n), labels_N] = False
        if not free_NK.any():  # no item can move for free, so no cycle through an item move
            return False
        counts_K = np.bincount(labels_N, minlength=k)
        absorb_K = (counts_K < self.num_slots) & (lam * counts_K + y_K <= tol)
        release_K = (counts_K > 0) & (-(lam * (counts_K - 1) + y_K) <= tol)
        adj = np.zeros((k + 1, k + 1), dtype=bool)
        member_NK = labels_N[:, None] == np.arange(k)[None, :]
        item_move_KK = (member_NK.T.astype(np.int64) @ free_NK.astype(np.int64)) > 0
        adj[:k, :k] = item_move_KK
        adj[:k, k] = absorb_K
        adj[k, :k] = release_K
        reach = adj
        for _ in range(int(np.ceil(np.log2(k + 1))) + 1):  # transitive closure by squaring
            reach = reach | ((reach.astype(np.int64) @ reach.astype(np.int64)) > 0)
        # Only cycles through an item move change labels (absorb + release in one category
        # just relabels slots): an item move a -> b closed by a path b -> ... -> a.
        return bool((item_move_KK & reach[:k, :k].T).any())


_solve_lock = threading.Lock()


@functools.lru_cache(maxsize=4)
def get_solver(n: int, k: int) -> AssignmentSolver:
    """The shared reusable solver for shape (N, K) (the 4 most recently used shapes are kept)."""
    return AssignmentSolver(n, k)


def assign(unary: np.ndarray, lam: float) -> np.ndarray:
    """Optimal labels (N,) int64 of min sum_i U[i, k_i] + lam * sum_k c_k (c_k - 1) / 2.

    `unary` is (N, K) float; lam >= 0. Deterministic for identical input; with lam = 0 it is
    the per-row argmin with ties going to the lowest category index. Raises ValueError on bad
    input and SolverError if HiGHS does not prove an integral optimum.
    """
    unary_NK, lam = validate_problem(unary, lam)
    with _solve_lock:  # one build or solve at a time per process: the solvers are stateful
        return get_solver(*unary_NK.shape).solve_valid(unary_NK, lam)
