"""Training state to and from a checkpoint folder (plain torch; Ray only moves the folder).

A checkpoint folder holds `state.pt` (model, optimizer, learning-rate schedule, next step, RNG
states) and `config.yaml` (the resolved config that made it), so every checkpoint can be
evaluated or resumed on its own.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

STATE_FILE = "state.pt"
CONFIG_FILE = "config.yaml"


@dataclass
class TrainState:
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    next_step: int = 0


def save_checkpoint(folder: str | os.PathLike, state: TrainState, config_yaml: str) -> Path:
    """Write `state` and the config into `folder` (created); returns the folder."""
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
    torch.save(payload, folder / STATE_FILE)
    (folder / CONFIG_FILE).write_text(config_yaml)
    return folder


def read_checkpoint(folder: str | os.PathLike) -> tuple[dict[str, Any], str]:
    """(payload, config_yaml) of a checkpoint folder; FileNotFoundError names what is missing."""
    folder = Path(folder)
    if folder.is_file() and folder.name == STATE_FILE:
        folder = folder.parent
    state_path, config_path = folder / STATE_FILE, folder / CONFIG_FILE
    for path in (state_path, config_path):
        if not path.is_file():
            raise FileNotFoundError(f"not a CascadeVAE checkpoint: {path} is missing")
    payload = torch.load(state_path, map_location="cpu", weights_only=False)
    return payload, config_path.read_text()


def restore_state(payload: dict[str, Any], state: TrainState) -> TrainState:
    """Load a payload into live objects (in place); global RNGs are restored too."""
    state.model.load_state_dict(payload["model"])
    state.optimizer.load_state_dict(payload["optimizer"])
    state.scheduler.load_state_dict(payload["scheduler"])
    state.next_step = int(payload["next_step"])
    rng = payload.get("rng", {})
    if "torch" in rng:
        torch.set_rng_state(rng["torch"])
    if "numpy" in rng:
        np.random.set_state(rng["numpy"])
    if "python" in rng:
        random.setstate(rng["python"])
    return state
