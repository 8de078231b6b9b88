"""FactorVAE end to end: `launch.train --config configs/factorvae.yaml` at the debug sizes with
two Ray Train workers (the VAE and the discriminator both under DDP), then the same command
with more steps resumes from the checkpoint, discriminator and its Adam state included."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from launch.train import main
from trainer.checkpoint import read_checkpoint
from trainer.config import load_config
from trainer.observe.run_log import read_metrics
from trainer.reported import reported_keys
from trainer.variants.factorvae import DISCRIMINATOR, TC_KEYS

pytestmark = pytest.mark.slow

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "factorvae.yaml"
DEBUG_SIZES = [  # configs/debug.yaml's grid, batch, cadences and evaluation; a 2 x 64 D
    "data.num_scales=2", "data.num_orientations=4", "data.num_positions=4",
    "train.global_batch=16", "train.num_workers=2", "train.log_every=10",
    "train.checkpoint_every=10", "train.eval_every=0", "train.image_every=0",
    "train.max_failures=0", "train.collective_timeout_s=120", "optim.lr=1.0e-3",
    "eval.protocols=[authors_factorvae]", "eval.num_global=384", "eval.num_votes=50",
    "eval.vote_size=20", "factorvae.discriminator_layers=2", "factorvae.discriminator_units=64",
    # Newest checkpoints: resuming a run whose keep_best_by ranked a checkpoint at -inf fails
    # in Ray Train's checkpoint manager (the score is stored as JSON null).
    "train.keep_best_by=''",
]  # fmt: skip


def _argv(tmp_path: Path, steps: int) -> list[str]:
    sets = [*DEBUG_SIZES, f"train.storage_path={tmp_path}", "train.run_name=fvae",
            f"train.num_steps={steps}"]  # fmt: skip
    return ["--config", str(CONFIG), *(arg for s in sets for arg in ("--set", s))]


def _newest_checkpoint(run_dir: Path) -> Path:
    return max(p for p in run_dir.glob("checkpoint_*") if p.is_dir())


def test_factorvae_trains_with_two_workers_and_resumes_its_discriminator(ray_session, tmp_path):
    assert main(_argv(tmp_path, 20)) == 0
    run_dir = tmp_path / "fvae"
    first, _ = read_checkpoint(_newest_checkpoint(run_dir))
    assert first["next_step"] == 20
    d_state = first["extras"]["modules"][DISCRIMINATOR]
    assert first["extras"]["optimizers"][DISCRIMINATOR]["state"][0]["step"] == 20

    assert main(_argv(tmp_path, 30)) == 0
    rows = read_metrics(run_dir).to_pylist()
    assert [r["step"] for r in rows] == [10, 20, 30]
    for row in rows:
        assert all(row[key] is not None for key in TC_KEYS)
        assert row["loss/total"] == pytest.approx(
            row["loss/recon"] + row["loss/kl"] + row["loss/weight_penalty"] + row["loss/tc"],
            rel=1e-4,
        )
    config = load_config(CONFIG, [a for a in _argv(tmp_path, 30)[2:] if a != "--set"])
    assert {k for k in rows[-1] if "/" in k and rows[-1][k] is not None} <= reported_keys(config)
    last, _ = read_checkpoint(_newest_checkpoint(run_dir))
    assert last["next_step"] == 30
    # Resumed, not restarted: the discriminator's Adam counts 30 steps, and its weights moved
    # on from those of step 20.
    assert last["extras"]["optimizers"][DISCRIMINATOR]["state"][0]["step"] == 30
    name = next(iter(d_state))
    assert not torch.equal(last["extras"]["modules"][DISCRIMINATOR][name], d_state[name])
