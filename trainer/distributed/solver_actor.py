"""The central solver as a Ray actor: one global assignment per training step (no math here).

Legend: N items of the global batch (all workers' shards, in rank order), K categories.

Rank 0 of the Train worker group gathers the unary shards, calls `solve_remote` with the whole
(N, K) matrix and broadcasts the labels. The actor is stateless towards its callers: every call
carries the whole problem, so a restarted actor (max_restarts=-1) that replays a call
(max_task_retries=-1) can never mix pieces of two attempts. Its only state is the reusable
solvers (one per shape, built on the first call of that shape) and timing counters.
"""

from __future__ import annotations

import concurrent.futures
import copy
import functools
import logging
import os
import statistics
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import numpy as np
import ray
from ray.exceptions import GetTimeoutError

from solver.network import validate_problem

if TYPE_CHECKING:
    from solver.solve import AssignmentSolver

logger = logging.getLogger(__name__)

_BUILD_TIMEOUT_S = 300.0  # the longest wait of a graph's build for each of its steps
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
        self._graph_calls = 0  # through a compiled graph, warm-ups included
        self._total_ms = 0.0
        # A compiled graph's calls run in the actor's `_ray_system` thread, ordinary calls in
        # its default one: one solve at a time, since a solver is stateful.
        self._lock = threading.Lock()

    def solve(
        self, unary_NK: np.ndarray, lam: float, checked: bool = False, counted: bool = True
    ) -> tuple[np.ndarray, float]:
        """(labels_N int64, solve_ms) of one global assignment; solve_ms excludes model builds.

        `checked=True`: the caller has validated the problem (the worker's code client checks
        every step's matrix once, on every rank), so it is not checked again here.
        `counted=False` (a compiled graph's warm-up) leaves the call out of `stats`."""
        if not checked:
            unary_NK, lam = validate_problem(unary_NK, lam)
        with self._lock:
            solver = self._solver_for(unary_NK.shape)
            labels_N = solver.solve_valid(unary_NK, lam)
            solve_ms = solver.last_solve_ms  # the solver's own timing: the solve is timed once
            if counted:
                self._calls += 1
                self._total_ms += solve_ms
                self._solve_ms.append(solve_ms)
        return labels_N.astype(np.int64, copy=False), solve_ms

    def solve_numbered(
        self, unary_NK: np.ndarray, lam: float, counted: bool, call: int
    ) -> tuple[np.ndarray, float, int]:
        """`solve(unary_NK, lam, checked=True, counted)` and the caller's `call` number back, so
        that a compiled graph's caller can check that an answer belongs to its call."""
        self._graph_calls += 1
        labels_N, solve_ms = self.solve(unary_NK, lam, True, counted)
        return labels_N, solve_ms, call

    def stats(self) -> dict[str, Any]:
        """Calls, total / median solve ms, shapes seen (with their model build ms), process id,
        and the calls that came through a compiled graph (warm-ups included)."""
        return {
            "calls": self._calls,
            "graph_calls": self._graph_calls,
            "total_solve_ms": self._total_ms,
            "median_solve_ms": statistics.median(self._solve_ms) if self._solve_ms else None,
            "shapes": sorted(self._build_ms),
            "build_ms": {f"{n}x{k}": ms for (n, k), ms in sorted(self._build_ms.items())},
            "pid": os.getpid(),
        }

    def ping(self) -> bool:
        return True

    def _build_solver(self, shape: tuple[int, int]) -> AssignmentSolver:
        from solver.solve import AssignmentSolver  # Pyomo and HiGHS: on the actor only

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
    actor: Any, unary_NK: np.ndarray, lam: float, timeout_s: float = 120.0, *, checked=False
) -> tuple[np.ndarray, float, float]:
    """(labels_N int64, solve_ms, round_trip_ms) from the actor; SolverTimeoutError on timeout.

    Bad input raises ValueError here, before anything is sent (`checked=True`: the caller
    validated it, see `validate_problem`, and nothing is checked again, here or on the actor).
    On timeout the call is cancelled if it has not started; a running one finishes on the actor
    and is dropped.
    """
    if not checked:
        unary_NK, lam = validate_problem(unary_NK, lam)
    started = time.perf_counter()
    ref = actor.solve.remote(unary_NK, lam, True)
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


def restart_if_another_graph_ran(actor: Any, timeout_s: float = 60.0) -> bool:
    """Restart `actor` (Ray's restart policy, a new process) when a compiled graph has already
    run on it; True when it was restarted. For a caller about to build its own graph.

    A graph's loop runs on the actor's graph thread until its caller tears it down. A caller
    that died without that (a worker group restarted beside a living actor) leaves the loop
    waiting on a channel nobody writes to: a new graph could never be built on that actor, and
    waiting for the build hangs the new caller."""
    import ray

    stats = ray.get(actor.stats.remote(), timeout=timeout_s)
    if not stats.get("graph_calls"):
        return False
    ray.kill(actor, no_restart=False)
    deadline = time.monotonic() + timeout_s
    while True:  # calls to the killed process are retried on the restarted one
        left = deadline - time.monotonic()
        if left <= 0:
            raise SolverTimeoutError(
                f"solver actor {_actor_label(actor)}: no restart in {timeout_s} s"
            )
        if ray.get(actor.stats.remote(), timeout=left)["pid"] != stats["pid"]:
            return True
        time.sleep(0.05)


class ActorLostError(RuntimeError):
    """The solver actor died (or was restarted) with a compiled-graph call in flight."""


class CompiledSolve:
    """`solve_remote` through a Ray Compiled Graph on the same actor: the problem and the
    answer travel through shared-memory channels instead of an ordinary actor call.

    Same answers, errors and restart behaviour as `solve_remote`. The graph is built in the
    background (`start`, or the first call): once the actor answers a ping, it is compiled and
    answers one warm-up problem of the calls' shape (the first execution of a graph starts its
    loop on the actor: seconds on a loaded machine); ordinary calls answer until then. When it
    cannot be built, ordinary calls answer, the reason is logged once and kept in
    `compile_error`, and building is tried again after `recompile_after` calls.

    The graph runs on a second handle of the actor on which Ray's own graph tasks (`__ray_call__`:
    channel set-up, the graph's loop on the actor, its cancellation) are not retried; the
    actor's solve calls keep its policy (restarted actor, retried calls). With the actor's
    policy, Ray would replay the loop of a graph whose actor died on the restarted actor, where
    none of the graph's channels exist: that loop reads the next problem, solves it and fails
    to write the answer, and holds the actor's graph thread, so a new graph's loop waits behind
    it. Not retried, the loop ends with the actor and Ray shuts the graph down.

    A dead actor is noticed within about `health_check_s`: while a call is unanswered, the
    caller asks the GCS for the actor's state and restart count every `health_check_s` (the
    graph call runs in a helper thread; the caller waits on it in slices). Every call carries
    a number that the actor hands back with the answer: an answer to another call is never
    taken. Then the graph is torn down (in the background), Ray restarts the actor (its restart
    policy), the call in flight is sent again as an ordinary call, which Ray runs on the
    restarted actor, and a new graph is built on the restarted actor once the teardown has
    finished. `ready` waits for the graph.

    A timeout raises SolverTimeoutError and drops the graph. `compiled_calls`,
    `fallback_calls` and `recoveries` count what answered and how often a lost actor was
    recovered from.
    """

    def __init__(self, actor: Any, *, recompile_after: int = 100, health_check_s: float = 0.05):
        self.actor = actor
        self.recompile_after = recompile_after
        self.health_check_s = health_check_s
        self.compiled_calls = 0
        self.fallback_calls = 0
        self.recoveries = 0
        self.compile_error: str | None = None
        self._graph: Any = None
        self._restarts_at_compile: int | None = None
        self._ordinary_left = 0  # ordinary calls left before the next build attempt
        self._call_number = 0  # of the last call sent through a graph (warm-ups send 0)
        self._caller = _graph_thread()
        self._in_flight: concurrent.futures.Future | None = None
        self._teardown: threading.Thread | None = None
        self._builder: threading.Thread | None = None
        self._closed = False

    @property
    def transport(self) -> str:
        """What answers calls now: `compiled`, or `ordinary` (with the reason when the graph
        could not be built)."""
        if self._graph is not None:
            return "compiled"
        return f"ordinary ({self.compile_error})" if self.compile_error else "ordinary"

    def start(self, n: int, k: int, lam: float) -> None:
        """Build the graph in the background for (n, k) problems (no wait)."""
        if self._closed or self._graph is not None:
            return
        if self._builder is None or not self._builder.is_alive():
            warm_NK = np.zeros((n, k), dtype=np.float64)
            self._builder = threading.Thread(
                target=self._build, args=(warm_NK, float(lam)), name="compiled-solve-build",
                daemon=True,
            )  # fmt: skip
            self._builder.start()

    def ready(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for the graph (building it when needed); True when calls
        now go through it."""
        deadline = time.monotonic() + timeout_s
        for thread in (self._teardown, self._builder):
            if thread is not None:
                thread.join(timeout=max(deadline - time.monotonic(), 0.0))
        return self._graph is not None

    def __call__(
        self, unary_NK: np.ndarray, lam: float, timeout_s: float = 120.0, *, checked=False
    ) -> tuple[np.ndarray, float, float]:
        """(labels_N int64, solve_ms, round_trip_ms), as `solve_remote` (and `checked` too)."""
        if not checked:
            unary_NK, lam = validate_problem(unary_NK, lam)
        started = time.perf_counter()
        deadline = time.monotonic() + timeout_s
        graph = self._graph
        if graph is not None:
            try:
                labels_N, solve_ms = self._execute(graph, unary_NK, lam, deadline, timeout_s)
            except SolverTimeoutError:
                self._drop_graph()
                raise
            except Exception as exc:  # the actor died or the graph broke
                self._drop_graph()
                self.recoveries += 1
                logger.warning(
                    "solver actor %s lost with a call in flight (%s: %s): the call goes again "
                    "as an ordinary call, which Ray runs on the restarted actor; a new graph is "
                    "built once the old one is torn down",
                    self.actor._actor_id.hex(),
                    type(exc).__name__,
                    str(exc).splitlines()[0] if str(exc) else "",
                )
            else:
                self.compiled_calls += 1
                round_trip_ms = 1e3 * (time.perf_counter() - started)
                return np.asarray(labels_N, dtype=np.int64), float(solve_ms), round_trip_ms
        if self._ordinary_left > 0:
            self._ordinary_left -= 1
        else:
            n, k = unary_NK.shape
            self.start(n, k, lam)
        self.fallback_calls += 1
        left_s = max(deadline - time.monotonic(), 1e-3)
        labels_N, solve_ms, _ = solve_remote(self.actor, unary_NK, lam, left_s, checked=True)
        return labels_N, solve_ms, 1e3 * (time.perf_counter() - started)

    def close(self) -> None:
        """Tear the graph down (waits for the actor's side to stop)."""
        self._closed = True
        if self._builder is not None:
            self._builder.join(timeout=_BUILD_TIMEOUT_S)
        graph, self._graph = self._graph, None
        if graph is not None:
            try:
                graph.teardown()
            except Exception:  # a graph whose actor died may fail to tear down
                pass
        self._caller.shutdown(wait=False)

    def _execute(
        self, graph: Any, unary_NK: np.ndarray, lam: float, deadline: float, timeout_s: float
    ) -> tuple[np.ndarray, float]:
        """One call through `graph`; ActorLostError when the actor died meanwhile or the answer
        is not this call's."""
        if self._in_flight is not None and not self._in_flight.done():
            # A call of a dropped graph still waits in the old thread: use a new one.
            self._caller.shutdown(wait=False)
            self._caller = _graph_thread()
        self._call_number += 1
        number = self._call_number
        answer = self._in_flight = self._caller.submit(
            _graph_call, graph, (unary_NK, lam, True, number), timeout_s
        )
        while True:
            left_s = deadline - time.monotonic()
            if left_s <= 0:
                raise _timeout_error(self.actor, unary_NK, lam, timeout_s)
            try:
                labels_N, solve_ms, answered = answer.result(
                    timeout=min(self.health_check_s, left_s)
                )
            except concurrent.futures.TimeoutError:
                if not self._actor_unchanged():
                    raise ActorLostError(
                        f"solver actor {self.actor._actor_id.hex()} died"
                    ) from None
                continue
            if answered != number:
                raise ActorLostError(f"the graph answered call {answered} to call {number}")
            return labels_N, solve_ms

    def _actor_unchanged(self) -> bool:
        """Whether the GCS holds the actor neither restarting nor dead, with the restart count
        seen when the graph was built (True when the GCS cannot be asked: Ray's own failure
        detection then decides)."""
        state = _actor_state(self.actor)
        if state is None or self._restarts_at_compile is None:
            return True
        name, restarts = state
        return name not in ("RESTARTING", "DEAD") and restarts == self._restarts_at_compile

    def _build(self, warm_NK: np.ndarray, lam: float) -> None:
        """Compile a graph and run one warm-up problem through it; publish it when it answered."""
        from ray.exceptions import ActorUnavailableError

        graph = None
        deadline = time.monotonic() + _BUILD_TIMEOUT_S
        try:
            if self._teardown is not None:  # the old graph's loop must be gone first
                self._teardown.join(timeout=_BUILD_TIMEOUT_S)
            while True:
                try:
                    graph, state = self._compile(warm_NK, lam)
                    break
                except ActorUnavailableError:
                    # Just after a restart, the graph's set-up tasks (not retried) can meet
                    # the actor's old connection: build again while the time allows.
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.5)  # a pause between attempts, not a wait for an event
        except Exception as exc:  # no compiled graphs here: ordinary calls for a while
            self._ordinary_left = self.recompile_after
            if self.compile_error is None:
                self.compile_error = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
                logger.warning(
                    "the solver call cannot use a Ray compiled graph (%s); using ordinary "
                    "actor calls",
                    self.compile_error,
                )
            return
        if self._closed:
            graph.teardown()
            return
        self._restarts_at_compile = None if state is None else state[1]
        self._graph = graph

    def _compile(self, warm_NK: np.ndarray, lam: float) -> tuple[Any, tuple[str, int] | None]:
        """(a compiled graph that answered one warm-up problem, the actor's state before)."""
        from ray.dag import InputNode

        # A graph compiled before its actor is created never answered (Ray 2.60): the actor
        # answers an ordinary call first.
        ray.get(self.actor.ping.remote(), timeout=_BUILD_TIMEOUT_S)
        state = _actor_state(self.actor)
        handle = _graph_handle(self.actor)
        with InputNode() as problem:
            node = handle.solve_numbered.bind(problem[0], problem[1], problem[2], problem[3])
        graph = node.experimental_compile()
        try:
            _, _, answered = _graph_call(graph, (warm_NK, lam, False, 0), _BUILD_TIMEOUT_S)
            if answered != 0:
                raise ActorLostError(f"the warm-up was answered as call {answered}")
        except Exception:
            try:
                graph.teardown()
            except Exception:
                pass
            raise
        return graph, state

    def _drop_graph(self) -> None:
        """Forget the graph; its teardown waits for the actor, so it runs in a daemon thread."""
        graph, self._graph = self._graph, None
        if graph is not None:

            def teardown() -> None:
                try:
                    graph.teardown()
                except Exception:  # a graph whose actor died may fail to tear down: dropped
                    pass

            self._teardown = threading.Thread(
                target=teardown, name="compiled-solve-teardown", daemon=True
            )
            self._teardown.start()


def _graph_call(graph: Any, args: tuple, timeout_s: float) -> tuple[np.ndarray, float, int]:
    """(labels_N, solve_ms, call number) of one execution of a solve graph. Writing the problem
    can wait for the actor too, so the whole call runs in the caller's helper thread."""
    labels_N, solve_ms, answered = ray.get(graph.execute(*args), timeout=timeout_s)
    return labels_N, solve_ms, int(answered)


def _graph_handle(actor: Any) -> Any:
    """A second handle of `actor` whose `__ray_call__` tasks are not retried (see
    CompiledSolve); its other methods keep the actor's policy. Raises RuntimeError when this
    Ray's handles do not have the per-method retry setting (then no graph is built)."""
    handle = copy.copy(actor)  # a new handle of the same actor (ActorHandle.__reduce__)
    shells: Any = getattr(handle, "_method_shells", None)
    shell = shells.get("__ray_call__") if isinstance(shells, dict) else None
    if shell is None or not hasattr(shell, "_max_task_retries"):
        raise RuntimeError(
            f"ray {ray.__version__}: an actor handle without a per-method retry setting for "
            "__ray_call__, so a graph's loop would be replayed on a restarted actor"
        )
    shell = copy.copy(shell)
    shell._max_task_retries = 0
    handle._method_shells = {**shells, "__ray_call__": shell}
    return handle


def _graph_thread() -> concurrent.futures.ThreadPoolExecutor:
    return concurrent.futures.ThreadPoolExecutor(
        max_workers=1, thread_name_prefix="compiled-solve-call"
    )


def _actor_state(actor: Any) -> tuple[str, int] | None:
    """(state, restart count) of the actor in the GCS ("ALIVE", "RESTARTING", "DEAD", ...);
    None when the GCS cannot be asked."""
    try:
        from ray._private import state

        info = state.state.actor_table(actor._actor_id.hex())
    except Exception:
        return None
    if not info:
        return None
    return str(info["State"]), int(info["NumRestarts"])


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
