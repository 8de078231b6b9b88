"""The run folder as a record (trainer.run_folder): resume checks and the config history, the
one-writer lock with real processes, checkpoints whole or absent (fault injection everywhere, a
real small tmpfs where one can be mounted), errors that cross processes intact. No Ray."""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from launch.train import resume_hint
from trainer.build import build_model, build_optimizer
from trainer.checkpoint import STATE_FILE, CorruptCheckpointError, TrainState, save_checkpoint
from trainer.config import load_config
from trainer.errors import project_cause
from trainer.observe.run_log import read_attempts
from trainer.run_folder import (
    CONFIG_FILE,
    DiskFullError,
    ResumeConfigError,
    RunFolderBusyError,
    RunLock,
    check_resume,
    checkpoint_bytes,
    prepare_run_folder,
    read_history,
    remove_partial_checkpoints,
    upload_checkpoint,
)

ROOT = Path(__file__).parent.parent
DEBUG = ROOT / "configs" / "debug.yaml"


def _config(*overrides: str):
    return load_config(DEBUG, ["train.run_name=r1", *overrides])


def _checkpoint(folder: Path, step: int, config=None) -> Path:
    config = config or _config()
    torch.manual_seed(0)
    model = build_model(config)
    optimizer, scheduler = build_optimizer(config, model)
    return save_checkpoint(folder, TrainState(model, optimizer, scheduler, step), config.to_yaml())


# --------------------------------------------------------------------------- resume checks
def test_a_new_folder_and_the_same_config_are_accepted_without_history(tmp_path):
    run = tmp_path / "r1"
    assert prepare_run_folder(run, _config()) == []
    assert prepare_run_folder(run, _config()) == []
    assert read_history(run) == [] and not (run / "attempts.jsonl").exists()


@pytest.mark.parametrize(
    "overrides, refused",
    [
        (["seed=1"], ["seed"]),
        (["optim.lr=1e-4", "train.num_steps=60"], ["optim.lr"]),
        (["seed=1", "train.num_steps=60"], ["seed"]),
        (["model.num_continuous=4"], ["model.num_continuous"]),
        (["train.num_workers=2"], ["train.num_workers"]),
        (
            ["train.global_batch=32", "cascade.beta_high=4"],
            ["cascade.beta_high", "train.global_batch"],
        ),
        (["solver.lam=0.1", "data.num_positions=8"], ["data.num_positions", "solver.lam"]),
    ],
)
def test_a_resume_that_changes_the_trained_state_is_refused_before_writing(
    tmp_path, overrides, refused
):
    run = tmp_path / "r1"
    prepare_run_folder(run, _config())
    before = (run / CONFIG_FILE).read_text()
    with pytest.raises(ResumeConfigError) as info:
        prepare_run_folder(run, _config(*overrides))
    assert [c.field for c in info.value.refused] == refused
    text = str(info.value)
    assert "--set train.run_name=<a new name> (e.g. r1_2)" in text
    assert (run / CONFIG_FILE).read_text() == before
    assert read_history(run) == []


def test_a_folder_without_config_yaml_is_checked_against_its_newest_checkpoint(tmp_path):
    run = tmp_path / "r1"
    _checkpoint(run / "checkpoint_2026-01-01_10-00-00.000001", 20)
    with pytest.raises(ResumeConfigError, match="seed: the run has 0, this command 1"):
        check_resume(run, _config("seed=1"))


def test_an_accepted_change_is_recorded_with_the_step_it_took_effect(tmp_path):
    run = tmp_path / "r1"
    prepare_run_folder(run, _config())
    _checkpoint(run / "checkpoint_2026-01-01_10-00-00.000001", 20)
    _checkpoint(run / "checkpoint_2026-01-01_10-05-00.000001", 40)
    lines = prepare_run_folder(run, _config("train.num_steps=60", "train.eval_every=20"))
    assert "from step 40" in lines[-1]
    history = read_history(run)
    assert len(history) == 1 and history[0]["step"] == 40
    assert history[0]["changes"] == {
        "train.eval_every": {"old": 0, "new": 20},
        "train.num_steps": {"old": 40, "new": 60},
    }
    (attempt,) = read_attempts(run)
    assert attempt["event"] == "config_change" and attempt["changes"] == history[0]["changes"]
    assert "num_steps: 60" in (run / CONFIG_FILE).read_text()


def test_the_solver_transport_and_placement_may_change_on_resume(tmp_path):
    run = tmp_path / "r1"
    prepare_run_folder(run, _config("solver.transport=ordinary", "solver.placement=head"))
    changed = check_resume(run, _config("solver.transport=compiled", "solver.placement=rank0"))
    assert sorted(c.field for c in changed) == ["solver.placement", "solver.transport"]


def test_jointvae_num_steps_is_state_when_it_sets_the_capacity_ramp(tmp_path):
    run = tmp_path / "r1"
    joint = ["model.variant=jointvae", "eval.protocols=[authors_factorvae]"]
    prepare_run_folder(run, _config(*joint))
    with pytest.raises(ResumeConfigError) as info:
        check_resume(run, _config(*joint, "train.num_steps=60"))
    assert [c.field for c in info.value.refused] == ["train.num_steps"]
    fixed = [*joint, "jointvae.capacity_steps=40"]
    prepare_run_folder(tmp_path / "r2", _config(*fixed))
    assert [
        c.field for c in check_resume(tmp_path / "r2", _config(*fixed, "train.num_steps=60"))
    ] == ["train.num_steps"]


# --------------------------------------------------------------------------- one writer
@pytest.fixture
def holder(tmp_path):
    """Start a process that holds the lock of `tmp_path/run`; killed by the finalizer."""
    processes: list[subprocess.Popen] = []

    def start() -> subprocess.Popen:
        code = (
            "import sys, time; from trainer.run_folder import RunLock; "
            "lock = RunLock(sys.argv[1], 'holder command'); print('held', flush=True); "
            "time.sleep(600)"
        )
        process = subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path / "run")],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        processes.append(process)
        assert process.stdout is not None and process.stdout.readline().strip() == "held"
        return process

    yield start
    for process in processes:
        process.kill()
        process.wait(timeout=30)


def test_a_second_writer_is_refused_naming_the_holder(tmp_path, holder):
    process = holder()
    with pytest.raises(RunFolderBusyError) as info:
        RunLock(tmp_path / "run", "second")
    text = str(info.value)
    assert f"pid {process.pid} on host" in text and "holder command" in text
    assert info.value.holder["pid"] == process.pid


def test_a_lock_left_by_a_dead_process_is_taken_over_with_a_message(tmp_path, holder):
    process = holder()
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    lock = RunLock(tmp_path / "run", "mine")
    try:
        message = lock.message()
        assert message is not None and f"pid {process.pid}" in message
        assert "no longer running" in message
    finally:
        lock.release()
    again = RunLock(tmp_path / "run", "after a clean release")
    try:
        assert again.message() is None  # a released lock leaves no holder behind
    finally:
        again.release()


def test_launch_train_exits_2_at_once_while_another_command_holds_the_folder(tmp_path, holder):
    process = holder()
    command = [sys.executable, "-m", "launch.train", "--config", str(DEBUG)]
    command += ["--set", f"train.storage_path={tmp_path}", "--set", "train.run_name=run"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert f"pid {process.pid} on host" in done.stderr
    assert "Ray:" not in done.stdout


# --------------------------------------------------------------------------- checkpoints
def _source(tmp_path: Path, num_bytes: int) -> Path:
    source = tmp_path / "source"
    source.mkdir()
    (source / STATE_FILE).write_bytes(os.urandom(num_bytes))
    (source / "state.json").write_text(json.dumps({"bytes": num_bytes}))
    return source


def test_an_upload_appears_whole_under_its_final_name(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    source = _source(tmp_path, 100_000)
    final = upload_checkpoint(source, run, "checkpoint_a")
    assert final == run / "checkpoint_a"
    assert (final / STATE_FILE).read_bytes() == (source / STATE_FILE).read_bytes()
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint_a"]


def test_a_copy_that_fails_halfway_leaves_no_folder_and_names_the_last_intact(
    tmp_path, monkeypatch
):
    run = tmp_path / "run"
    intact = _checkpoint(run / "checkpoint_2026-01-01_10-00-00.000001", 20)
    source = _source(tmp_path, 3_000_000)
    real_copy = shutil.copyfileobj

    def copy_then_fill_the_disk(src, dst, length=0):
        dst.write(src.read(1_000_000))  # a third of the file reaches the disk, then ENOSPC
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shutil, "copyfileobj", copy_then_fill_the_disk)
    with pytest.raises(DiskFullError) as info:
        upload_checkpoint(source, run, "checkpoint_2026-01-01_10-05-00.000001")
    monkeypatch.setattr(shutil, "copyfileobj", real_copy)
    error = info.value
    assert error.needed == 3_000_000 + len((source / "state.json").read_bytes())
    assert error.path == str(run / "checkpoint_2026-01-01_10-05-00.000001")
    assert f"last intact checkpoint: {intact} (step 20)" in str(error)
    assert "\n" not in str(error)
    assert sorted(p.name for p in run.iterdir()) == [intact.name]
    assert "last checkpoint: step 20" in resume_hint(run, [])


def test_too_little_free_space_is_refused_before_any_byte_is_written(tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    source = _source(tmp_path, 50_000)
    monkeypatch.setattr(
        shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**6, 10**6 - 10, 10)
    )
    with pytest.raises(DiskFullError, match="bytes needed, 10 free; last intact checkpoint: none"):
        upload_checkpoint(source, run, "checkpoint_b")
    assert list(run.iterdir()) == []


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 3 MB tmpfs mounted on a fresh folder (unmounted by the finalizer); skips when this
    process may not mount one."""
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    mount = shutil.which("mount")
    if mount is None:
        pytest.skip("no `mount` command on this machine")
    done = subprocess.run(
        [mount, "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=False)


def test_a_full_tmpfs_leaves_no_partial_checkpoint(tmp_path, small_tmpfs, monkeypatch):
    run = small_tmpfs / "run"
    intact = _checkpoint(run / "checkpoint_2026-01-01_10-00-00.000001", 20)
    source = _source(tmp_path, 5_000_000)
    # The free-space check first: refused before writing.
    with pytest.raises(DiskFullError):
        upload_checkpoint(source, run, "checkpoint_2026-01-01_10-05-00.000001")
    assert sorted(p.name for p in run.iterdir()) == [intact.name]
    # Then the disk itself: the check is blinded, the kernel's ENOSPC ends the copy.
    monkeypatch.setattr(
        shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**12, 0, 10**12)
    )
    with pytest.raises(DiskFullError) as info:
        upload_checkpoint(source, run, "checkpoint_2026-01-01_10-05-00.000001")
    assert f"last intact checkpoint: {intact} (step 20)" in str(info.value)
    assert sorted(p.name for p in run.iterdir()) == [intact.name]


def test_partial_folders_are_removed_and_named_registered_ones_kept(tmp_path):
    run = tmp_path / "run"
    intact = _checkpoint(run / "checkpoint_2026-01-01_10-00-00.000001", 20)
    truncated = _checkpoint(run / "checkpoint_2026-01-01_10-05-00.000001", 40)
    with open(truncated / STATE_FILE, "r+b") as f:
        f.truncate(1000)
    registered = _checkpoint(run / "checkpoint_2026-01-01_10-06-00.000001", 40)
    with open(registered / STATE_FILE, "r+b") as f:
        f.truncate(1000)
    (run / "checkpoint_manager_snapshot.json").write_text(json.dumps({"p": str(registered)}))
    legacy = _checkpoint(run / "checkpoint_2026-01-01_09-00-00.000001", 10)
    (legacy / "state.json").unlink()  # written before checksums were recorded
    hidden = run / ".partial-checkpoint_2026-01-01_10-07-00.000001"
    hidden.mkdir()
    empty = run / "checkpoint_2026-01-01_10-08-00.000001"
    empty.mkdir()
    assert remove_partial_checkpoints(run) == sorted([hidden, truncated, empty])
    left = sorted(p.name for p in run.glob("checkpoint_*") if p.is_dir())
    assert left == sorted([intact.name, registered.name, legacy.name])
    hint = resume_hint(run, [])
    assert f"last checkpoint: step 20 ({intact})" in hint
    assert f"skipped corrupt checkpoint {registered / STATE_FILE}" in hint


def test_the_checkpoint_size_estimate_is_within_a_tenth_of_a_real_checkpoint(tmp_path):
    config = _config()
    folder = _checkpoint(tmp_path / "c", 20, config)
    real = (folder / STATE_FILE).stat().st_size
    # Adam's moments exist once the optimizer has stepped: a stepped checkpoint is compared.
    torch.manual_seed(0)
    model = build_model(config)
    optimizer, scheduler = build_optimizer(config, model)
    sum(p.sum() for p in model.parameters()).backward()
    optimizer.step()
    stepped = save_checkpoint(
        tmp_path / "s", TrainState(model, optimizer, scheduler, 1), config.to_yaml()
    )
    real = (stepped / STATE_FILE).stat().st_size
    assert abs(checkpoint_bytes(config) - real) < 0.1 * real


# --------------------------------------------------------------------------- errors cross Ray
def _project_errors():
    from solver.solve import SolverError
    from trainer.core.step import NonFiniteLossError
    from trainer.data.cache import CacheInvalid, DatasetError
    from trainer.distributed.codes import CodeExchangeError, NonFiniteUnaryError
    from trainer.distributed.solver_actor import SolverTimeoutError
    from trainer.run_folder import Change
    from trainer.schema import ConfigError, RuleError

    return [
        ConfigError(["train.num_steps: must be >= 1"], "debug.yaml"),
        RuleError(["a: b", "c: d"]),
        CorruptCheckpointError(Path("/runs/r1/checkpoint_x/state.pt"), "truncated"),
        NonFiniteLossError(7, {"loss/total": float("nan"), "loss/recon": 1.0}),
        NonFiniteLossError(7, {"loss/total": float("inf")}, stopped_at=10),
        NonFiniteUnaryError(3, np.array([[np.nan, 1.0], [2.0, 3.0]]), 1),
        CodeExchangeError("rank 1 missing"),
        SolverTimeoutError("actor x: no answer in 60 s for a (64, 3) problem"),
        SolverError("status kInfeasible"),
        DatasetError("file x: bad key"),
        CacheInvalid("stale"),
        ResumeConfigError("/runs/r1", [Change("seed", 0, 1)], "r1"),
        RunFolderBusyError("/runs/r1", {"pid": 1, "host": "h", "started": 0.0}),
        DiskFullError("/runs/r1/checkpoint_x", 100, 5, "none"),
    ]


@pytest.mark.parametrize("error", _project_errors(), ids=lambda e: type(e).__name__)
def test_every_project_error_round_trips_through_pickle(error):
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is type(error)
    assert str(back) == str(error)
    assert repr(sorted(vars(back).items())) == repr(sorted(vars(error).items()))  # NaN-safe


def test_the_project_error_is_found_inside_rays_wrappers():
    from ray.train.v2._internal.exceptions import UserExceptionWithTraceback
    from ray.train.v2.api.exceptions import WorkerGroupError

    from trainer.core.step import NonFiniteLossError

    nan = NonFiniteLossError(1, {"loss/total": float("nan")})
    wrapped = WorkerGroupError(
        "rank 0 failed", {0: UserExceptionWithTraceback(nan, "Traceback ...\n")}
    )
    found = project_cause(pickle.loads(pickle.dumps(wrapped)))
    assert isinstance(found, NonFiniteLossError) and found.step == 1
    assert str(found).startswith("iteration 1: the loss is not finite (loss/total=nan)")
    assert project_cause(RuntimeError("x")) is None
