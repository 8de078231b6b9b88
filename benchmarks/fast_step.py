"""Fixed per-step cost of the distributed system, in a regime where the step itself is short.

The same runs as benchmarks/overhead.py (discrete stage on from the first step; (a) a plain
loop with the solver in-process, (b) Ray Train + solver actor with 1 worker, (c) with 2 workers;
(a) runs before, between and after them, and each system run is compared with the mean of the
two (a) runs around it), at a small global batch (default 2: one image per worker with 2
workers), where the step time is mostly fixed cost. Per step, in ms (medians over log
intervals, the first interval dropped as warm-up), each run's step is split into:

  data        batch indices and images to the device (perf/data_ms)
  core        the core step function without the code exchange (perf/train_step_ms minus
              solver/wait_ms and solver/gather_ms)
  to host     the (N, K) unary matrix to a host array, finiteness check (solver/to_host_ms)
  gather      the all-gather of the unary shards (solver/gather_ms)
  actor call  the solve function's round trip minus the solve inside it (in (a) a plain call)
  solve       the assignment solve itself (solver/solve_ms)
  broadcast   the labels' broadcast (solver/broadcast_ms)
  to device   the labels into a tensor on the device (solver/to_device_ms)
  glue        the rest of solver/wait_ms (the client's own Python)
  reporting   everything outside TrainLoop.step: hooks, ray.train.report, progress line
              (perf/step_ms minus perf/data_ms and perf/train_step_ms)

The system runs call the solver actor through `solver.transport` (`--transport`, default
`compiled`: a Ray Compiled Graph, the worker's default; `ordinary`: ordinary actor calls);
(b) runs once more with the other transport (a plain run after it too), so that the summary
gives the one-worker extra cost of both transports from one run (`--no-other` skips it).
Then, from inside a Ray actor (as rank 0 of a Train run is), the actor call's own cost (round
trip minus solve) of an ordinary call (trainer.distributed.solver_actor.solve_remote) and of the
compiled-graph path (trainer.distributed.solver_actor.CompiledSolve), interleaved call by call
at this benchmark's (N, K).

The parts add up to the step (with 2 workers the solver parts are rank 0's and wait / gather are
means over ranks, so `glue` takes the difference). Columns "+(b)" and "+(c)" are the system's
extra cost over (a) per part; the last line is the summary with the ratios.

    python -m benchmarks.fast_step [--steps 400] [--log-every 100] [--batch 2] [--calls 300]
        [--transport compiled|ordinary] [--no-other]
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.local_loop import local_loop
from benchmarks.overhead import make_config as overhead_config
from trainer.build import open_data

PARTS = (
    "data",
    "core",
    "to host",
    "gather",
    "actor call",
    "solve",
    "broadcast",
    "to device",
    "glue",
    "reporting",
)
SYSTEM_PARTS = ("gather", "actor call", "broadcast", "reporting")
"""Parts that exist only in the system (zero in the plain loop)."""


def make_config(args, workers: int, storage: str, transport: str):
    """benchmarks/overhead.py's config with the solver actor called through `transport`."""
    overrides = (f"solver.transport={transport}",)
    config = overhead_config(args, workers, storage, overrides)
    # Each transport trains in its own run folder: one folder is one run's config.
    return overhead_config(
        args, workers, storage, (*overrides, f"train.run_name={config.run_name}_{transport}")
    )


def fixed_cost(system: dict[str, float], base: dict[str, float]) -> float:
    """The system's fixed cost per step (ms): the parts the plain loop does not have, plus the
    solve's and the actor call's differences from the plain runs around it."""
    extra = sum(system[k] for k in SYSTEM_PARTS) + system["solve"] - base["solve"]
    return extra - base["actor call"]


def split(interval: dict[str, float]) -> dict[str, float]:
    """One interval's means -> the step split into PARTS, plus `step` (all ms per step)."""

    def get(name: str) -> float:
        return float(interval.get(f"solver/{name}") or 0.0)

    step, data, train = (interval[f"perf/{k}"] for k in ("step_ms", "data_ms", "train_step_ms"))
    wait, gather = get("wait_ms"), get("gather_ms")
    round_trip, solve = get("round_trip_ms"), get("solve_ms")
    to_host, broadcast, to_device = get("to_host_ms"), get("broadcast_ms"), get("to_device_ms")
    return {
        "step": step,
        "data": data,
        "core": train - wait - gather,
        "to host": to_host,
        "gather": gather,
        "actor call": round_trip - solve,
        "solve": solve,
        "broadcast": broadcast,
        "to device": to_device,
        "glue": wait - to_host - round_trip - broadcast - to_device,
        "reporting": step - data - train,
    }


def medians(intervals: list[dict[str, float]]) -> dict[str, float]:
    """Per part, the median over intervals, the first (warm-up) dropped."""
    rows = [split(interval) for interval in intervals[1:]]
    return {key: statistics.median(row[key] for row in rows) for key in rows[0]}


def plain_loop(config, threads: int) -> dict[str, float]:
    """The worker's step pipeline (trainer.loop.TrainLoop) in this process, solver in-process."""
    torch.set_num_threads(threads)
    loop, client = local_loop(config, torch.device("cpu"))
    train = config.train
    intervals, sums = [], {"perf/data_ms": 0.0, "perf/train_step_ms": 0.0}
    started = time.perf_counter()
    for step in range(train.num_steps):
        metrics = loop.step(step)
        for key in sums:
            sums[key] += metrics[key]
        if (step + 1) % train.log_every == 0:
            now = time.perf_counter()
            interval = {key: value / train.log_every for key, value in sums.items()}
            interval.update(client.timings.summary())
            interval["perf/step_ms"] = 1000.0 * (now - started) / train.log_every
            client.timings.clear()
            intervals.append(interval)
            sums = dict.fromkeys(sums, 0.0)
            started = now
    return medians(intervals)


def system_run(config) -> dict[str, float]:
    from trainer.distributed.worker import fit
    from trainer.observe.run_log import read_metrics

    result = fit(config)
    if result.error is not None:
        raise result.error
    rows = read_metrics(Path(config.train.storage_path) / config.run_name).to_pylist()
    return medians(rows)


def call_path(n: int, k: int, lam: float, calls: int) -> dict[str, float]:
    """Median actor-call cost (round trip minus solve, ms) of the ordinary and the compiled
    path, measured from inside an actor, alternating call by call."""
    import ray

    from trainer.distributed.solver_actor import (
        CompiledSolve,
        get_or_create_solver_actor,
        solve_remote,
    )

    @ray.remote(num_cpus=0)
    class Caller:
        def compare(self, actor, n: int, k: int, lam: float, calls: int) -> dict[str, float]:
            rng = np.random.default_rng(0)
            compiled = CompiledSolve(actor)
            # The graph is built before the measured calls: calls made while it builds are
            # answered by ordinary calls and would be counted as compiled ones.
            compiled.start(n, k, lam)
            if not compiled.ready(timeout_s=120.0):
                raise RuntimeError(f"the compiled graph was not built: {compiled.transport}")
            paths = {"ordinary": functools.partial(solve_remote, actor), "compiled": compiled}
            costs: dict[str, list[float]] = {name: [] for name in paths}
            fallbacks_before = compiled.fallback_calls
            for i in range(calls + 20):  # the first 20 calls warm up
                unary_NK = 100.0 + 50.0 * rng.uniform(size=(n, k))
                for name, call in paths.items():
                    _, solve_ms, round_trip_ms = call(unary_NK, lam)
                    if i >= 20:
                        costs[name].append(round_trip_ms - solve_ms)
            out = {name: statistics.median(v) for name, v in costs.items()}
            out["fallback_calls"] = float(compiled.fallback_calls - fallbacks_before)
            compiled.close()
            return out

    actor = get_or_create_solver_actor(f"fast-step-calls-{os.getpid()}", namespace="benchmarks")
    try:
        return ray.get(Caller.remote().compare.remote(actor, n, k, lam, calls))
    finally:
        ray.kill(actor, no_restart=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--calls", type=int, default=300, help="calls per path (call costs)")
    parser.add_argument("--transport", choices=("compiled", "ordinary"), default="compiled")
    parser.add_argument("--no-other", action="store_true", help="skip (b) with the other transport")
    args = parser.parse_args()
    other = "ordinary" if args.transport == "compiled" else "compiled"

    from launch.cluster import connect
    from trainer.runtime import keep_freed_memory

    keep_freed_memory()  # as the Train workers do, so (a) and (b) allocate alike
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    with tempfile.TemporaryDirectory() as storage:
        connect(num_cpus=os.cpu_count())
        one = make_config(args, 1, storage, args.transport)
        open_data(one, progress=True)
        threads = int(one.train.cpus_per_worker)  # as one Ray worker with 1 CPU
        plain = [plain_loop(one, threads)]
        b = system_run(one)
        plain.append(plain_loop(one, threads))
        c = system_run(make_config(args, 2, storage, args.transport))
        plain.append(plain_loop(one, threads))
        if not args.no_other:  # (b) again with the other transport, between two plain runs
            b_other = system_run(make_config(args, 1, storage, other))
            plain.append(plain_loop(one, threads))
        calls = call_path(args.batch, one.model.num_categories, one.solver.lam, args.calls)
    base_b = {key: (plain[0][key] + plain[1][key]) / 2 for key in plain[0]}
    base_c = {key: (plain[1][key] + plain[2][key]) / 2 for key in plain[0]}
    a = {key: (plain[0][key] + plain[1][key] + plain[2][key]) / 3 for key in plain[0]}
    base_other = {key: (plain[-2][key] + plain[-1][key]) / 2 for key in plain[0]}

    print(
        f"\nsteps {args.steps}, global batch {args.batch}, discrete stage on, "
        f"{args.log_every}-step intervals (first dropped); load average at start {load} "
        f"({os.cpu_count()} CPUs); ms per step"
    )
    print(f"{'part':<12}{'(a) plain':>10}{'(b) 1 w':>10}{'+(b)':>9}{'(c) 2 w':>10}{'+(c)':>9}")
    for key in (*PARTS, "step"):
        print(
            f"{key:<12}{a[key]:>10.3f}{b[key]:>10.3f}{b[key] - base_b[key]:>+9.3f}"
            f"{c[key]:>10.3f}{c[key] - base_c[key]:>+9.3f}"
        )
    print(
        "(a): mean of the three plain runs; +(b), +(c): the system's extra over the mean of the "
        "two (a) runs around it.\nfixed system cost: the parts the plain loop does not have "
        f"({', '.join(SYSTEM_PARTS)}) plus the solve and the actor call's difference."
    )
    fixed_b = fixed_cost(b, base_b)
    fixed_c = fixed_cost(c, base_c)
    print(
        f"actor call from an actor at N={args.batch}, median of {args.calls}: ordinary "
        f"{calls['ordinary']:.3f} ms, compiled graph {calls['compiled']:.3f} ms "
        f"({calls['fallback_calls']:.0f} of the measured compiled calls fell back to ordinary ones)"
    )
    other_part = ""
    if not args.no_other:
        fixed_other = fixed_cost(b_other, base_other)
        print(
            f"(b) with transport={other}: step {b_other['step']:.3f} ms, actor call "
            f"{b_other['actor call']:.3f} ms, fixed system cost {fixed_other:.2f} ms "
            f"(b/a = {b_other['step'] / base_other['step']:.3f})"
        )
        other_part = (
            f"fixed_b_{other}_ms={fixed_other:.2f} "
            f"b_{other}/a={b_other['step'] / base_other['step']:.3f} "
        )
    print(
        f"SUMMARY fast_step transport={args.transport} batch={args.batch} "
        f"plain_ms={a['step']:.2f} "
        f"b/a={b['step'] / base_b['step']:.3f} c/a={c['step'] / base_c['step']:.3f} "
        f"fixed_b_ms={fixed_b:.2f} fixed_c_ms={fixed_c:.2f} "
        f"core_b/a={b['core'] / base_b['core']:.3f} core_c/a={c['core'] / base_c['core']:.3f} "
        + other_part
        + f"call_ordinary_ms={calls['ordinary']:.3f} call_compiled_ms={calls['compiled']:.3f} "
        "(targets: fixed_b <= 1.5 ms, b/a <= 1.10, core_b/a <= 1.05)"
    )


if __name__ == "__main__":
    main()
