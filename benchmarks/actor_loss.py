"""How long the solver call takes to answer when the solver actor is SIGKILLed mid-call.

For each path, `--repeats` times: a solver actor that sleeps `--delay` s before each solve
(trainer.distributed.drills.DelayedSolverActor) takes a call; `--kill-after` s later its
process is SIGKILLed; Ray restarts it, and the call is answered on the restarted actor. The
figure is the time from the kill to the answer minus the retried call's own sleep (`--delay`):
the cost of noticing the loss and recovering. Paths:

  ordinary      trainer.distributed.solver_actor.solve_remote (Ray retries the task);
  compiled      CompiledSolve with its health check (the GCS asked every 50 ms while a call
                waits): the graph is dropped, rebuilt on the restarted actor, the call sent again;
  compiled_raw  CompiledSolve with the health check off (health_check_s = 1 h): the loss
                surfaces only through the compiled graph's own failure path.

    python benchmarks/actor_loss.py [--repeats 3] [--delay 0.5] [--kill-after 0.2]

The last line is `SUMMARY ...` with the median per path.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

NAMESPACE = "benchmarks"


def one_kill(ray, path: str, delay_s: float, kill_after_s: float) -> float:
    """Seconds from the kill to the answer, minus the retried call's sleep."""
    from solver import assign
    from trainer.distributed.drills import DelayedSolverActor
    from trainer.distributed.solver_actor import (
        CompiledSolve,
        remote_solver_actor_class,
        solve_remote,
    )

    actor = (
        remote_solver_actor_class(DelayedSolverActor)
        .options(name=f"actor-loss-{uuid.uuid4().hex[:8]}", namespace=NAMESPACE)
        .remote(delay_s=delay_s)
    )
    unary_NK = 100 + 50 * np.random.default_rng(0).uniform(size=(64, 3))
    if path == "ordinary":

        def call():
            return solve_remote(actor, unary_NK, 0.001, 120.0)
    else:
        health = 0.05 if path == "compiled" else 3600.0
        client = CompiledSolve(actor, health_check_s=health)

        def call():
            return client(unary_NK, 0.001, 120.0)

    call()  # started (and compiled)
    pid = ray.get(actor.stats.remote())["pid"]
    got: dict[str, object] = {}
    caller = threading.Thread(target=lambda: got.setdefault("answer", call()))
    caller.start()
    time.sleep(kill_after_s)
    killed = time.perf_counter()
    os.kill(pid, signal.SIGKILL)
    caller.join(timeout=120)
    answered = time.perf_counter()
    labels_N = got["answer"][0]  # type: ignore[index]
    if not np.array_equal(labels_N, assign(unary_NK, 0.001)):
        raise AssertionError(f"{path}: the answer after the kill is not the optimum")
    if path != "ordinary":
        client.close()
    ray.kill(actor, no_restart=True)
    return answered - killed - delay_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--delay", type=float, default=0.5)
    parser.add_argument("--kill-after", type=float, default=0.2)
    args = parser.parse_args()
    import ray

    from launch.cluster import connect

    connect(num_cpus=os.cpu_count())
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    paths = ("ordinary", "compiled", "compiled_raw")
    seconds: dict[str, list[float]] = {path: [] for path in paths}
    for _ in range(args.repeats):
        for path in paths:  # interleaved
            seconds[path].append(one_kill(ray, path, args.delay, args.kill_after))
    print(f"load average at start: {load}; seconds from SIGKILL to the answer, minus the delay")
    for path in paths:
        print(f"{path:<13}" + " ".join(f"{s:7.3f}" for s in seconds[path]))
    medians = {path: statistics.median(v) for path, v in seconds.items()}
    print(
        "SUMMARY actor_loss "
        + " ".join(f"{path}_s={medians[path]:.3f}" for path in paths)
        + f" compiled/ordinary={medians['compiled'] / medians['ordinary']:.2f}"
    )


if __name__ == "__main__":
    main()
