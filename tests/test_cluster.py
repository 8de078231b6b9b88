"""launch.cluster without starting Ray: what every process of a job is told; and the hold
drill, which needs no cluster."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from launch.cluster import API_SERVER_VAR, JOB_ENV, cluster_env, free_port
from trainer.distributed.drills import HELD_MARKER, RELEASE_FILE, HoldDrill


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


def test_the_hold_drill_holds_rank_0_once_until_released(tmp_path):
    HoldDrill(5, tmp_path, rank=1).before_step(5)  # other ranks never hold
    drill = HoldDrill(5, tmp_path, rank=0)
    drill.before_step(4)
    assert not (tmp_path / HELD_MARKER).exists()
    holding = threading.Thread(target=drill.before_step, args=(5,), daemon=True)
    holding.start()
    holding.join(0.5)
    assert holding.is_alive(), "rank 0 did not wait for the release file"
    assert (tmp_path / HELD_MARKER).read_text() == "5"
    (tmp_path / RELEASE_FILE).write_text("")
    holding.join(10)
    assert not holding.is_alive()
    (tmp_path / RELEASE_FILE).unlink()
    done = threading.Thread(target=drill.before_step, args=(5,), daemon=True)
    done.start()
    done.join(10)  # a resumed run passes the step: the marker says it was held once
    assert not done.is_alive()


@pytest.mark.parametrize("value", ["0", "-1", "nan"])
def test_the_stall_timeout_must_be_positive_and_finite(value):
    from trainer.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="train.stall_timeout_s"):
        load_config(
            Path(__file__).parent.parent / "configs" / "debug.yaml",
            [f"train.stall_timeout_s={value}"],
        )
