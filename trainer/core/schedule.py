"""The cascade (information-flow) schedule and the authors' optimiser.

Shape legend:
    M  continuous latent dims
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

VARIANTS = ("cascade", "cascade_c")  # CascadeVAE (with a discrete code), CascadeVAE-C (without)


@dataclass(frozen=True)
class CascadeSchedule:
    """Which continuous dims are relieved and whether the discrete code is learned, as a pure
    function of the iteration (authors' defaults; 300,000 iterations give stages 0..14).

    Stage s = iteration // stage_length. The first r(s) dims get beta_low, the rest beta_high.
    cascade:   s < T: r = min(s + 1, M), discrete code held at zeros;
               s >= T: r = min(s, M), discrete code chosen by the solver.
    cascade_c: r = min(s + 1, M), never a discrete code.
    """

    num_continuous: int = 6
    """M, the number of continuous latent dims."""
    stage_length: int = 20_000
    """P, iterations per stage."""
    discrete_start_stage: int = 4
    """T, the first stage in which the discrete code is learned (cascade only)."""
    beta_high: float = 10.0
    """KL weight of a dim not yet relieved."""
    beta_low: float = 0.1
    """KL weight of a relieved dim."""
    variant: str = "cascade"
    """One of VARIANTS."""

    def __post_init__(self) -> None:
        if self.num_continuous < 1:
            raise ValueError(f"num_continuous must be >= 1, got {self.num_continuous}")
        if self.stage_length < 1:
            raise ValueError(f"stage_length must be >= 1, got {self.stage_length}")
        if self.discrete_start_stage < 0:
            raise ValueError(f"discrete_start_stage must be >= 0, got {self.discrete_start_stage}")
        if self.beta_high < 0 or self.beta_low < 0:
            raise ValueError(
                f"beta_high and beta_low must be >= 0, got {self.beta_high}, {self.beta_low}"
            )
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")

    def stage(self, iteration: int) -> int:
        if iteration < 0:
            raise ValueError(f"iteration must be >= 0, got {iteration}")
        return iteration // self.stage_length

    def discrete_active(self, iteration: int) -> bool:
        return self.variant == "cascade" and self.stage(iteration) >= self.discrete_start_stage

    def num_relieved(self, iteration: int) -> int:
        """r: how many leading dims get beta_low at this iteration."""
        s = self.stage(iteration)
        # Entering the discrete stage spends one stage on the code instead of a new dim.
        r = s if self.discrete_active(iteration) else s + 1
        return min(r, self.num_continuous)

    def betas(self, iteration: int) -> np.ndarray:
        """(M,) float64 KL weights: beta_low for the first r dims, beta_high for the rest."""
        betas_M = np.full(self.num_continuous, self.beta_high, dtype=np.float64)
        betas_M[: self.num_relieved(iteration)] = self.beta_low
        return betas_M


class StaircaseDecay:
    """LR multiplier decay_rate ** (iteration // decay_every). A callable object rather than a
    lambda so that LambdaLR's state dict records its parameters."""

    def __init__(self, decay_every: int, decay_rate: float) -> None:
        if decay_every < 1:
            raise ValueError(f"decay_every must be >= 1, got {decay_every}")
        if not 0.0 < decay_rate <= 1.0:
            raise ValueError(f"decay_rate must be in (0, 1], got {decay_rate}")
        self.decay_every = decay_every
        self.decay_rate = decay_rate

    def __call__(self, iteration: int) -> float:
        return self.decay_rate ** (iteration // self.decay_every)


def make_optimizer(
    model: nn.Module,
    *,
    lr: float = 1e-4,
    adam_betas: tuple[float, float] = (0.9, 0.999),
    decay_every: int = 50_000,
    decay_rate: float = 0.3,
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """Adam with the authors' staircase decay (lr x0.3 every 50,000 iterations).

    Step the scheduler once per iteration, after optimizer.step(): the lr of iteration t is
    then lr * decay_rate ** (t // decay_every), and it resumes from the scheduler state dict.
    """
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=adam_betas)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, StaircaseDecay(decay_every, decay_rate)
    )
    return optimizer, scheduler
