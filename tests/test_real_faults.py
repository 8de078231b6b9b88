"""Real faults in real runs: a killed solver actor process, then a killed or stopped Train
worker process, and Ctrl-C of the driver. Each run is the debug config with 2 workers and a
checkpoint every 10 steps. In the two fault runs rank 0 holds before step 25 and before step 35
(`train.hold_at_step`): at the first hold the test kills the solver actor (steps 20-24 were
solved; step 25 is in the discrete stage, from step 20), at the second, once the checkpoint of
step 30 is registered, it kills or stops a worker. Every faulty run must end with the
parameters of the same run without a fault.

Times to recover are printed (`pytest -s` shows them), never asserted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from launch.cluster import API_SERVER_VAR
from trainer.checkpoint import read_checkpoint
from trainer.config import load_config
from trainer.distributed.drills import held_marker, release_file
from trainer.observe.run_log import read_attempts, read_metrics

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parent.parent
DEBUG = ROOT / "configs" / "debug.yaml"
SOLVER_FAULT, WORKER_FAULT = 25, 35
"""The held steps: the solver actor is killed at the first, a worker at the second."""
EVERY = 10
CHECKPOINT_BEFORE = {SOLVER_FAULT: 20, WORKER_FAULT: 30}
RUN = [
    "train.num_workers=2",
    f"train.checkpoint_every={EVERY}",
    "train.max_failures=1",
    "train.collective_timeout_s=60",
]
HELD_TWICE = [f"train.hold_at_step=[{SOLVER_FAULT}, {WORKER_FAULT}]"]
WAIT_S = 180.0


def _config(name: str, overrides: list[str]):
    return load_config(DEBUG, [f"train.run_name={name}", *RUN, *overrides])


class Background:
    """`fit(config)` in a thread of this process; `join()` returns its Train result."""

    def __init__(self, config, root: Path):
        from trainer.distributed.worker import fit

        self.run_dir = root / config.run_name
        self.result = None
        self.error: BaseException | None = None

        def target():
            try:
                self.result = fit(config, storage_path=str(root))
            except BaseException as err:  # re-raised in join()
                self.error = err

        self.thread = threading.Thread(target=target, daemon=True)
        self.thread.start()

    def join(self):
        self.thread.join(WAIT_S)
        assert not self.thread.is_alive(), f"the run in {self.run_dir} did not finish"
        if self.error is not None:
            raise self.error
        assert self.result.error is None, self.result.error
        return self.result


def _wait_for(condition, what: str):
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"waited {WAIT_S:.0f} s for {what}"
        time.sleep(0.05)


def _registered_steps(run_dir: Path) -> list[int]:
    """Steps of the checkpoints Ray Train has registered (its snapshot in the run folder)."""
    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    try:
        results = json.loads(snapshot.read_text())["checkpoint_results"]
    except (OSError, ValueError, KeyError):
        return []
    return [r["metrics"]["step"] for r in results]


def _wait_until_held(run_dir: Path, step: int) -> None:
    """Rank 0 waits before `step` and the checkpoint before it is registered."""
    _wait_for(lambda: (run_dir / held_marker(step)).exists(), f"rank 0 to hold before {step}")
    _wait_for(
        lambda: CHECKPOINT_BEFORE[step] in _registered_steps(run_dir),
        f"the checkpoint of step {CHECKPOINT_BEFORE[step]} to be registered",
    )


def _release(run_dir: Path, step: int) -> None:
    (run_dir / release_file(step)).write_text("")


def _pid_of_rank(run_dir: Path, rank: int) -> int:
    return [a for a in read_attempts(run_dir) if a["rank"] == rank][-1]["pid"]


def _final_model(result) -> dict[str, torch.Tensor]:
    payload, _ = read_checkpoint(result.checkpoint.path)
    assert payload["next_step"] == 40
    return payload["model"]


def _assert_same_parameters(model: dict, reference: dict) -> None:
    assert model.keys() == reference.keys()
    for key in reference:
        torch.testing.assert_close(model[key], reference[key], rtol=1e-5, atol=1e-6)


def _restart_after(run_dir: Path, fault_time: float) -> dict:
    """The first worker start after `fault_time`; prints how long the group took to come back."""
    later = [a for a in read_attempts(run_dir) if a["time"] > fault_time and a["rank"] == 0]
    assert later, "no worker started again after the fault"
    seconds = later[0]["time"] - fault_time
    print(f"\n{run_dir.name}: rank 0 restarted {seconds:.1f} s after the fault")
    return later[0]


@pytest.fixture(scope="module")
def reference(two_workers_run):
    """Final parameters of the run without a fault: the debug config with 2 workers (its
    checkpoint cadence and recorded codes do not change the training)."""
    _, result, _ = two_workers_run
    return _final_model(result)


def _kill_the_solver_actor_at_the_first_hold(run: Background, config) -> None:
    """At step 25: SIGKILL the solver actor's process; Ray restarts it and the call of step 25
    is answered by the new process, without a worker-group restart (checked at step 35)."""
    import ray

    from trainer.distributed.worker import SOLVER_NAMESPACE

    _wait_until_held(run.run_dir, SOLVER_FAULT)
    name = f"{config.solver.actor_name}-{config.run_name}-{os.getpid()}"
    actor = ray.get_actor(name, namespace=SOLVER_NAMESPACE)
    stats = ray.get(actor.stats.remote())
    assert stats["calls"] == SOLVER_FAULT - 20  # steps 20-24 were solved by this process
    os.kill(stats["pid"], signal.SIGKILL)
    _release(run.run_dir, SOLVER_FAULT)
    _wait_until_held(run.run_dir, WORKER_FAULT)
    ranks = [a["rank"] for a in read_attempts(run.run_dir)]
    assert sorted(ranks) == [0, 1], f"the solver actor's restart restarted the workers: {ranks}"


def test_a_sigkilled_solver_actor_then_a_sigkilled_worker(reference, tmp_path):
    """The ordinary transport (the CPU default): the killed actor is restarted beside the
    running group; the killed worker restarts the group from the last checkpoint, redoing at
    most one checkpoint interval."""
    config = _config("killed", [*HELD_TWICE, "solver.transport=ordinary"])
    run = Background(config, tmp_path)
    _kill_the_solver_actor_at_the_first_hold(run, config)
    killed_at = time.time()
    os.kill(_pid_of_rank(run.run_dir, 1), signal.SIGKILL)
    _release(run.run_dir, WORKER_FAULT)
    result = run.join()

    restart = _restart_after(run.run_dir, killed_at)
    assert restart["start_step"] == CHECKPOINT_BEFORE[WORKER_FAULT]
    assert WORKER_FAULT - restart["start_step"] <= EVERY  # steps redone
    _assert_same_parameters(_final_model(result), reference)
    assert [r["step"] for r in read_metrics(run.run_dir).to_pylist()] == [10, 20, 30, 40]


def test_a_sigkilled_solver_actor_then_a_stopped_worker(reference, tmp_path):
    """The compiled transport: the graph call in flight when the actor dies is answered by the
    restarted actor. Then, with the default `train.stall_timeout_s`, SIGSTOP freezes a worker,
    which answers neither the collectives nor Ray Train's health checks; the group restarts
    after the stall timeout. The solver actor outlives the worker group: the new rank 0 restarts
    it when the old group's graph ran on it (`restart_if_another_graph_ran`)."""
    config = _config("stopped", [*HELD_TWICE, "solver.transport=compiled"])
    run = Background(config, tmp_path)
    _kill_the_solver_actor_at_the_first_hold(run, config)
    pid = _pid_of_rank(run.run_dir, 1)
    stopped_at = time.time()
    os.kill(pid, signal.SIGSTOP)
    try:
        _release(run.run_dir, WORKER_FAULT)
        result = run.join()
    finally:
        for sig in (signal.SIGKILL, signal.SIGCONT):  # never leave a stopped process behind
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
    restart = _restart_after(run.run_dir, stopped_at)
    assert restart["start_step"] == CHECKPOINT_BEFORE[WORKER_FAULT]
    assert restart["time"] - stopped_at >= config.train.stall_timeout_s
    _assert_same_parameters(_final_model(result), reference)


def test_ctrl_c_exits_130_and_the_same_command_resumes(reference, tmp_path, spawn):
    """The driver is `python -m launch.train` with a local Ray of its own, started while the
    test session's cluster is up: it must also stay quiet about the other Ray instance. (A
    resume with more steps is test_train_e2e.py's corrupt-checkpoint test.)"""
    storage = tmp_path / "runs"
    command = [
        sys.executable, "-m", "launch.train", "--config", str(DEBUG),
        "--set", f"train.storage_path={storage}", "--set", "train.run_name=interrupted",
        *(arg for item in [*RUN, f"train.hold_at_step={SOLVER_FAULT}"] for arg in ("--set", item)),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", API_SERVER_VAR)}
    run_dir = storage / "interrupted"
    driver = spawn(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    _wait_until_held(run_dir, SOLVER_FAULT)
    driver.send_signal(signal.SIGINT)
    first, _ = driver.communicate(timeout=WAIT_S)
    assert driver.returncode == 130, first[-3000:]
    assert f"last checkpoint: step {CHECKPOINT_BEFORE[SOLVER_FAULT]}" in first, first[-3000:]

    again = spawn(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    second, _ = again.communicate(timeout=WAIT_S)
    assert again.returncode == 0, second[-3000:]
    assert "final step    : 40" in second
    starts = [a["start_step"] for a in read_attempts(run_dir) if a["rank"] == 0]
    assert starts == [0, CHECKPOINT_BEFORE[SOLVER_FAULT]]
    for output in (first, second):
        assert "multiple active Ray instances" not in output, output[-3000:]
    folders = sorted(p for p in run_dir.glob("checkpoint_*") if p.is_dir())
    payload, _ = read_checkpoint(folders[-1])
    assert payload["next_step"] == 40
    _assert_same_parameters(payload["model"], reference)
