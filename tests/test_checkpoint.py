"""Checkpoint folders: atomic, checksummed writes; verified reads; clear errors on damage."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from trainer.checkpoint import (
    CONFIG_FILE,
    META_FILE,
    STATE_FILE,
    CorruptCheckpointError,
    TrainState,
    read_checkpoint,
    read_meta,
    read_newest_intact,
    save_checkpoint,
)
from trainer.core.schedule import make_optimizer


def _state(next_step: int = 40) -> TrainState:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer, scheduler = make_optimizer(model)
    return TrainState(model, optimizer, scheduler, next_step=next_step)


def test_save_then_read_round_trips_and_records_the_checksum(tmp_path):
    state = _state()
    folder = save_checkpoint(tmp_path / "ck", state, "name: x\n")
    assert sorted(p.name for p in folder.iterdir()) == sorted([STATE_FILE, CONFIG_FILE, META_FILE])
    data = (folder / STATE_FILE).read_bytes()
    assert json.loads((folder / META_FILE).read_text()) == {
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
        "next_step": 40,
    }
    assert read_meta(folder)["next_step"] == 40
    payload, config_yaml = read_checkpoint(folder / STATE_FILE)  # the file works as well
    assert config_yaml == "name: x\n" and payload["next_step"] == 40
    torch.testing.assert_close(payload["model"]["weight"], state.model.weight.detach())


def test_a_truncated_state_is_refused_naming_the_file(tmp_path):
    folder = save_checkpoint(tmp_path / "ck", _state(), "name: x\n")
    path = folder / STATE_FILE
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[: size // 2])
    with pytest.raises(CorruptCheckpointError) as info:
        read_checkpoint(folder)
    assert info.value.path == path
    assert str(info.value) == (
        f"corrupt checkpoint {path}: {size // 2} bytes, state.json records {size} (truncated?)"
    )


def test_a_changed_byte_is_refused_by_the_checksum(tmp_path):
    folder = save_checkpoint(tmp_path / "ck", _state(), "name: x\n")
    path = folder / STATE_FILE
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError, match=r"state\.pt: sha256 [0-9a-f]{64} differs"):
        read_checkpoint(folder)


@pytest.mark.parametrize("garbage", [b"", b"not a pickle", b"PK\x03\x04 broken zip"])
def test_an_unverified_unreadable_state_is_refused_naming_the_file(tmp_path, garbage):
    """A folder without state.json (older checkpoints) is read unverified, but still cleanly."""
    folder = tmp_path / "ck"
    folder.mkdir()
    (folder / STATE_FILE).write_bytes(garbage)
    (folder / CONFIG_FILE).write_text("name: x\n")
    with pytest.raises(CorruptCheckpointError, match=f"corrupt checkpoint {folder / STATE_FILE}: "):
        read_checkpoint(folder)


def test_an_old_checkpoint_without_meta_is_still_read(tmp_path):
    folder = save_checkpoint(tmp_path / "ck", _state(7), "name: x\n")
    (folder / META_FILE).unlink()
    assert read_meta(folder) is None
    assert read_checkpoint(folder)[0]["next_step"] == 7


def test_no_temporary_files_are_left_behind(tmp_path):
    folder = save_checkpoint(tmp_path / "ck", _state(), "name: x\n")
    save_checkpoint(folder, _state(80), "name: x\n")  # overwrite in place
    assert sorted(p.name for p in folder.iterdir()) == sorted([STATE_FILE, CONFIG_FILE, META_FILE])
    assert read_checkpoint(folder)[0]["next_step"] == 80


def test_the_newest_intact_checkpoint_is_read_and_the_corrupt_ones_named(tmp_path):
    for step in (10, 20, 30):
        save_checkpoint(tmp_path / f"checkpoint_{step}", _state(step), "name: t\n")
    newest = tmp_path / "checkpoint_30" / STATE_FILE
    newest.write_bytes(newest.read_bytes()[:100])
    (tmp_path / "checkpoint_20" / STATE_FILE).unlink()
    folders = [tmp_path / f"checkpoint_{s}" for s in (30, 20, 10)]
    found, skipped = read_newest_intact(folders)
    assert found is not None
    payload, folder = found
    assert folder == tmp_path / "checkpoint_10" and payload["next_step"] == 10
    assert len(skipped) == 2
    assert str(newest) in skipped[0] and "truncated" in skipped[0]
    assert "checkpoint_20" in skipped[1] and "missing" in skipped[1]
    assert read_newest_intact(folders[:2]) == (None, skipped)
