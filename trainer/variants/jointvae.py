"""JointVAE (Dupont, NeurIPS 2018) on the CascadeVAE networks: the encoder also gives the logits
of a K-way code, sampled by Gumbel-softmax in training, and two controlled capacities replace the
KL weights (trainer.core.model.JointVAE, trainer.core.losses.jointvae_terms).
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any, Protocol

import torch
from pydantic import Field
from torch import nn

from trainer.core.losses import loss_keys as _loss_keys
from trainer.core.model import JointVAE
from trainer.core.step import CapacitySchedule, train_step
from trainer.schema import Float, Schema
from trainer.variants.types import Extras, ModelSettings, TrainSettings


class JointVAEConfig(Schema):
    """Settings of `model.variant: jointvae` (Dupont 2018; his dSprites values as defaults)."""

    temperature: Float = Field(0.67, gt=0)
    """Gumbel-softmax temperature."""
    gamma: Float = Field(150.0, ge=0)
    """Weight of both capacity terms gamma * |KL - C|."""
    continuous_capacity: Float = Field(40.0, ge=0)
    """C_z at the end of the ramp, nats (sum over continuous dims)."""
    discrete_capacity: Float = Field(1.1, ge=0)
    """C_c at the end of the ramp, nats (capped at log K)."""
    capacity_steps: int = Field(0, ge=0)
    """Iterations over which both capacities rise linearly from 0; 0 = train.num_steps."""


class JointVAERun(Protocol):
    """What these builders read of a run config (trainer.config.Config)."""

    @property
    def model(self) -> ModelSettings: ...
    @property
    def train(self) -> TrainSettings: ...
    @property
    def jointvae(self) -> JointVAEConfig: ...


def build_model(config: JointVAERun) -> JointVAE:
    m = config.model
    return JointVAE(m.num_continuous, m.num_categories, config.jointvae.temperature)


def capacities(config: JointVAERun) -> CapacitySchedule:
    """The capacity ramp of the `jointvae` section (capacity_steps 0: the whole run)."""
    j = config.jointvae
    return CapacitySchedule(
        gamma=j.gamma,
        continuous=j.continuous_capacity,
        discrete=j.discrete_capacity,
        steps=j.capacity_steps or config.train.num_steps,
    )


def ramp_follows_num_steps(config: JointVAERun) -> bool:
    """The capacities rise over the whole run (`capacity_steps: 0`)."""
    return config.jointvae.capacity_steps == 0


def build_extras(config: JointVAERun, device: torch.device) -> Extras:
    return Extras(settings=capacities(config))


def step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    images_B1HW: torch.Tensor,
    *,
    extras: Extras,
    **common: Any,
) -> MutableMapping[str, float]:
    """trainer.core.step.train_step on a JointVAE with the capacities of `extras.settings`."""
    return train_step(
        model, optimizer, scheduler, images_B1HW, capacities=extras.settings, **common
    )


def loss_keys(num_continuous: int, num_categories: int) -> set[str]:
    return _loss_keys(num_continuous, num_categories, jointvae=True)
