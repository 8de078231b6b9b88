"""On a CUDA device only (marked `gpu`, skipped elsewhere): device placement, a few steps of
every variant through the worker's step pipeline, and one NCCL run with Ray Train."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trainer.build import build_model, build_optimizer, open_data
from trainer.config import load_config
from trainer.loop import TrainLoop

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

DEBUG = Path(__file__).resolve().parent.parent / "configs" / "debug.yaml"


@pytest.mark.parametrize("variant", ["cascade", "cascade_c", "beta_vae", "jointvae", "oracle"])
def test_every_variant_trains_on_the_gpu(tmp_path, variant):
    from solver import assign
    from trainer.distributed.codes import GlobalCodeClient

    config = load_config(
        DEBUG,
        [f"model.variant={variant}", "cascade.discrete_start_stage=0", "model.weight_penalty=0"]
        + (["model.beta=4.0"] if variant == "beta_vae" else []),
    )
    device = torch.device("cuda")
    dataset = open_data(config)
    model = build_model(config).to(device)
    optimizer, scheduler = build_optimizer(config, model)
    seen = []

    def solve(unary_NK):
        seen.append(unary_NK)
        return assign(unary_NK, config.solver.lam), 0.0

    chooser = GlobalCodeClient(solve) if variant == "cascade" else None
    loop = TrainLoop(config, dataset, model, optimizer, scheduler, device=device, chooser=chooser)
    first = loop.step(0)
    for step in range(1, 20):
        last = loop.step(step)
    assert last["loss/recon"] < first["loss/recon"]
    assert all(p.device.type == "cuda" for p in model.parameters())
    if variant == "cascade":
        assert len(seen) == 20 and seen[0].shape == (16, 3)  # the unary came to the host


def test_one_nccl_worker_runs_the_debug_config(tmp_path):
    pytest.importorskip("ray")
    from launch.cluster import connect
    from trainer.distributed.worker import fit

    connect()
    config = load_config(DEBUG, ["train.use_gpu=true", f"train.storage_path={tmp_path}"])
    result = fit(config)
    assert result.error is None, result.error
    assert result.metrics["step"] == config.train.num_steps
