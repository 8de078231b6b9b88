"""`ray job submit` against a local head on 127.0.0.1, exactly as the README shows it.

The head gets its own temp folder, ports and process group (conftest's `ray_head`), and is
stopped by signalling that group: `ray stop` would also kill the session Ray cluster other tests
share.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.observe.run_log import read_metrics

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parent.parent
RAY = Path(sys.executable).parent / "ray"


@pytest.fixture
def local_head(ray_session, ray_head):
    """A head of its own, while the test session's cluster (`ray_session`) is also up."""
    return ray_head


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
