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


@pytest.mark.slow  # starts Ray
def test_one_nccl_worker_runs_the_debug_config(tmp_path):
    pytest.importorskip("ray")
    from launch.cluster import connect
    from trainer.distributed.worker import fit

    connect()
    config = load_config(DEBUG, ["train.use_gpu=true", f"train.storage_path={tmp_path}"])
    result = fit(config)
    assert result.error is None, result.error
    assert result.metrics["step"] == config.train.num_steps


def test_the_device_unpack_on_cuda_equals_the_host_images(tmp_path):
    import numpy as np

    from trainer.data.device import DeviceDSprites

    config = load_config(DEBUG, [f"data.cache_dir={tmp_path}"])
    dataset = open_data(config)
    on_device = DeviceDSprites(dataset, torch.device("cuda"))
    assert on_device.packed_NY.device.type == "cuda" and on_device.packed_NY.dtype == torch.uint8
    rng = np.random.default_rng(0)
    indices = np.concatenate([rng.integers(0, len(dataset), 256), [len(dataset) - 1, 0]])
    images = on_device.images(torch.from_numpy(indices).cuda()).cpu()
    expected = torch.from_numpy(dataset.images(indices)).to(torch.float32).unsqueeze(1)
    assert torch.equal(images, expected)


def test_fused_adam_is_used_on_cuda_and_takes_the_for_loop_step():
    from trainer.config import OptimConfig
    from trainer.core.model import CascadeVAE
    from trainer.core.schedule import make_optimizer

    results = {}
    for implementation in ("for_loop", "auto"):
        torch.manual_seed(0)
        model = CascadeVAE().cuda()
        optimizer, _ = make_optimizer(model, OptimConfig(lr=1e-3, implementation=implementation))
        x = torch.rand(8, 1, 64, 64, generator=torch.Generator().manual_seed(1)).cuda()
        for _ in range(2):
            optimizer.zero_grad()
            mu, sigma = model.encode(x)
            (model.decode(mu, None) - x).pow(2).mean().add(sigma.mean()).backward()
            optimizer.step()
        results[implementation] = (optimizer, torch.cat([p.flatten() for p in model.parameters()]))
    assert results["auto"][0].param_groups[0]["fused"] is True
    torch.testing.assert_close(results["auto"][1], results["for_loop"][1], rtol=1e-5, atol=1e-6)


def test_steps_before_the_discrete_stage_never_wait_on_the_host(tmp_path):
    """With the device switches on (auto on CUDA), no step synchronises with the host (CUDA's
    sync debug mode raises on any synchronising call) until the interval is read."""
    from trainer.observe.cadence import Cadence, Hooks

    config = load_config(DEBUG, [f"data.cache_dir={tmp_path}", "cascade.discrete_start_stage=4"])
    device = torch.device("cuda")
    dataset = open_data(config)
    model = build_model(config).to(device)
    optimizer, scheduler = build_optimizer(config, model)
    loop = TrainLoop(config, dataset, model, optimizer, scheduler, device=device)
    assert loop.device_data is not None and loop.metrics_on_device
    hooks = Hooks([], ends=[Cadence(10)], num_steps=20, global_batch=16)
    for step in range(2):  # first steps: allocations, cuDNN choices
        hooks.after_step(step, loop.step(step))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(2, 9):
            hooks.after_step(step, loop.step(step))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    interval = hooks.after_step(9, loop.step(9))  # the one read of the interval
    assert interval is not None and interval["loss/total"] > 0


def test_inductor_compiled_steps_match_eager_steps_on_cuda(tmp_path):
    """`train.compile=default` with Inductor's CUDA kernels: a few steps, into the discrete
    stage, give the eager loss and weights to float tolerance (the CPU test uses aot_eager)."""
    base = [f"data.cache_dir={tmp_path}", "cascade.discrete_start_stage=0"]
    device = torch.device("cuda")
    results = {}
    for name in ("none", "default"):
        config = load_config(DEBUG, [*base, f"train.compile={name}"])
        torch.manual_seed(config.seed)
        dataset = open_data(config)
        model = build_model(config).to(device)
        optimizer, scheduler = build_optimizer(config, model)
        loop = TrainLoop(config, dataset, model, optimizer, scheduler, device=device,
                         chooser=lambda unary_BK: unary_BK.argmin(dim=1))  # fmt: skip
        losses = [float(dict(loop.step(step))["loss/total"]) for step in range(3)]
        results[name] = (losses, [p.detach().clone() for p in model.parameters()])
    assert results["default"][0] == pytest.approx(results["none"][0], rel=1e-3)
    for p, q in zip(results["none"][1], results["default"][1], strict=True):
        torch.testing.assert_close(q, p, rtol=1e-3, atol=1e-3)
