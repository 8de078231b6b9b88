"""The central solver as a Ray actor: one global assignment per training step (no math here).

Legend: N items of the global batch (all workers' shards, in rank order), K categories.

Rank 0 of the Train worker group gathers the unary shards, calls `solve_remote` with the whole
(N, K) matrix and broadcasts the labels. The actor is stateless towards its callers: every call
carries the whole problem, so a restarted actor (max_restarts=-1) that replays a call
(max_task_retries=-1) can never mix pieces of two attempts. Its only state is the reusable
solvers (one per shape, built on the first call of that shape) and timing counters.
"""

from __future__ import annotations

import functools
import os
import statistics
import threading
import time
from collections import deque
from typing import Any

import numpy as np
import ray
from ray.exceptions import GetTimeoutError

from solver.network import validate_problem
from solver.solve import AssignmentSolver

_MAX_SHAPES = 4  # solvers kept; training uses one shape, tests and benchmarks a few
_MAX_TIMINGS = 100_000  # solve times kept for the median


class SolverTimeoutError(TimeoutError):
    """The solver actor gave no answer in time (the message names actor, timeout and shape)."""


class SolverActor:
    """Holds one `AssignmentSolver` per shape and answers `solve(unary_NK, lam)` calls."""

    def __init__(self) -> None:
        self._solver_for = functools.lru_cache(maxsize=_MAX_SHAPES)(self._build_solver)
        self._build_ms: dict[tuple[int, int], float] = {}
        self._solve_ms: deque[float] = deque(maxlen=_MAX_TIMINGS)
        self._calls = 0
        self._total_ms = 0.0

    def solve(self, unary_NK: np.ndarray, lam: float) -> tuple[np.ndarray, float]:
        """(labels_N int64, solve_ms) of one global assignment; solve_ms excludes model builds."""
        unary_NK, lam = validate_problem(unary_NK, lam)  # once here; solve_valid trusts it
        solver = self._solver_for(unary_NK.shape)
        started = time.perf_counter()
        labels_N = solver.solve_valid(unary_NK, lam)
        solve_ms = 1e3 * (time.perf_counter() - started)
        self._calls += 1
        self._total_ms += solve_ms
        self._solve_ms.append(solve_ms)
        return labels_N.astype(np.int64, copy=False), solve_ms

    def stats(self) -> dict[str, Any]:
        """Calls, total / median solve ms, shapes seen (with their model build ms), process id."""
        return {
            "calls": self._calls,
            "total_solve_ms": self._total_ms,
            "median_solve_ms": statistics.median(self._solve_ms) if self._solve_ms else None,
            "shapes": sorted(self._build_ms),
            "build_ms": {f"{n}x{k}": ms for (n, k), ms in sorted(self._build_ms.items())},
            "pid": os.getpid(),
        }

    def ping(self) -> bool:
        return True

    def _build_solver(self, shape: tuple[int, int]) -> AssignmentSolver:
        started = time.perf_counter()
        solver = AssignmentSolver(*shape)
        self._build_ms[shape] = 1e3 * (time.perf_counter() - started)
        return solver


_remote_classes: dict[type, Any] = {}


def remote_solver_actor_class(actor_class: type = SolverActor) -> Any:
    """`ray.remote(actor_class)` with the restart policy (created once per class)."""
    if actor_class not in _remote_classes:
        remote = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
        _remote_classes[actor_class] = remote(actor_class)
    return _remote_classes[actor_class]


def get_or_create_solver_actor(
    name: str, namespace: str | None = None, node_id: str | None = None
) -> Any:
    """Handle of the named solver actor, created when it does not exist yet.

    Zero CPUs (the solve is short and must not take a worker's CPU), restarted without limit
    and its calls retried. Pass `namespace` explicitly: every `ray job submit` job gets a
    random one. `node_id`: only on that node (a hard affinity: Ray 2.60 placed actors with a
    soft one on another node while the named node was alive).
    """
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    strategy = NodeAffinitySchedulingStrategy(node_id, soft=False) if node_id else None
    return (
        remote_solver_actor_class()
        .options(
            name=name,
            namespace=namespace,
            get_if_exists=True,
            num_cpus=0,
            max_restarts=-1,
            max_task_retries=-1,
            lifetime=None,
            scheduling_strategy=strategy,
        )
        .remote()
    )


def solve_remote(
    actor: Any, unary_NK: np.ndarray, lam: float, timeout_s: float = 120.0
) -> tuple[np.ndarray, float, float]:
    """(labels_N int64, solve_ms, round_trip_ms) from the actor; SolverTimeoutError on timeout.

    Bad input raises ValueError here, before anything is sent. On timeout the call is
    cancelled if it has not started; a running one finishes on the actor and is dropped.
    """
    unary_NK, lam = validate_problem(unary_NK, lam)
    started = time.perf_counter()
    ref = actor.solve.remote(unary_NK, lam)
    try:
        labels_N, solve_ms = ray.get(ref, timeout=timeout_s)
    except GetTimeoutError as exc:
        try:
            ray.cancel(ref)
        except Exception:  # best effort: the error below is what matters
            pass
        raise _timeout_error(actor, unary_NK, lam, timeout_s) from exc
    round_trip_ms = 1e3 * (time.perf_counter() - started)
    return np.asarray(labels_N, dtype=np.int64), float(solve_ms), round_trip_ms


class CompiledSolve:
    """`solve_remote` through a Ray Compiled Graph on the same actor: the problem and the
    answer travel through shared-memory channels instead of an ordinary actor call.

    Same answers, errors and restart behaviour as `solve_remote`: the actor keeps its restart
    policy; when the graph fails (the actor died or was restarted: a compiled graph does not
    survive that, Ray raises a channel or system error), the graph is torn down in the
    background and that call is answered by `solve_remote`, whose ordinary call Ray retries on
    the restarted actor; the next call compiles a new graph. A timeout raises
    SolverTimeoutError and drops the graph as well. When compiling fails, ordinary calls are
    used for the next `recompile_after` calls. `compiled_calls` / `fallback_calls` count what
    answered.
    """

    def __init__(self, actor: Any, *, recompile_after: int = 100):
        self.actor = actor
        self.recompile_after = recompile_after
        self.compiled_calls = 0
        self.fallback_calls = 0
        self._graph: Any = None
        self._ordinary_left = 0  # ordinary calls left before the next compile attempt

    def __call__(
        self, unary_NK: np.ndarray, lam: float, timeout_s: float = 120.0
    ) -> tuple[np.ndarray, float, float]:
        """(labels_N int64, solve_ms, round_trip_ms), as `solve_remote`."""
        unary_NK, lam = validate_problem(unary_NK, lam)
        graph = self._current_graph()
        if graph is None:
            self.fallback_calls += 1
            return solve_remote(self.actor, unary_NK, lam, timeout_s)
        started = time.perf_counter()
        try:
            labels_N, solve_ms = ray.get(graph.execute(unary_NK, lam), timeout=timeout_s)
        except (GetTimeoutError, TimeoutError) as exc:
            self._drop_graph()
            raise _timeout_error(self.actor, unary_NK, lam, timeout_s) from exc
        except Exception:  # the graph broke (actor died or restarted): an ordinary call
            self._drop_graph()
            self.fallback_calls += 1
            return solve_remote(self.actor, unary_NK, lam, timeout_s)
        round_trip_ms = 1e3 * (time.perf_counter() - started)
        self.compiled_calls += 1
        return np.asarray(labels_N, dtype=np.int64), float(solve_ms), round_trip_ms

    def close(self) -> None:
        """Tear the graph down (waits for the actor's side to stop)."""
        graph, self._graph = self._graph, None
        if graph is not None:
            graph.teardown()

    def _current_graph(self) -> Any:
        if self._graph is not None:
            return self._graph
        if self._ordinary_left > 0:
            self._ordinary_left -= 1
            return None
        from ray.dag import InputNode

        try:
            with InputNode() as problem:
                node = self.actor.solve.bind(problem[0], problem[1])
            self._graph = node.experimental_compile()
        except Exception:  # no compiled graphs here: ordinary calls for a while
            self._ordinary_left = self.recompile_after
            return None
        return self._graph

    def _drop_graph(self) -> None:
        """Forget the graph; its teardown waits for the actor, so it runs in a daemon thread."""
        graph, self._graph = self._graph, None
        if graph is not None:

            def teardown() -> None:
                try:
                    graph.teardown()
                except Exception:  # a graph whose actor died may fail to tear down: dropped
                    pass

            threading.Thread(target=teardown, name="compiled-solve-teardown", daemon=True).start()


def _timeout_error(actor: Any, unary_NK: np.ndarray, lam: float, timeout_s: float):
    return SolverTimeoutError(
        f"solver actor {_actor_label(actor)} gave no answer within {timeout_s:g} s for a "
        f"{unary_NK.shape[0]} x {unary_NK.shape[1]} (N, K) problem (lam={lam:g})"
    )


def _actor_label(actor: Any) -> str:
    """The actor's name and id for messages (the name comes from the State API when reachable)."""
    actor_id = actor._actor_id.hex()
    try:
        from ray.util.state import get_actor

        # Name this cluster explicitly: with several local clusters the lookup is ambiguous.
        address = ray.get_runtime_context().gcs_address
        state = get_actor(actor_id, address=address, timeout=5)
        if state is not None and state.name:
            return f"'{state.name}' ({actor_id})"
    except Exception:  # no dashboard / State API: the id still identifies it
        pass
    return f"with id {actor_id}"
