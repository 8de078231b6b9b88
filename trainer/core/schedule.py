"""The cascade (information-flow) schedule and the authors' optimiser, with their settings: the
`cascade` and `optim` sections of a run config (trainer.config reads them from here, so that
the core imports no config module).

Shape legend:
    M  continuous latent dims
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from trainer.schema import Float, Schema

AdamImplementation = Literal["auto", "for_loop", "foreach", "fused"]


class CascadeConfig(Schema):
    """The `cascade` section of a run config: the information-flow schedule."""

    stage_length: int = Field(20_000, ge=1)
    """P, iterations per stage of the cascade (authors: 20,000)."""
    discrete_start_stage: int = Field(4, ge=0)
    """T, the first stage in which the discrete code is learned (authors: 4)."""
    code_only_stages: int = Field(1, ge=1)
    """D, the stages of the discrete stage that relieve no new dim, so the code meets no new
    competitor for D x stage_length steps (authors: 1, i.e. one stage spent on the code). Dims
    whose turn comes after train.num_steps are never relieved."""
    beta_high: Float = Field(10.0, ge=0)
    """beta_h, the KL weight of dims not yet relieved (authors: 10)."""
    beta_low: Float = Field(0.1, ge=0)
    """beta_l, the KL weight of relieved dims (authors: 0.1)."""

    @property
    def discrete_start_step(self) -> int:
        """The iteration at which the discrete stage starts: stage_length x discrete_start_stage
        (the steps done before the first discrete step)."""
        return self.stage_length * self.discrete_start_stage


class OptimConfig(Schema):
    """The `optim` section of a run config: the VAE's Adam and its staircase decay."""

    lr: Float = Field(1e-4, gt=0)
    """Adam learning rate (authors: 1e-4)."""
    adam_beta1: Float = Field(0.9, ge=0, lt=1)
    adam_beta2: Float = Field(0.999, ge=0, lt=1)
    decay_every: int = Field(50_000, ge=1)
    """Staircase decay period in iterations (authors: 50,000)."""
    decay_rate: Float = Field(0.3, gt=0, le=1)
    """Learning-rate factor applied every `decay_every` iterations (authors: 0.3)."""
    implementation: AdamImplementation = "auto"
    """torch's Adam kernels: `for_loop` (one parameter at a time), `foreach` (grouped tensor
    ops), `fused` (fused kernels, CUDA or CPU), or `auto`: fused on CUDA, foreach elsewhere."""


@dataclass(frozen=True)
class CascadeSchedule:
    """Which continuous dims are relieved and whether the discrete code is learned, as a pure
    function of the iteration (authors' defaults; 300,000 iterations give stages 0..14).

    Stage s = iteration // stage_length. The first r(s) dims get beta_low, the rest beta_high.
    cascade:   s < T: r = min(s + 1, M), discrete code held at zeros;
               s >= T: r = min(max(T, s + 1 - D), M), discrete code chosen by the solver
               (authors' D = 1: r = min(s, M)).
    cascade_c: r = min(s + 1, M), never a discrete code.

    Its settings are a validated `CascadeConfig` (P, T, D, beta_high, beta_low) and the model's
    M; they are not checked again here.
    """

    cascade: CascadeConfig = field(default_factory=CascadeConfig)
    num_continuous: int = 6
    """M, the number of continuous latent dims (model.num_continuous)."""
    discrete_stage: bool = True
    """Whether the code is learned from stage T on (`cascade`) or never (`cascade_c`): set by
    the model variant's entry in trainer.variants, not a config field."""

    @property
    def stage_length(self) -> int:
        return self.cascade.stage_length

    @property
    def discrete_start_stage(self) -> int:
        return self.cascade.discrete_start_stage

    @property
    def beta_high(self) -> float:
        return self.cascade.beta_high

    @property
    def beta_low(self) -> float:
        return self.cascade.beta_low

    def stage(self, iteration: int) -> int:
        if iteration < 0:
            raise ValueError(f"iteration must be >= 0, got {iteration}")
        return iteration // self.stage_length

    def discrete_active(self, iteration: int) -> bool:
        return self.discrete_stage and self.stage(iteration) >= self.discrete_start_stage

    def num_relieved(self, iteration: int) -> int:
        """r: how many leading dims get beta_low at this iteration."""
        s = self.stage(iteration)
        # The discrete stage spends its first D stages on the code instead of new dims.
        if self.discrete_active(iteration):
            r = max(self.discrete_start_stage, s + 1 - self.cascade.code_only_stages)
        else:
            r = s + 1
        return min(r, self.num_continuous)

    def betas(self, iteration: int) -> np.ndarray:
        """(M,) float64 KL weights: beta_low for the first r dims, beta_high for the rest."""
        betas_M = np.full(self.num_continuous, self.beta_high, dtype=np.float64)
        betas_M[: self.num_relieved(iteration)] = self.beta_low
        return betas_M


class StaircaseDecay:
    """LR multiplier decay_rate ** (iteration // decay_every). A callable object rather than a
    lambda so that LambdaLR's state dict records its parameters (validated by OptimConfig)."""

    def __init__(self, decay_every: int, decay_rate: float) -> None:
        self.decay_every = decay_every
        self.decay_rate = decay_rate

    def __call__(self, iteration: int) -> float:
        return self.decay_rate ** (iteration // self.decay_every)


def adam_implementation(implementation: str, device: torch.device) -> str:
    """The Adam kernels a run uses on `device`: `implementation` itself, or for `auto` the fused
    kernel on CUDA and the foreach one elsewhere (on CPU it gives the for-loop kernel's
    numbers bit for bit: tests/test_schedule.py)."""
    if implementation != "auto":
        return implementation
    return "fused" if device.type == "cuda" else "foreach"


def make_optimizer(
    model: nn.Module, optim: OptimConfig | None = None
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """Adam with the authors' staircase decay (lr x0.3 every 50,000 iterations with the
    OptimConfig defaults), on the kernels `optim.implementation` names (see
    adam_implementation; `auto` looks at the device of the model's first parameter).

    Step the scheduler once per iteration, after optimizer.step(): the lr of iteration t is
    then lr * decay_rate ** (t // decay_every), and it resumes from the scheduler state dict.
    """
    o = optim or OptimConfig()
    params = list(model.parameters())
    device = params[0].device if params else torch.device("cpu")
    chosen = adam_implementation(o.implementation, device)
    optimizer = torch.optim.Adam(
        params,
        lr=o.lr,
        betas=(o.adam_beta1, o.adam_beta2),
        foreach=chosen == "foreach",
        fused=chosen == "fused",
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, StaircaseDecay(o.decay_every, o.decay_rate)
    )
    return optimizer, scheduler
