"""launch.train's Ctrl-C path: the resume hint (a pure function of the run folder and argv) and
exit status 130. Ray is never started: connect and fit are replaced."""

from __future__ import annotations

import pytest
import torch

from launch.train import main, resume_hint
from trainer.checkpoint import META_FILE, TrainState, save_checkpoint
from trainer.core.schedule import make_optimizer

ARGV = ["--config", "configs/debug.yaml", "--set", "train.run_name=my run"]
COMMAND = "python -m launch.train --config configs/debug.yaml --set 'train.run_name=my run'"


def _checkpoint(run_dir, name: str, step: int):
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 2)
    optimizer, scheduler = make_optimizer(model)
    return save_checkpoint(
        run_dir / name, TrainState(model, optimizer, scheduler, step), "name: x\n"
    )


def test_the_hint_names_the_newest_checkpoint_and_the_same_command(tmp_path):
    _checkpoint(tmp_path, "checkpoint_2026-01-01_10-00-00.000001", 200)
    newest = _checkpoint(tmp_path, "checkpoint_2026-01-01_10-05-00.000001", 400)
    partial = tmp_path / "checkpoint_2026-01-01_10-09-00.000001"
    partial.mkdir()  # a copy that never completed: no state.pt
    assert resume_hint(tmp_path, ARGV) == (
        f"interrupted: last checkpoint: step 400 ({newest}); the same command resumes from it\n"
        f"  skipped not a CascadeVAE checkpoint: {partial / 'state.pt'} is missing\n"
        f"  {COMMAND}"
    )


def test_the_hint_reads_the_step_of_a_checkpoint_without_state_json(tmp_path):
    folder = _checkpoint(tmp_path, "checkpoint_2026-01-01_10-00-00.000001", 120)
    (folder / META_FILE).unlink()
    assert "last checkpoint: step 120 (" in resume_hint(tmp_path, ARGV)


def test_the_hint_without_a_checkpoint(tmp_path):
    assert resume_hint(tmp_path / "run", ARGV) == (
        f"interrupted: no checkpoint in {tmp_path / 'run'} yet; the same command starts the run "
        f"from step 0\n  {COMMAND}"
    )


def test_the_hint_names_an_unreadable_checkpoint_and_the_intact_one_before_it(tmp_path):
    older = _checkpoint(tmp_path, "checkpoint_2026-01-01_09-00-00.000001", 20)
    folder = _checkpoint(tmp_path, "checkpoint_2026-01-01_10-00-00.000001", 40)
    (folder / META_FILE).write_text("{not json")
    lines = resume_hint(tmp_path, ARGV).splitlines()
    assert lines[0] == (
        f"interrupted: last checkpoint: step 20 ({older}); the same command resumes from it"
    )
    assert lines[1].startswith(f"  skipped corrupt checkpoint {folder / META_FILE}: unreadable")
    assert lines[2] == f"  {COMMAND}"


def test_the_hint_without_an_intact_checkpoint_says_the_run_starts_again(tmp_path):
    folder = _checkpoint(tmp_path, "checkpoint_2026-01-01_10-00-00.000001", 40)
    with open(folder / "state.pt", "r+b") as f:
        f.truncate(100)
    lines = resume_hint(tmp_path, ARGV).splitlines()
    assert lines[0] == (
        f"interrupted: no intact checkpoint in {tmp_path}; the same command starts the run "
        "from step 0"
    )
    assert lines[1].startswith(f"  skipped corrupt checkpoint {folder / 'state.pt'}: ")


def test_ctrl_c_during_the_fit_exits_130_with_the_hint(tmp_path, monkeypatch, capsys):
    import launch.cluster
    import launch.train
    import trainer.distributed.worker

    def interrupted_fit(config, storage_path):
        _checkpoint(tmp_path / config.run_name, "checkpoint_2026-01-01_10-00-00.000001", 8)
        raise KeyboardInterrupt

    monkeypatch.setattr(launch.cluster, "connect", lambda **_: "local (test)")
    monkeypatch.setattr(launch.cluster, "check_resources", lambda *a: None)
    monkeypatch.setattr(launch.train, "cluster_problem", lambda *a: None)  # no Ray here
    monkeypatch.setattr(trainer.distributed.worker, "fit", interrupted_fit)
    argv = ["--config", "configs/debug.yaml", "--set", f"train.storage_path={tmp_path}"]
    assert main(argv) == 130
    err = capsys.readouterr().err
    folder = tmp_path / "debug" / "checkpoint_2026-01-01_10-00-00.000001"
    assert f"interrupted: last checkpoint: step 8 ({folder})" in err
    assert err.rstrip().endswith(
        f"python -m launch.train --config configs/debug.yaml --set train.storage_path={tmp_path}"
    )


@pytest.mark.parametrize("argv", [[], ["--config", "a b.yaml"]])
def test_the_command_is_quoted_for_a_shell(tmp_path, argv):
    import shlex

    command = resume_hint(tmp_path, argv).splitlines()[-1].strip()
    assert shlex.split(command) == ["python", "-m", "launch.train", *argv]
