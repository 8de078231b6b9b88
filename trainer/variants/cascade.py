"""CascadeVAE (Jeong & Song, ICML 2019) and the variants on its networks, step and schedule:
`cascade`, `cascade_c` (continuous only) and `oracle` (codes from the true shapes); beta-VAE
also trains through this step.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from trainer.core.losses import loss_keys as _loss_keys
from trainer.core.model import CascadeVAE
from trainer.core.schedule import CascadeSchedule
from trainer.core.step import train_step

if TYPE_CHECKING:
    from trainer.config import Config
    from trainer.variants.types import Extras


def build_model(config: Config) -> CascadeVAE:
    """The authors' encoder and decoder with K = `model.effective_categories` codes."""
    m = config.model
    return CascadeVAE(num_continuous=m.num_continuous, num_categories=m.effective_categories)


def cascade_schedule(config: Config) -> CascadeSchedule:
    """The cascade's KL weights with its discrete stage."""
    return CascadeSchedule(config.cascade, config.model.num_continuous, "cascade")


def continuous_schedule(config: Config) -> CascadeSchedule:
    """The cascade's KL weights without a discrete stage (CascadeVAE-C; JointVAE, whose
    objective has no betas, uses it only for the latent size)."""
    return CascadeSchedule(config.cascade, config.model.num_continuous, "cascade_c")


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
