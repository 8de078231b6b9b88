"""beta-VAE (Higgins et al., ICLR 2017) on the CascadeVAE networks and step: one KL weight
`model.beta` on every continuous dim from the first step, no discrete code."""

from __future__ import annotations

from typing import TYPE_CHECKING

from trainer.core.schedule import CascadeSchedule

if TYPE_CHECKING:
    from trainer.config import Config


def schedule(config: Config) -> CascadeSchedule:
    """The continuous-only schedule with beta_high = beta_low = `model.beta`."""
    beta = config.model.beta
    cascade = config.cascade.model_copy(update={"beta_high": beta, "beta_low": beta})
    return CascadeSchedule(cascade, config.model.num_continuous, "cascade_c")
