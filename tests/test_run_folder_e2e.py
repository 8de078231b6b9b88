"""The run folder's record through real `python -m launch.train` runs, on the test session's
Ray cluster (RAY_ADDRESS, as inside a job): a diverging run ends with the project's message, a
full disk ends with one line and leaves no partial checkpoint. A command that starts a local
Ray of its own is test_real_faults.py's Ctrl-C test; a resume with more steps is
test_train_e2e.py's corrupt-checkpoint test."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.run_folder import checkpoint_folders, is_partial

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parent.parent
DEBUG = ROOT / "configs" / "debug.yaml"
WAIT_S = 900  # a ceiling for a loaded machine


def _train(ray_session, spawn, storage: Path, name: str, *overrides: str) -> tuple[int, str, str]:
    command = [sys.executable, "-m", "launch.train", "--config", str(DEBUG)]
    for item in [f"train.storage_path={storage}", f"train.run_name={name}", *overrides]:
        command += ["--set", item]
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    process = spawn(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    out, err = process.communicate(timeout=WAIT_S)
    return process.returncode, out, err


def test_a_diverging_run_ends_with_the_projects_message_naming_the_step(
    ray_session, tmp_path, spawn
):
    code, out, err = _train(ray_session, spawn, tmp_path, "nan", "optim.lr=1e9")
    assert code == 1, err[-3000:]
    last = err.strip().splitlines()[-1]
    print(f"\nlr 1e9: exit {code}: {last}")  # shown with pytest -s
    assert last.startswith("error: training failed: NonFiniteLossError: iteration "), last
    assert "the loss is not finite" in last
    assert "missing 1 required positional argument" not in err


@pytest.fixture
def tmpfs_14mb(tmp_path):
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    mount = shutil.which("mount")
    if mount is None:
        pytest.skip("no `mount` command on this machine")
    done = subprocess.run(
        [mount, "-t", "tmpfs", "-o", "size=14m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_a_full_disk_ends_the_run_with_one_line_and_no_partial_checkpoint(
    ray_session, tmpfs_14mb, spawn
):
    code, _, err = _train(ray_session, spawn, tmpfs_14mb, "full")
    assert code == 1, err[-3000:]
    assert "warning: " in err and "the kept checkpoints need about" in err
    last = err.strip().splitlines()[-1]
    print(f"\nfull disk: exit {code}: {last}")  # shown with pytest -s
    run = tmpfs_14mb / "full"
    assert last.startswith(
        f"error: training failed: DiskFullError: no space left for checkpoint {run}/checkpoint_"
    ), last
    assert "bytes needed" in last and "last intact checkpoint: " in last
    folders = checkpoint_folders(run)
    assert folders and not any(is_partial(f) for f in folders)
    assert f"{folders[0]} (step 20)" in last
    assert not list(run.glob(".partial-*"))
