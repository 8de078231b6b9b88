"""beta-VAE (Higgins et al., ICLR 2017) on the CascadeVAE networks and step: one KL weight
`model.beta` on every continuous dim from the first step, no discrete code."""

from __future__ import annotations

from trainer.core.schedule import CascadeSchedule
from trainer.variants.cascade import CascadeRun


def schedule(config: CascadeRun) -> CascadeSchedule:
    """The continuous-only schedule with beta_high = beta_low = `model.beta`."""
    beta = config.model.beta
    cascade = config.cascade.model_copy(update={"beta_high": beta, "beta_low": beta})
    return CascadeSchedule(cascade, config.model.num_continuous, discrete_stage=False)
