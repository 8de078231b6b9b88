"""launch.evaluate refuses missing and damaged checkpoints with one line and exit status 2."""

from __future__ import annotations

import pytest
import torch

from launch.evaluate import main
from trainer.checkpoint import CONFIG_FILE, STATE_FILE, TrainState, save_checkpoint
from trainer.core.schedule import make_optimizer


def _error(argv: list[str], capsys, one_line: bool = True) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.count("\n") == 1 or not one_line, err
    return err.strip()


def test_a_missing_path_is_named(tmp_path, capsys):
    missing = tmp_path / "runs" / "checkpoint_nope"
    err = _error(["--checkpoint", str(missing)], capsys)
    assert err == f"error: checkpoint path does not exist: {missing}"


@pytest.mark.parametrize("as_file", [False, True])
def test_garbage_state_is_named_with_the_reason(tmp_path, capsys, as_file):
    folder = tmp_path / "checkpoint_x"
    folder.mkdir()
    (folder / STATE_FILE).write_bytes(b"\x80\x02garbage")
    (folder / CONFIG_FILE).write_text("name: x\n")
    target = folder / STATE_FILE if as_file else folder
    err = _error(["--checkpoint", str(target)], capsys)
    assert err.startswith(f"error: cannot read checkpoint {folder / STATE_FILE}: ")
    assert len(err) > len(f"error: cannot read checkpoint {folder / STATE_FILE}: ")


def test_a_truncated_checksummed_state_is_named(tmp_path, capsys):
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 2)
    optimizer, scheduler = make_optimizer(model)
    folder = save_checkpoint(
        tmp_path / "checkpoint_y", TrainState(model, optimizer, scheduler, 5), "name: y\n"
    )
    state = folder / STATE_FILE
    size = state.stat().st_size
    state.write_bytes(state.read_bytes()[:10])
    err = _error(["--checkpoint", str(folder)], capsys)
    assert err == (
        f"error: cannot read checkpoint {state}: 10 bytes, state.json records {size} (truncated?)"
    )


def test_a_folder_without_state_says_what_is_missing(tmp_path, capsys):
    err = _error(["--checkpoint", str(tmp_path)], capsys)
    assert err == f"error: not a CascadeVAE checkpoint: {tmp_path / STATE_FILE} is missing"


def test_an_unparsable_config_is_named(tmp_path, capsys):
    folder = tmp_path / "checkpoint_z"
    folder.mkdir()
    torch.save({"model": {}, "next_step": 0}, folder / STATE_FILE)
    (folder / CONFIG_FILE).write_text("name: [unclosed\n")
    err = _error(["--checkpoint", str(folder)], capsys, one_line=False)  # YAML's own lines
    assert err.startswith(f"error: cannot read checkpoint {folder / CONFIG_FILE}: ")


def test_an_unknown_metric_option_is_refused_naming_it(tmp_path, capsys):
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 2)
    optimizer, scheduler = make_optimizer(model)
    folder = save_checkpoint(
        tmp_path / "checkpoint_o", TrainState(model, optimizer, scheduler, 5), "name: o\n"
    )
    err = _error(["--checkpoint", str(folder), "--metric-option", "num_vote=3"], capsys, False)
    assert "--metric-option 'num_vote=3': unknown option 'num_vote'; valid: num_global, " in err
    assert "mig_num_bins" in err
    # A declared option with a bad value: the schema names the eval field and the value.
    err = _error(["--checkpoint", str(folder), "--metric-option", "vote_size=1"], capsys, False)
    assert "eval.vote_size: must be >= 2, got 1" in err
