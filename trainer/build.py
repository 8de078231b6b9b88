"""Config -> the parts of a run: dataset, model, optimizer, KL schedule, capacities, evaluation
options. Pure builders with no Ray, shared by the Train worker, the evaluate CLI and the
benchmarks.
"""

from __future__ import annotations

from typing import Any

import torch

from trainer.config import Config
from trainer.core.model import CascadeVAE, JointVAE
from trainer.core.schedule import CascadeSchedule, make_optimizer
from trainer.core.step import CapacitySchedule
from trainer.data.dsprites import DSprites, open_dsprites


def open_data(config: Config, progress: bool = False) -> DSprites:
    data = config.data
    return open_dsprites(
        source=data.source,
        npz_path=data.npz_path,
        num_scales=data.num_scales,
        num_orientations=data.num_orientations,
        num_positions=data.num_positions,
        cache_dir=data.cache_dir,
        progress=progress,
    )


def build_model(config: Config) -> CascadeVAE:
    m = config.model
    if m.variant == "jointvae":
        return JointVAE(m.num_continuous, m.num_categories, config.jointvae.temperature)
    return CascadeVAE(num_continuous=m.num_continuous, num_categories=m.effective_categories)


def build_schedule(config: Config) -> CascadeSchedule:
    """The KL weights over training. beta-VAE is the continuous-only schedule with one beta on
    every dim; JointVAE's objective has no betas (its schedule only fixes the latent size)."""
    c, m = config.cascade, config.model
    if m.variant in ("cascade", "oracle"):
        return CascadeSchedule(c, m.num_continuous, "cascade")
    if m.variant == "beta_vae":
        c = c.model_copy(update={"beta_high": m.beta, "beta_low": m.beta})
    return CascadeSchedule(c, m.num_continuous, "cascade_c")


def build_capacities(config: Config) -> CapacitySchedule | None:
    """JointVAE's capacity ramp (None for the other variants)."""
    if config.model.variant != "jointvae":
        return None
    j = config.jointvae
    return CapacitySchedule(
        gamma=j.gamma,
        continuous=j.continuous_capacity,
        discrete=j.discrete_capacity,
        steps=j.capacity_steps or config.train.num_steps,
    )


def device_switch(value: bool | str, device: torch.device) -> bool:
    """A train-section device switch (true, false or `auto`) on `device`: `auto` is on with
    CUDA, off elsewhere."""
    if value == "auto":
        return device.type == "cuda"
    return bool(value)


def compile_networks(model: CascadeVAE, mode: str) -> None:
    """torch.compile the forward of the encoder and of the decoder in place: the modules and
    their parameter names, and so checkpoints and DDP, stay those of the eager model. (With
    torch 2.13, nn.Module.compile leaves these Sequential modules uncompiled: Dynamo skips
    the frame of Module._call_impl.) mode: a torch.compile mode; `default` is torch's default."""
    compile_mode = None if mode == "default" else mode
    for network in (model.encoder, model.decoder):
        network.forward = torch.compile(network.forward, mode=compile_mode)  # type: ignore[method-assign]


def build_optimizer(config: Config, model: torch.nn.Module):
    return make_optimizer(model, config.optim)


def evaluation_kwargs(config: Config) -> dict[str, Any]:
    """Keywords of trainer.eval.evaluate_model: the run's seed and every eval setting."""
    return {"seed": config.seed, **config.eval.model_dump()}
