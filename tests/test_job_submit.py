"""`ray job submit` against a local head on 127.0.0.1, exactly as the README shows it.

The head gets its own temp folder, ports and process group, and is stopped by signalling that
group: `ray stop` would also kill the session Ray cluster other tests share.
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


def _group_members(pgid: int) -> list[int]:
    """Pids of the live processes in process group `pgid` (zombies excluded)."""
    members = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(proc.name))
    return members


def _stop_group(pgid: int, patience_s: float = 10.0) -> list[int]:
    """SIGTERM the process group, SIGKILL what is left after `patience_s`; returns the pids
    still alive after that (none expected)."""
    for sig, wait_s in ((signal.SIGTERM, patience_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return []
        deadline = time.monotonic() + wait_s
        while _group_members(pgid) and time.monotonic() < deadline:
            time.sleep(0.1)
    return _group_members(pgid)


def _start_head(temp_dir: str, env: dict) -> tuple[int, int]:
    """`ray start --head` in a session of its own: every process it starts (GCS, raylet,
    dashboard, its agents, the client server, the job's driver and workers) is in its process
    group. Returns (pgid, dashboard port). A start that fails is retried once on new ports
    (another process can take a free port between the probe and the bind); a second failure
    fails the test with both outputs."""
    outputs = []
    for _ in range(2):
        gcs, dashboard, agent, client = _free_ports(4)
        start = [
            str(RAY), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
            f"--dashboard-agent-listen-port={agent}", f"--ray-client-server-port={client}",
            "--num-cpus=2", "--disable-usage-stats", f"--temp-dir={temp_dir}",
        ]  # fmt: skip
        head = subprocess.Popen(
            start,
            env=env,
            start_new_session=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        output, _ = head.communicate(timeout=120)
        if head.returncode == 0:
            return head.pid, dashboard
        outputs.append(
            f"ports {gcs}/{dashboard}/{agent}/{client}, exit {head.returncode}:\n{output}"
        )
        assert not _stop_group(head.pid), "a failed head start left processes running"
    pytest.fail("ray start --head failed twice:\n" + "\n".join(o[-3000:] for o in outputs))


@pytest.fixture
def local_head(ray_session, tmp_path_factory):
    """A head of its own, while the test session's cluster (`ray_session`) is also up."""
    temp_dir = str(tmp_path_factory.mktemp("rayhead"))
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}
    for key in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        env.pop(key, None)
    pgid, dashboard = _start_head(temp_dir, env)
    try:
        yield f"http://127.0.0.1:{dashboard}", env
    finally:
        left = _stop_group(pgid)
        assert not left, f"head processes left running: {left}"


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
