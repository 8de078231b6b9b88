"""`ray job submit` against a local head on 127.0.0.1, exactly as the README shows it.

The head gets its own temp folder and ports, and is stopped by killing only its own processes:
`ray stop` would also kill the session Ray cluster other tests share.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trainer.observe.run_log import read_metrics

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parent.parent
RAY = Path(sys.executable).parent / "ray"


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _pids_using(marker: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if marker in (proc / "cmdline").read_bytes().decode(errors="replace"):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def _stop_head(temp_dir: str) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in _pids_using(temp_dir):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        time.sleep(2)


@pytest.fixture
def local_head(tmp_path_factory):
    temp_dir = str(tmp_path_factory.mktemp("rayhead"))
    gcs, dashboard, agent, client = _free_ports(4)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    start = [
        str(RAY), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}",
        "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
        f"--dashboard-agent-listen-port={agent}", f"--ray-client-server-port={client}",
        "--num-cpus=2", "--disable-usage-stats", f"--temp-dir={temp_dir}",
    ]  # fmt: skip
    subprocess.run(start, env=env, check=True, capture_output=True, timeout=120)
    try:
        yield f"http://127.0.0.1:{dashboard}", env
    finally:
        _stop_head(temp_dir)
        assert not _pids_using(temp_dir), "head processes left running"


def test_job_submit_trains_the_debug_config(local_head, tmp_path):
    address, env = local_head
    storage = tmp_path / "runs"
    submit = [
        str(RAY), "job", "submit", "--address", address, "--working-dir", ".", "--",
        sys.executable, "-m", "launch.train", "--config", "configs/debug.yaml",
        "--set", f"train.storage_path={storage}",
    ]  # fmt: skip
    done = subprocess.run(submit, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert "succeeded" in output, output[-4000:]
    assert "=== CascadeVAE run 'debug' finished" in output
    # Rank 0's progress lines reach the job's output, each exactly once.
    steps = re.findall(r"\[cascadevae\] step (\d+)/", output)
    assert steps, output[-4000:]
    assert len(steps) == len(set(steps)), steps
    run_dir = storage / "debug"
    assert read_metrics(run_dir).num_rows > 0
    assert (run_dir / "config.yaml").is_file()
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    assert list(run_dir.glob("checkpoint_*/state.pt"))
