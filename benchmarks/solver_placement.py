"""Solver round trip by placement: the caller (rank 0) on a worker node, the solver actor on
the head (`solver.placement: head`) or on the caller's node (`rank0`).

Starts a local cluster of two nodes (a head and node w1, separate `ray start` processes, as
tests/test_multinode.py does), one solver actor on each node, and a task on w1 that calls
each actor in turn with the paper's problem size (64 x 3) and prints the median round trip
of each and their ratio. Both nodes are on this machine, so "across nodes" here crosses the
loopback interface and two raylets, not a network: on separate machines add the network's
round trip (about 0.1-0.5 ms within a data centre).

    .venv/bin/python benchmarks/solver_placement.py [--calls 300]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).parent.parent
sys.path.insert(0, str(ROOT / "tests"))

DRIVER = """
import json, os, statistics, sys, time
import numpy as np
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from trainer.distributed.solver_actor import get_or_create_solver_actor, solve_remote

calls = int(sys.argv[1])
ray.init(address=os.environ["RAY_ADDRESS"])
node = {k: n["NodeID"] for n in ray.nodes() if n["Alive"] for k in n["Resources"]
        if k in ("node_head", "node_w1")}
actors = {where: get_or_create_solver_actor(f"bench-{where}", "bench", node[f"node_{where}"])
          for where in ("head", "w1")}

@ray.remote(num_cpus=0)
def caller(actors, calls):
    unary_NK = np.random.default_rng(0).normal(size=(64, 3))
    times = {where: [] for where in actors}
    for where, actor in actors.items():  # warm-up: the solver of this shape is built
        solve_remote(actor, unary_NK, 0.001)
    for _ in range(calls):
        for where, actor in actors.items():
            _, solve_ms, round_trip_ms = solve_remote(actor, unary_NK, 0.001)
            times[where].append((round_trip_ms, solve_ms))
    return {
        where: {
            "round_trip_ms": statistics.median(t for t, _ in values),
            "solve_ms": statistics.median(s for _, s in values),
        }
        for where, values in times.items()
    }

on_w1 = NodeAffinitySchedulingStrategy(node["node_w1"], soft=False)
print(json.dumps(ray.get(caller.options(scheduling_strategy=on_w1).remote(actors, calls))))
"""


def main() -> None:
    from ray_nodes import LocalCluster

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    cluster = LocalCluster(Path(tempfile.mkdtemp(prefix="solver-placement-")))
    try:
        cluster.start_head(cpus=2)
        cluster.add_node("w1", cpus=2)
        env = {**cluster.env, "RAY_ADDRESS": cluster.gcs_address}
        done = subprocess.run(
            [sys.executable, "-c", DRIVER, str(args.calls)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        if done.returncode != 0:
            raise SystemExit(done.stdout[-3000:] + done.stderr[-3000:])
        result = json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        left = cluster.stop()
    head, near = result["head"], result["w1"]
    print(f"caller on w1, {args.calls} calls of a 64 x 3 problem each (medians):")
    print(
        f"  actor on the head (other node): {head['round_trip_ms']:.2f} ms round trip, "
        f"{head['solve_ms']:.2f} ms solve"
    )
    print(
        f"  actor on w1 (caller's node)   : {near['round_trip_ms']:.2f} ms round trip, "
        f"{near['solve_ms']:.2f} ms solve"
    )
    print(f"  ratio other node / same node  : {head['round_trip_ms'] / near['round_trip_ms']:.2f}")
    if left:
        print(f"warning: processes left running: {left}")


if __name__ == "__main__":
    main()
