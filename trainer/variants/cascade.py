"""CascadeVAE (Jeong & Song, ICML 2019) and the variants on its networks, step and schedule:
`cascade`, `cascade_c` (continuous only) and `oracle` (codes from the true shapes); beta-VAE
also trains through this step.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any, Protocol

import torch
from torch import nn

from trainer.core.losses import loss_keys as _loss_keys
from trainer.core.model import CascadeVAE
from trainer.core.schedule import CascadeConfig, CascadeSchedule
from trainer.core.step import train_step
from trainer.variants.types import Extras, ModelSettings


class CascadeRun(Protocol):
    """What these builders read of a run config (trainer.config.Config)."""

    @property
    def model(self) -> ModelSettings: ...
    @property
    def cascade(self) -> CascadeConfig: ...


def build_model(config: CascadeRun) -> CascadeVAE:
    """The authors' encoder and decoder with K = `model.effective_categories` codes."""
    m = config.model
    return CascadeVAE(num_continuous=m.num_continuous, num_categories=m.effective_categories)


def cascade_schedule(config: CascadeRun) -> CascadeSchedule:
    """The cascade's KL weights with its discrete stage."""
    return CascadeSchedule(config.cascade, config.model.num_continuous, discrete_stage=True)


def continuous_schedule(config: CascadeRun) -> CascadeSchedule:
    """The cascade's KL weights without a discrete stage (CascadeVAE-C; JointVAE, whose
    objective has no betas, uses it only for the latent size)."""
    return CascadeSchedule(config.cascade, config.model.num_continuous, discrete_stage=False)


def step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    images_B1HW: torch.Tensor,
    *,
    extras: Extras,
    **common: Any,
) -> MutableMapping[str, float]:
    """trainer.core.step.train_step (the variant has no extras)."""
    return train_step(model, optimizer, scheduler, images_B1HW, **common)


def loss_keys(num_continuous: int, num_categories: int) -> set[str]:
    return _loss_keys(num_continuous, num_categories, jointvae=False)
