"""launch.cluster without starting Ray: what every process of a job is told; and the hold
drill, which needs no cluster."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from launch.cluster import API_SERVER_VAR, JOB_ENV, cluster_env, free_port
from trainer.config import ConfigError
from trainer.distributed.drills import HoldDrill, held_marker, release_file

DEBUG = Path(__file__).resolve().parents[1] / "configs" / "debug.yaml"


def test_a_cluster_address_and_a_dashboard_url_reach_the_job_env(monkeypatch):
    for key in JOB_ENV:
        monkeypatch.delenv(key, raising=False)
    assert cluster_env() == JOB_ENV
    assert cluster_env(address="10.0.0.1:6379")["RAY_ADDRESS"] == "10.0.0.1:6379"
    url = "http://127.0.0.1:8300"
    assert cluster_env(dashboard_url=url)[API_SERVER_VAR] == url
    assert "RAY_ADDRESS" not in cluster_env(dashboard_url=url)


def test_the_users_own_values_win_over_the_defaults(monkeypatch):
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "2")
    assert cluster_env()["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "2"
    assert cluster_env()["TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S"] == os.environ.get(
        "TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S", JOB_ENV["TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S"]
    )


def test_free_port_is_bindable():
    import socket

    port = free_port()
    with socket.socket() as again:
        again.bind(("127.0.0.1", port))


def test_the_hold_drill_holds_rank_0_once_at_each_step_until_released(tmp_path):
    HoldDrill([5, 7], tmp_path, rank=1).before_step(5)  # other ranks never hold
    drill = HoldDrill([5, 7], tmp_path, rank=0)
    drill.before_step(4)
    assert not list(tmp_path.iterdir())
    for step in (5, 7):
        holding = threading.Thread(target=drill.before_step, args=(step,), daemon=True)
        holding.start()
        holding.join(0.5)
        assert holding.is_alive(), f"rank 0 did not wait for the release file of step {step}"
        assert (tmp_path / held_marker(step)).read_text() == str(step)
        held = sorted(p.name for p in tmp_path.glob(".held_at_step_*"))
        assert held == [held_marker(s) for s in (5, 7) if s <= step]  # only the steps reached
        (tmp_path / release_file(step)).write_text("")
        holding.join(10)
        assert not holding.is_alive()
    for step in (5, 7):  # a resumed run passes both steps: the markers say they were held
        (tmp_path / release_file(step)).unlink()
        done = threading.Thread(target=drill.before_step, args=(step,), daemon=True)
        done.start()
        done.join(10)
        assert not done.is_alive()


def test_hold_at_step_takes_one_step_or_a_list():
    from trainer.config import load_config

    for given, steps in [("25", [25]), ("[25, 35]", [25, 35]), ("0", []), ("[]", [])]:
        config = load_config(DEBUG, [f"train.hold_at_step={given}"])
        assert config.train.hold_at_step == steps
        assert config.flat()["train.hold_at_step"] == ",".join(map(str, steps))  # hparams
    with pytest.raises(ConfigError, match=r"train.hold_at_step.1: must be > 0, got -3"):
        load_config(DEBUG, ["train.hold_at_step=[25, -3]"])


@pytest.mark.parametrize("value", ["0", "-1", "nan"])
def test_the_stall_timeout_must_be_positive_and_finite(value):
    from trainer.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="train.stall_timeout_s"):
        load_config(
            Path(__file__).parent.parent / "configs" / "debug.yaml",
            [f"train.stall_timeout_s={value}"],
        )


def test_the_progress_lines_of_concurrent_workers_are_not_merged_by_ray():
    """Ray's driver merges alike lines from different processes; after `import launch` (before
    Ray, as in every command) each worker's progress line is printed, and other alike lines
    are still merged."""
    import subprocess
    import sys

    script = """
import launch
from ray._private.ray_logging import stdout_deduplicator as dedup

def printed(pid, line):
    batches = dedup.deduplicate({"ip": "n", "pid": pid, "lines": [line]})
    return [l for b in batches for l in b["lines"]]

first = printed(1, "[cascadevae] step 500/30000 | 179 img/s")
second = printed(2, "[cascadevae] step 500/30000 | 177 img/s")
assert first and second, (first, second)
assert printed(1, "some warning 3") and not printed(2, "some warning 4")
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_DEDUP")}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    without = script.replace("import launch\n", "")
    done = subprocess.run([sys.executable, "-c", without], env=env, capture_output=True, text=True)
    assert done.returncode != 0 and "AssertionError" in done.stderr  # Ray's default merges them
