"""Training state to and from a checkpoint folder (plain torch; Ray only moves the folder).

A checkpoint folder holds `state.pt` (model, optimizer, learning-rate schedule, next step, RNG
states), `config.yaml` (the resolved config that made it) and `state.json` (the sha256 and
size of state.pt, its next step, and the git revision of the code that wrote it), so every
checkpoint can be evaluated or resumed on its own and a damaged state.pt is recognised before
it is used.

Each file is written under a temporary name, flushed to disk and renamed, so a crash while
saving leaves either no file or a complete one under the final name. A folder without
state.json (written before checksums were recorded) is read unverified.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import random
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from trainer.errors import PicklableError

STATE_FILE = "state.pt"
CONFIG_FILE = "config.yaml"
META_FILE = "state.json"
"""{"sha256": hex digest of state.pt, "bytes": its size, "next_step": the payload's}, plus the
`extra_meta` of `save_checkpoint` (training writes git_revision, git_dirty, unknown_reason)."""


class CorruptCheckpointError(PicklableError, ValueError):
    """A checkpoint's state.pt does not match its recorded checksum or cannot be unpickled;
    the message names the file and what is wrong."""

    def __init__(self, path: Path, reason: str):
        self.path = path
        self.reason = reason
        super().__init__(f"corrupt checkpoint {path}: {reason}")


class VariantState(Protocol):
    """A model variant's extra trained parts (trainer.variants.types.Extras)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class TrainState:
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    next_step: int = 0
    extras: VariantState | None = None
    """The variant's other modules and optimizers (FactorVAE's discriminator), saved under
    `extras` in state.pt when there are any."""


def save_checkpoint(
    folder: str | os.PathLike,
    state: TrainState,
    config_yaml: str,
    extra_meta: dict[str, Any] | None = None,
) -> Path:
    """Write `state` and the config into `folder` (created); returns the folder. `extra_meta`:
    more JSON fields for state.json (the run's provenance)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    payload = {
        "model": state.model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(),
        "next_step": state.next_step,
        "rng": {
            "torch": torch.get_rng_state(),
            "numpy": np.random.get_state(),
            "python": random.getstate(),
        },
    }
    extras = state.extras.state_dict() if state.extras is not None else {}
    if extras:
        payload["extras"] = extras
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    meta = {
        **(extra_meta or {}),
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
        "next_step": state.next_step,
    }
    _write_atomic(folder / STATE_FILE, data)
    _write_atomic(folder / CONFIG_FILE, config_yaml.encode())
    _write_atomic(folder / META_FILE, json.dumps(meta).encode())  # last: it vouches for the rest
    return folder


def _write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary name in the same folder, fsync, rename."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself reaches the disk
    finally:
        os.close(dir_fd)


def read_meta(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The checkpoint's state.json as a dict, or None when the folder has none."""
    path = Path(folder) / META_FILE
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CorruptCheckpointError(path, f"unreadable: {err}") from err
    if not isinstance(meta, dict) or not {"sha256", "bytes", "next_step"} <= meta.keys():
        raise CorruptCheckpointError(path, f"expected sha256, bytes and next_step, got {meta!r}")
    return meta


def read_checkpoint(folder: str | os.PathLike) -> tuple[dict[str, Any], str]:
    """(payload, config_yaml) of a checkpoint folder (or its state.pt).

    FileNotFoundError names what is missing; CorruptCheckpointError names a state.pt whose
    size or sha256 differs from state.json, or that cannot be unpickled.
    """
    folder = Path(folder)
    if folder.is_file() and folder.name == STATE_FILE:
        folder = folder.parent
    state_path, config_path = folder / STATE_FILE, folder / CONFIG_FILE
    for path in (state_path, config_path):
        if not path.is_file():
            raise FileNotFoundError(f"not a CascadeVAE checkpoint: {path} is missing")
    meta = read_meta(folder)
    data = state_path.read_bytes()
    if meta is not None:
        if len(data) != meta["bytes"]:
            raise CorruptCheckpointError(
                state_path, f"{len(data)} bytes, {META_FILE} records {meta['bytes']} (truncated?)"
            )
        digest = hashlib.sha256(data).hexdigest()
        if digest != meta["sha256"]:
            raise CorruptCheckpointError(
                state_path, f"sha256 {digest} differs from {meta['sha256']} in {META_FILE}"
            )
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    except (
        EOFError,
        RuntimeError,
        pickle.UnpicklingError,
        zipfile.BadZipFile,
        ValueError,
        TypeError,
        AttributeError,
        KeyError,
        IndexError,
    ) as err:
        raise CorruptCheckpointError(state_path, f"{type(err).__name__}: {err}") from err
    if not isinstance(payload, dict) or "model" not in payload or "next_step" not in payload:
        raise CorruptCheckpointError(state_path, "not a CascadeVAE training state")
    return payload, config_path.read_text()


def restore_state(payload: dict[str, Any], state: TrainState) -> TrainState:
    """Load a payload into live objects (in place); global RNGs are restored too."""
    state.model.load_state_dict(payload["model"])
    state.optimizer.load_state_dict(payload["optimizer"])
    state.scheduler.load_state_dict(payload["scheduler"])
    if state.extras is not None:
        state.extras.load_state_dict(payload.get("extras", {}))
    state.next_step = int(payload["next_step"])
    rng = payload.get("rng", {})
    if "torch" in rng:
        torch.set_rng_state(rng["torch"])
    if "numpy" in rng:
        np.random.set_state(rng["numpy"])
    if "python" in rng:
        random.setstate(rng["python"])
    return state


def read_newest_intact(
    folders: list[Path],
) -> tuple[tuple[dict[str, Any], Path] | None, list[str]]:
    """((payload, folder) of the first readable checkpoint among `folders`, or None; one line per
    folder skipped before it, naming the folder and what is wrong). `folders`: newest first."""
    skipped: list[str] = []
    for folder in folders:
        try:
            payload, _ = read_checkpoint(folder)
        except (CorruptCheckpointError, FileNotFoundError) as err:
            skipped.append(str(err))
            continue
        return (payload, folder), skipped
    return None, skipped
