"""Several Ray nodes on one machine: a head and worker nodes, each a separate `ray start` with
its own ports, process group, temp folder and data cache folder, and a custom resource naming
it (`node_head`, `node_w1`, ...). One cluster is shared by the tests of this module; its
teardown stops every node's process group.

Runs are submitted with `ray job submit`, as on a real cluster and as the README shows it;
where each process ran is read from Ray's State API (`ray list actors / nodes`), and each run's
final parameters are compared with the single-node 2-worker run of the test session
(`two_workers_run`).

Ray's node health checks are shortened for these nodes (HEALTH_CHECK below: a probe a second,
dead after 3 failed in a row) instead of Ray's defaults (every 3 s, 5 failures, about 15 s).
Times to recover are printed (`pytest -s`), never asserted.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import yaml
from ray_nodes import LocalCluster

from trainer.checkpoint import read_checkpoint
from trainer.distributed.drills import held_marker, release_file
from trainer.observe.run_log import read_attempts, read_metrics

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parent.parent
RAY = Path(sys.executable).parent / "ray"
DEBUG = ROOT / "configs" / "debug.yaml"
HEALTH_CHECK = {
    # Read by the GCS: it probes every raylet each period and marks a node dead after
    # `failure_threshold` probes in a row fail. A killed raylet refuses the probe at once; a
    # live one on a loaded machine may answer late, so the timeout stays long (with 1 s, a
    # head on a machine with a load average of 150 was declared dead).
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "10000",
    "RAY_health_check_failure_threshold": "3",
}
JOB_TIMEOUT_S = 400
WAIT_S = 400.0  # a job reaches step 25 in about 2 min on a 2-core machine under load


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head (2 CPUs, the Tune trial drivers' resource) and node w1 (2 CPUs)."""
    nodes = LocalCluster(tmp_path_factory.mktemp("multinode"), extra_env=HEALTH_CHECK)
    try:
        nodes.start_head(cpus=2, resources={"trial_driver": 100})
        nodes.add_node("w1", cpus=2)
        yield nodes
    finally:
        left = nodes.stop()
        assert not left, f"Ray processes left running: {left}"


def _submit(cluster: LocalCluster, module: str, args: list[str], **popen) -> subprocess.Popen:
    command = [
        str(RAY), "job", "submit", f"--address={cluster.dashboard_url}", "--working-dir=.",
        "--", sys.executable, "-m", module, *args,
    ]  # fmt: skip
    return subprocess.Popen(
        command,
        cwd=ROOT,
        env=cluster.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **popen,
    )


def _finish(job: subprocess.Popen) -> str:
    try:
        output, _ = job.communicate(timeout=JOB_TIMEOUT_S)
    finally:
        if job.poll() is None:
            job.kill()
            job.communicate()
    assert job.returncode == 0, output[-5000:]
    return output


def _train_args(storage: Path, name: str, overrides: list[str]) -> list[str]:
    items = [f"train.storage_path={storage}", f"train.run_name={name}", *overrides]
    return ["--config", str(DEBUG), *(arg for item in items for arg in ("--set", item))]


def _worker_nodes(cluster: LocalCluster, run_dir: Path) -> list[tuple[int, float, str]]:
    """(rank, start time, node name) of every worker start of the run, from its attempts and
    the State API's record of the Train worker actors (matched by process id)."""
    names = cluster.node_names()
    node_of_pid = {
        a["pid"]: names[a["node_id"]]
        for a in cluster.state("actors", "class_name=RayTrainWorker")
        if a.get("pid")
    }
    return [(a["rank"], a["time"], node_of_pid[a["pid"]]) for a in read_attempts(run_dir)]


def _solver_nodes(cluster: LocalCluster, run_name: str) -> list[str]:
    names = cluster.node_names()
    actors = cluster.state("actors", "class_name=SolverActor")
    return [names[a["node_id"]] for a in actors if f"-{run_name}-" in (a.get("name") or "")]


def _final_model(run_dir: Path) -> dict[str, torch.Tensor]:
    folders = sorted(p for p in run_dir.glob("checkpoint_*") if (p / "state.pt").is_file())
    payload, _ = read_checkpoint(folders[-1])
    assert payload["next_step"] == 40
    return payload["model"]


def _assert_same_parameters(model: dict, reference: dict) -> None:
    assert model.keys() == reference.keys()
    for key in reference:
        torch.testing.assert_close(model[key], reference[key], rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def reference(two_workers_run):
    """Final parameters of the single-node debug run with 2 workers."""
    _, result, _ = two_workers_run
    payload, _ = read_checkpoint(result.checkpoint.path)
    return payload["model"]


def test_the_debug_asha_sweep_runs_on_both_nodes_beside_another_ray(cluster, tmp_path):
    """The shipped debug sweep (ASHA) with two of its three grid points, submitted to the
    two-node cluster while the test session's own cluster is up on the machine. Both trials at
    once, each one worker of 2 CPUs: a node holds one such worker, so they run on different
    nodes; their
    drivers hold the head's `trial_driver` resource. With `solver.placement: rank0` each
    trial's solver actor runs beside its worker (with the default, all would be on the head).
    Every trial finishes (ASHA may stop some early) with a row, its TensorBoard events and,
    when completed, its checkpoint; every placement group the sweep made is removed (Ray's
    placement-group cleaner, through the State API); no Ray log complains about the other
    instance."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from trainer.config import load_config

    raw = yaml.safe_load((ROOT / "configs" / "sweeps" / "debug.yaml").read_text())
    raw["base"] = str(DEBUG)
    raw["storage_path"] = str(tmp_path / "sweeps")
    raw["set"].update(
        {"train.num_workers": 1, "train.cpus_per_worker": 2, "solver.placement": "rank0"}
    )
    raw["search"]["max_concurrent_trials"] = 2
    raw["search"]["space"]["beta_h"]["grid"] = [4, 20]  # one wave of trials, not two
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump(raw))
    output = _finish(_submit(cluster, "launch.tune", ["--config", str(sweep)]))
    experiment = tmp_path / "sweeps" / "debug_sweep"
    assert "2 trial(s), 0 failed" in output, output[-3000:]
    assert "=== sweep 'debug_sweep' finished" in output and "best loss/recon" in output

    rows = pq.read_table(experiment / "results.parquet").to_pylist()
    assert sorted(r["param/beta_h"] for r in rows) == [4, 20]
    assert {r["status"] for r in rows} <= {"COMPLETED", "STOPPED_EARLY"}
    best = [r["best/loss/recon"] for r in rows]
    assert best == sorted(best)  # sorted by the metric (mode min)
    nodes = {}
    for row in rows:
        assert "beta_h=" in row["trial"]  # trial names show their hyperparameters
        run_dir = Path(row["trial_dir"]) / "train"
        assert run_dir.is_relative_to(experiment)
        placed = _worker_nodes(cluster, run_dir)
        assert len(placed) == 1
        nodes[row["trial"]] = placed[0][2]
        events = EventAccumulator(row["tensorboard_dir"])
        events.Reload()
        assert {"loss/recon", "kl/z0", "beta/z5"} <= set(events.Tags()["scalars"])
        if row["status"] == "COMPLETED":
            assert Path(row["checkpoint_path"], "state.pt").is_file()
    print(f"\ndebug_sweep: trials on {nodes}")
    assert set(nodes.values()) == {"head", "w1"}
    assert set(_solver_nodes(cluster, "train")) == {"head", "w1"}  # the trials' run name
    best_config = load_config(experiment / "best_config.yaml")
    assert best_config.cascade.beta_high == rows[0]["param/beta_h"]

    deadline = time.monotonic() + 120
    while True:
        groups = cluster.state("placement-groups")
        if all(g["state"] == "REMOVED" for g in groups) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert groups and all(g["state"] == "REMOVED" for g in groups), groups
    # Ray's job supervisor finds the address it gives the job's driver by looking for GCS
    # processes on its machine when several Ray instances are up, and takes the latest started
    # (saying "Found multiple active Ray instances"): this cluster's head, started after the
    # session's cluster. Every other process of the job must not have had to look.
    supervisor = ""
    for log in cluster.ray_temp.glob("*/session_*/logs/*"):
        if not log.is_file():
            continue
        text = log.read_text(errors="replace")
        if ":actor_name:JobSupervisor" in text:
            supervisor += text
        else:
            assert "Found multiple active Ray instances" not in text, log
    submitted = rf"Submitting job with RAY_ADDRESS = [\d.]+:{cluster.gcs_port}\b"
    assert re.search(submitted, supervisor), supervisor[-3000:]


def test_job_submit_trains_the_debug_config_as_the_readme_shows(cluster, tmp_path):
    """`ray job submit --address <dashboard> --working-dir . -- python -m launch.train ...`, as
    the README shows it, to this cluster (token authentication on) while the test session's
    cluster is also up on the machine."""
    storage = tmp_path / "runs"
    submit = [
        str(RAY), "job", "submit", "--address", cluster.dashboard_url, "--working-dir", ".",
        "--", sys.executable, "-m", "launch.train", "--config", "configs/debug.yaml",
        "--set", f"train.storage_path={storage}",
    ]  # fmt: skip
    done = subprocess.run(
        submit, cwd=ROOT, env=cluster.env, capture_output=True, text=True, timeout=JOB_TIMEOUT_S
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert "succeeded" in output, output[-4000:]
    assert "=== CascadeVAE run 'debug' finished" in output
    # The test session's cluster is up as well: every job process was given its address.
    assert "multiple active Ray instances" not in output, output[-4000:]
    # Rank 0's progress lines reach the job's output, each exactly once.
    steps = re.findall(r"\[cascadevae\] step (\d+)/", output)
    assert steps, output[-4000:]
    assert len(steps) == len(set(steps)), steps
    run_dir = storage / "debug"
    assert read_metrics(run_dir).num_rows > 0
    assert (run_dir / "config.yaml").is_file()
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    assert list(run_dir.glob("checkpoint_*/state.pt"))


def _registered_steps(run_dir: Path) -> list[int]:
    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    try:
        results = json.loads(snapshot.read_text())["checkpoint_results"]
    except (OSError, ValueError, KeyError):
        return []
    return [r["metrics"]["step"] for r in results]


def _wait_for(condition, what: str, job: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if job is not None and job.poll() is not None:
            pytest.fail(f"the job ended while waiting for {what}:\n{job.stdout.read()[-4000:]}")
        assert time.monotonic() < deadline, f"waited {WAIT_S:.0f} s for {what}"
        time.sleep(0.1)


def test_a_lost_worker_node_restarts_the_group_from_the_last_checkpoint(
    cluster, reference, tmp_path
):
    """Two workers, one on each node, train as on one node: the unary shards are gathered
    and the codes sent across the nodes, and every node builds the data cache in its own
    folder. Rank 0 holds before step 25 (discrete stage from step 20) once the checkpoint of
    step 20 is registered; then the raylet of the worker node is SIGKILLed: the node and its
    worker are lost. The group restarts from step 20 on what is left (the head's 2 CPUs), and
    the run ends with the parameters of the single-node run."""
    storage = tmp_path / "runs"
    overrides = [
        "train.num_workers=2", "train.placement_strategy=SPREAD", "train.checkpoint_every=10",
        "train.max_failures=1", "train.collective_timeout_s=60", "train.hold_at_step=25",
    ]  # fmt: skip
    run_dir = storage / "node_lost"
    job = _submit(cluster, "launch.train", _train_args(storage, "node_lost", overrides))
    try:
        _wait_for(lambda: (run_dir / held_marker(25)).exists(), "rank 0 to hold", job)
        _wait_for(lambda: 20 in _registered_steps(run_dir), "the checkpoint of step 20", job)
        before = _worker_nodes(cluster, run_dir)
        assert sorted(node for _, _, node in before) == ["head", "w1"], before
        for name in ("head", "w1"):  # CASCADEVAE_CACHE of each node
            assert len(list(cluster.cache_dir(name).glob("dsprites-*.arrow"))) == 1, name
        killed_at = cluster.kill_node("w1")
        cluster.wait_for_node("w1", alive=False)
        dead_after = cluster.death_time("w1") - killed_at
        (run_dir / release_file(25)).write_text("")
        output = _finish(job)
    finally:
        if job.poll() is None:
            job.kill()
    assert "=== CascadeVAE run 'node_lost' finished" in output, output[-3000:]

    after = [(rank, t, node) for rank, t, node in _worker_nodes(cluster, run_dir) if t > killed_at]
    assert sorted(rank for rank, _, _ in after) == [0, 1], after
    assert {node for _, _, node in after} == {"head"}
    assert _solver_nodes(cluster, "node_lost") == ["head"]  # solver.placement: head
    restart_s = min(t for _, t, _ in after) - killed_at
    starts = [a["start_step"] for a in read_attempts(run_dir) if a["time"] > killed_at]
    assert starts == [20, 20]
    print(
        f"\nnode_lost: workers on {sorted(before)}; w1 marked dead {dead_after:.1f} s after its "
        f"raylet was killed; the group restarted on the head {restart_s:.1f} s after the kill"
    )
    _assert_same_parameters(_final_model(run_dir), reference)
    assert [r["step"] for r in read_metrics(run_dir).to_pylist()] == [10, 20, 30, 40]


SOLVER_ON_NODE = """
import json, os, sys, time
from pathlib import Path
import numpy as np
import ray
from trainer.distributed.solver_actor import remote_solver_actor_class, solve_remote
folder, timeout_s = Path(sys.argv[1]), float(sys.argv[2])
ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
# On a node offering `node_w2` (a node type); restarted without limit, calls retried.
actor = remote_solver_actor_class().options(
    name="solver-node-loss", namespace="cascadevae-tests", num_cpus=0,
    resources={"node_w2": 0.001}, max_restarts=-1, max_task_retries=-1,
).remote()
unary_NK = np.random.default_rng(0).normal(size=(16, 3))
first, _, _ = solve_remote(actor, unary_NK, 0.001, timeout_s)
pid = ray.get(actor.stats.remote())["pid"]
node = ray.get_runtime_context().get_node_id()
print(json.dumps({"pid": pid, "driver_node": node}), flush=True)
(folder / "ready").write_text("")
while not (folder / "killed").exists():
    time.sleep(0.05)
started = time.monotonic()
second, _, _ = solve_remote(actor, unary_NK, 0.001, timeout_s)
answered_at, seconds = time.time(), time.monotonic() - started
stats = ray.get(actor.stats.remote())
same = bool((first == second).all())
print(json.dumps({"pid": stats["pid"], "same": same, "s": seconds, "at": answered_at}), flush=True)
# The actor belongs to this driver and ends with it: the test reads its state first.
(folder / "answered").write_text("")
while not (folder / "finish").exists():
    time.sleep(0.05)
"""


def test_a_solver_actor_on_a_lost_node_comes_back_on_its_replacement(cluster, tmp_path):
    """A solver actor on node w2 answers again after w2 is lost and a replacement w2 (the
    same node type: the same custom resource) joins: Ray restarts the actor there and retries
    the call that was waiting for it. The driver runs on the head (Ray connects a driver to
    the head when several nodes share its address)."""
    cluster.add_node("w2", cpus=1)
    env = {**cluster.env, "RAY_ADDRESS": cluster.gcs_address}
    driver = subprocess.Popen(
        [sys.executable, "-c", SOLVER_ON_NODE, str(tmp_path), str(WAIT_S)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait_for(lambda: (tmp_path / "ready").exists(), "the solver actor on w2", driver)
        [before] = cluster.state("actors", "name=solver-node-loss")
        first_node = before["node_id"]
        assert cluster.node_names()[first_node] == "w2"
        killed_at = cluster.kill_node("w2")
        cluster.wait_for_node("w2", alive=False)
        dead_s = cluster.death_time("w2") - killed_at
        (tmp_path / "killed").write_text("")  # the driver's next call waits for the actor
        cluster.add_node("w2", cpus=1)
        _wait_for(lambda: (tmp_path / "answered").exists(), "the call after the loss", driver)
        alive = [
            a for a in cluster.state("actors", "name=solver-node-loss") if a["state"] == "ALIVE"
        ]
        (tmp_path / "finish").write_text("")
        output, _ = driver.communicate(timeout=WAIT_S)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.communicate()
    assert driver.returncode == 0, output[-4000:]
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert len(lines) == 2, output[-4000:]
    assert lines[0]["pid"] != lines[1]["pid"] and lines[1]["same"], lines
    names = cluster.node_names()
    assert names[lines[0]["driver_node"]] == "head"
    [after] = alive
    assert after["actor_id"] == before["actor_id"]
    assert after["node_id"] != first_node and names[after["node_id"]] == "w2"
    answered_s = lines[1]["at"] - killed_at
    print(
        f"\nsolver actor: w2 marked dead {dead_s:.1f} s after its raylet was killed; the "
        f"call made after that answered {lines[1]['s']:.1f} s later ({answered_s:.1f} s after "
        "the kill), from the actor restarted on the replacement node"
    )
