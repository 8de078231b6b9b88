"""The solver actor on a real local Ray: same answers as `assign`, survives kills (calls in
flight are retried), times out loudly, records solve and round-trip times.

Legend: N items of the global batch, K categories.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from solver import assign, assignment_cost
from trainer.distributed.drills import DelayedSolverActor
from trainer.distributed.solver_actor import (
    CompiledSolve,
    SolverTimeoutError,
    get_or_create_solver_actor,
    remote_solver_actor_class,
    restart_if_another_graph_ran,
    solve_remote,
)

pytestmark = pytest.mark.slow  # every test uses the session's Ray cluster

NAMESPACE = "cascadevae-tests"


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def started_pids(log: Path, count: int, timeout_s: float = 60) -> list[int]:
    """The pids of the solves that have started inside a DelayedSolverActor with
    `started_log=log`, once there are at least `count` of them."""
    deadline = time.monotonic() + timeout_s
    while True:
        lines = log.read_text().splitlines() if log.exists() else []
        if len(lines) >= count:
            return [int(line) for line in lines]
        assert time.monotonic() < deadline, f"{count} solve(s) did not start in {timeout_s} s"
        time.sleep(0.05)


def problem(seed: int, n: int = 96, k: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 100 + 50 * rng.uniform(size=(n, k)) + np.arange(k)[None, :]


def test_remote_answer_equals_local_assign_and_times_are_recorded(ray_session) -> None:
    name = unique_name("solver")
    actor = get_or_create_solver_actor(name, namespace=NAMESPACE)
    assert ray_session.get(actor.ping.remote()) is True
    # get_if_exists: the same name gives the same actor.
    assert get_or_create_solver_actor(name, namespace=NAMESPACE) == actor
    solve_ms_seen = []
    for seed, lam in [(0, 0.001), (1, 1.0), (2, 0.0)]:
        unary_NK = problem(seed)
        labels_N, solve_ms, round_trip_ms = solve_remote(actor, unary_NK, lam, timeout_s=60)
        assert labels_N.dtype == np.int64
        np.testing.assert_array_equal(labels_N, assign(unary_NK, lam))
        assert 0 < solve_ms < round_trip_ms
        solve_ms_seen.append(solve_ms)
    unary_NK = problem(3, n=40, k=10)  # a second shape
    np.testing.assert_array_equal(solve_remote(actor, unary_NK, 0.5)[0], assign(unary_NK, 0.5))
    stats = ray_session.get(actor.stats.remote())
    assert stats["calls"] == 4
    assert stats["shapes"] == [(40, 10), (96, 3)]
    assert stats["total_solve_ms"] > sum(solve_ms_seen)
    assert min(solve_ms_seen) <= stats["median_solve_ms"] <= stats["total_solve_ms"]
    ray_session.kill(actor, no_restart=True)


def test_bad_input_is_rejected_before_sending(ray_session) -> None:
    actor = get_or_create_solver_actor(unique_name("solver-bad"), namespace=NAMESPACE)
    with pytest.raises(ValueError, match="NaN or inf"):
        solve_remote(actor, np.array([[0.0, np.nan]]), 0.1)
    with pytest.raises(ValueError, match=">= 0"):
        solve_remote(actor, np.zeros((3, 2)), -1.0)
    ray_session.kill(actor, no_restart=True)


def test_killed_actor_restarts_and_calls_in_flight_are_retried(ray_session, tmp_path) -> None:
    ray = ray_session
    name = unique_name("solver-kill")
    actor = get_or_create_solver_actor(name, namespace=NAMESPACE)
    unary_NK = problem(10)
    labels_N, _, _ = solve_remote(actor, unary_NK, 0.001)
    first_pid = ray.get(actor.stats.remote())["pid"]

    ray.kill(actor, no_restart=False)  # asynchronous: wait until a new process answers
    deadline = time.monotonic() + 60
    while ray.get(actor.stats.remote(), timeout=60)["pid"] == first_pid:
        assert time.monotonic() < deadline, "the killed actor was not restarted"
        time.sleep(0.05)
    again_N, _, _ = solve_remote(actor, unary_NK, 0.001, timeout_s=60)
    np.testing.assert_array_equal(again_N, labels_N)
    assert ray.get(actor.stats.remote())["calls"] == 1  # the restarted actor answered

    # A call in flight during the kill: the actor sleeps 3 s before solving.
    log = tmp_path / "started"
    slow = (
        remote_solver_actor_class(DelayedSolverActor)
        .options(name=unique_name("solver-slow"), namespace=NAMESPACE)
        .remote(delay_s=3.0, started_log=str(log))
    )
    assert ray.get(slow.ping.remote()) is True
    slow_pid = ray.get(slow.stats.remote())["pid"]
    other_NK = problem(11)
    ref = slow.solve.remote(other_NK, 1.0)
    assert started_pids(log, 1) == [slow_pid]  # the call is sleeping inside the actor
    ray.kill(slow, no_restart=False)
    got_N, solve_ms = ray.get(ref, timeout=60)
    np.testing.assert_array_equal(got_N, assign(other_NK, 1.0))
    assert solve_ms > 0
    stats = ray.get(slow.stats.remote())
    assert stats["pid"] != slow_pid and stats["calls"] == 1  # retried on the restarted actor
    assert started_pids(log, 2) == [slow_pid, stats["pid"]]
    ray.kill(actor, no_restart=True)
    ray.kill(slow, no_restart=True)


def test_timeout_raises_solver_timeout_error_naming_actor_timeout_and_shape(ray_session) -> None:
    name = unique_name("solver-timeout")
    slow = (
        remote_solver_actor_class(DelayedSolverActor)
        .options(name=name, namespace=NAMESPACE)
        .remote(delay_s=2.0)
    )
    assert ray_session.get(slow.ping.remote()) is True
    unary_NK = problem(12, n=50, k=4)
    started = time.perf_counter()
    with pytest.raises(SolverTimeoutError) as info:
        solve_remote(slow, unary_NK, 0.001, timeout_s=0.25)
    assert time.perf_counter() - started < 1.9  # did not wait for the answer
    message = str(info.value)
    assert name in message and "0.25 s" in message and "50 x 4 (N, K)" in message
    assert isinstance(info.value, TimeoutError)
    # The actor itself is fine: a patient call gets the optimal answer.
    labels_N, _, _ = solve_remote(slow, unary_NK, 0.001, timeout_s=60)
    best = assignment_cost(unary_NK, assign(unary_NK, 0.001), 0.001)
    assert assignment_cost(unary_NK, labels_N, 0.001) == pytest.approx(best)
    ray_session.kill(slow, no_restart=True)


def _wait_for_restart(ray, actor, first_pid: int) -> None:
    deadline = time.monotonic() + 60
    while ray.get(actor.stats.remote(), timeout=60)["pid"] == first_pid:
        assert time.monotonic() < deadline, "the killed actor was not restarted"
        time.sleep(0.05)


def _graph_tasks(actor) -> list:
    """The State API's rows (one per attempt) of Ray's `__ray_call__` tasks on `actor`: its
    compiled graphs' channel set-up, loops and cancellations."""
    from ray.util.state import list_tasks

    rows = list_tasks(
        filters=[("actor_id", "=", actor._actor_id.hex())],
        limit=10_000,
        raise_on_missing_output=False,
    )
    return [row for row in rows if row.name.endswith("__ray_call__")]


def _wait_for_graph_loop(actor, old_ids: set[str]) -> set[str]:
    """The ids of `actor`'s `__ray_call__` tasks once one not in `old_ids` is running (a
    graph's loop runs until its teardown)."""
    deadline = time.monotonic() + 120
    while True:
        rows = _graph_tasks(actor)
        if any(row.state == "RUNNING" and row.task_id not in old_ids for row in rows):
            return {row.task_id for row in rows}
        assert time.monotonic() < deadline, "no graph loop listed as running within 120 s"
        time.sleep(0.2)


def test_compiled_solve_answers_as_assign_and_falls_back_across_a_restart(ray_session) -> None:
    ray = ray_session
    actor = get_or_create_solver_actor(unique_name("solver-graph"), namespace=NAMESPACE)
    client = CompiledSolve(actor)
    client.start(96, 3, 0.001)
    assert client.ready(120)  # built and warmed up in the background
    assert ray.get(actor.stats.remote())["calls"] == 0  # the warm-up is not counted
    for seed, lam in [(20, 0.001), (21, 1.0), (22, 0.0)]:
        unary_NK = problem(seed)
        labels_N, solve_ms, round_trip_ms = client(unary_NK, lam, timeout_s=60)
        assert labels_N.dtype == np.int64
        np.testing.assert_array_equal(labels_N, assign(unary_NK, lam))
        assert 0 < solve_ms < round_trip_ms
    assert (client.compiled_calls, client.fallback_calls) == (3, 0)
    with pytest.raises(ValueError, match="NaN or inf"):  # checked before anything is sent
        client(np.array([[0.0, np.nan]]), 0.1)

    first_ids = _wait_for_graph_loop(actor, set())
    first_pid = ray.get(actor.stats.remote())["pid"]
    os.kill(first_pid, signal.SIGKILL)  # with no call in flight, as in the real-fault run
    _wait_for_restart(ray, actor, first_pid)
    unary_NK = problem(23)
    labels_N, _, _ = client(unary_NK, 0.001, timeout_s=60)  # the graph broke: ordinary call
    np.testing.assert_array_equal(labels_N, assign(unary_NK, 0.001))
    assert (client.fallback_calls, client.recoveries) == (1, 1)
    assert client.ready(120)  # the old graph torn down, a new one built
    # The restarted actor solved that problem once: the old graph's loop was not replayed on
    # it (a replayed loop reads the problem sent through the broken graph and solves it too).
    assert ray.get(actor.stats.remote())["calls"] == 1
    labels_N, _, _ = client(unary_NK, 0.001, timeout_s=60)  # a new graph on the new actor
    np.testing.assert_array_equal(labels_N, assign(unary_NK, 0.001))
    assert (client.compiled_calls, client.fallback_calls) == (4, 1)
    assert ray.get(actor.stats.remote())["calls"] == 2
    assert client.transport == "compiled"
    # Once the new graph's loop is listed, no graph task was retried: the old loop died with
    # its actor and was not replayed on the restarted one (the actor's other calls are).
    _wait_for_graph_loop(actor, first_ids)
    assert [row.attempt_number for row in _graph_tasks(actor) if row.attempt_number > 0] == []
    client.close()
    ray.kill(actor, no_restart=True)


def test_an_actor_that_ran_another_callers_graph_is_restarted_before_a_new_one(ray_session):
    """A fresh actor (ordinary calls only) is kept; one on which a graph has run is restarted
    (a new process) and then answers calls and a new graph."""
    ray = ray_session
    actor = get_or_create_solver_actor(unique_name("solver-stale"), namespace=NAMESPACE)
    solve_remote(actor, problem(30), 0.001, 60)
    pid = ray.get(actor.stats.remote())["pid"]
    assert not restart_if_another_graph_ran(actor)
    assert ray.get(actor.stats.remote())["pid"] == pid
    earlier = CompiledSolve(actor)
    earlier.start(96, 3, 0.001)
    assert earlier.ready(120)
    earlier(problem(31), 0.001, timeout_s=60)
    assert ray.get(actor.stats.remote())["graph_calls"] == 2  # the warm-up and one call
    earlier.close()
    assert restart_if_another_graph_ran(actor)
    stats = ray.get(actor.stats.remote())
    assert stats["pid"] != pid and stats["graph_calls"] == 0
    later = CompiledSolve(actor)
    later.start(96, 3, 0.001)
    assert later.ready(120)
    unary_NK = problem(32)
    labels_N, _, _ = later(unary_NK, 0.001, timeout_s=60)
    np.testing.assert_array_equal(labels_N, assign(unary_NK, 0.001))
    assert later.compiled_calls == 1
    later.close()
    ray.kill(actor, no_restart=True)


def test_compiled_solve_times_out_naming_the_shape_then_answers(ray_session) -> None:
    slow = (
        remote_solver_actor_class(DelayedSolverActor)
        .options(name=unique_name("solver-graph-slow"), namespace=NAMESPACE)
        .remote(delay_s=2.0)
    )
    assert ray_session.get(slow.ping.remote()) is True
    client = CompiledSolve(slow)
    unary_NK = problem(24, n=50, k=4)
    client.start(50, 4, 0.001)
    assert client.ready(120)
    with pytest.raises(SolverTimeoutError, match="50 x 4 \\(N, K\\)"):
        client(unary_NK, 0.001, timeout_s=0.25)
    assert client.recoveries == 0  # a slow actor is not a lost one
    labels_N, _, _ = client(unary_NK, 0.001, timeout_s=60)
    np.testing.assert_array_equal(labels_N, assign(unary_NK, 0.001))
    client.close()
    ray_session.kill(slow, no_restart=True)


def test_compiled_solve_call_in_flight_during_a_kill_is_answered(ray_session, tmp_path) -> None:
    import threading

    ray = ray_session
    log = tmp_path / "started"
    slow = (
        remote_solver_actor_class(DelayedSolverActor)
        .options(name=unique_name("solver-graph-kill"), namespace=NAMESPACE)
        .remote(delay_s=3.0, started_log=str(log))
    )
    client = CompiledSolve(slow)
    unary_NK = problem(25)
    client.start(96, 3, 1.0)
    assert client.ready(120)
    client(unary_NK, 1.0, timeout_s=60)  # compiled
    slow_pid = ray.get(slow.stats.remote())["pid"]
    got: dict[str, np.ndarray] = {}
    call = threading.Thread(target=lambda: got.setdefault("labels", client(unary_NK, 1.0, 60)[0]))
    call.start()
    # The graph's warm-up, the first call, then the call in flight, sleeping inside the actor.
    assert started_pids(log, 3) == [slow_pid] * 3
    ray.kill(slow, no_restart=False)
    call.join(timeout=90)
    np.testing.assert_array_equal(got["labels"], assign(unary_NK, 1.0))
    # Noticed by the health check, answered by an ordinary call on the restarted actor.
    assert (client.recoveries, client.fallback_calls) == (1, 1)
    restarted_pid = ray.get(slow.stats.remote())["pid"]
    assert restarted_pid != slow_pid
    # The call in flight ran again on the restarted actor (as may the new graph's warm-up).
    assert started_pids(log, 4)[:4] == [slow_pid] * 3 + [restarted_pid]
    client.close()
    ray.kill(slow, no_restart=True)
