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


def get_or_create_solver_actor(name: str, namespace: str | None = None) -> Any:
    """Handle of the named solver actor, created when it does not exist yet.

    Zero CPUs (the solve is short and must not take a worker's CPU), restarted without limit
    and its calls retried. Pass `namespace` explicitly: every `ray job submit` job gets a
    random one.
    """
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
        raise SolverTimeoutError(
            f"solver actor {_actor_label(actor)} gave no answer within {timeout_s:g} s for a "
            f"{unary_NK.shape[0]} x {unary_NK.shape[1]} (N, K) problem (lam={lam:g})"
        ) from exc
    round_trip_ms = 1e3 * (time.perf_counter() - started)
    return np.asarray(labels_N, dtype=np.int64), float(solve_ms), round_trip_ms


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
