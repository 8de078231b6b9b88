"""Config -> the parts of a run: dataset, model, optimizer, KL schedule, the variant's extras,
evaluation options (the variant's parts come from its entry in trainer.variants.registry).
Pure builders with no Ray, shared by the Train worker, the evaluate CLI and the benchmarks.
"""

from __future__ import annotations

from typing import Any

import torch

from trainer.config import Config
from trainer.core.model import CascadeVAE
from trainer.core.schedule import CascadeSchedule, make_optimizer
from trainer.core.step import CapacitySchedule
from trainer.data.dsprites import DSprites, open_dsprites
from trainer.variants.registry import variant_of
from trainer.variants.types import Extras


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
    """The variant's model (trainer.variants.registry), on the CPU."""
    return variant_of(config).build_model(config)


def build_schedule(config: Config) -> CascadeSchedule:
    """The variant's KL weights over training."""
    return variant_of(config).build_schedule(config)


def build_extras(config: Config, device: torch.device | str = "cpu") -> Extras:
    """The variant's extra trained modules with their optimizers, and its step settings, on
    `device` (empty for a variant without any)."""
    return variant_of(config).build_extras(config, torch.device(device))


def build_capacities(config: Config) -> CapacitySchedule | None:
    """JointVAE's capacity ramp: the step settings of a variant with one (None otherwise)."""
    settings = build_extras(config).settings
    return settings if isinstance(settings, CapacitySchedule) else None


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
    options = {} if mode == "default" else {"mode": mode}
    for network in (model.encoder, model.decoder):
        network.forward = torch.compile(network.forward, **options)  # type: ignore[method-assign]


def build_optimizer(config: Config, model: torch.nn.Module):
    return make_optimizer(model, config.optim)


def evaluation_kwargs(config: Config) -> dict[str, Any]:
    """Keywords of trainer.eval.evaluate_model: the run's seed and every eval setting."""
    return {"seed": config.seed, **config.eval.model_dump()}
