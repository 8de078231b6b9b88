"""The model-variant registry: every model this system trains, and what each one needs.

Everything that depends on the variant reads `VARIANTS` (looked up with `variant_of(config)`):
the allowed values of `model.variant` and the rules over them (trainer.config), the model, the
KL schedule and the extra trained parts (trainer.build), the step and the code chooser of the
loop (trainer.loop), the solver actor, the DDP wrapping and the checkpoints of the Train worker
(trainer.distributed.worker), the reported keys, and the study files (launch.study). No other
module branches on a variant's name.

Adding a variant is one file in this package (its builders and step, and its settings section
if it has one) and one entry below; a variant with settings also declares that section as a
field of `trainer.config.Config` (tests/test_variants.py checks that the two agree) and as a
property of `RunSettings` below.

Pure core: no Ray, no config module (trainer.config imports this one): a builder reads a run
config through `RunSettings`, which trainer.config.Config satisfies; a variant with a settings
section adds it there too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

import torch

from trainer.core.schedule import CascadeConfig
from trainer.variants import beta_vae, cascade, factorvae, jointvae
from trainer.variants.factorvae import FactorVAEConfig
from trainer.variants.jointvae import JointVAEConfig
from trainer.variants.types import (
    Codes,
    Extras,
    ModelSettings,
    StepFunction,
    TrainSettings,
    no_extras,
)

if TYPE_CHECKING:
    from trainer.core.model import CascadeVAE
    from trainer.core.schedule import CascadeSchedule


class RunSettings(Protocol):
    """What the variants' builders read of a run config: trainer.config.Config, with every
    variant's settings section."""

    @property
    def model(self) -> ModelSettings: ...
    @property
    def train(self) -> TrainSettings: ...
    @property
    def cascade(self) -> CascadeConfig: ...
    @property
    def jointvae(self) -> JointVAEConfig: ...
    @property
    def factorvae(self) -> FactorVAEConfig: ...


def never(config: RunSettings) -> bool:
    """For entries whose schedule does not follow `train.num_steps`."""
    return False


@dataclass(frozen=True)
class Variant:
    """One model variant."""

    name: str
    description: str
    has_code: bool
    """A discrete code of `model.num_categories` (>= 2) categories; without one, the model has
    K = 0 and the protocols that need codes are refused."""
    schedule_kind: Literal["cascade", "cascade_c"]
    """The KL schedule's kind: `cascade` has a discrete stage from
    `cascade.discrete_start_stage` on, `cascade_c` never has one (`build_schedule` gives
    trainer.core.schedule.CascadeSchedule the matching `discrete_stage`; tests/test_variants.py
    checks the two agree)."""
    codes: Codes
    """Who chooses the codes in the discrete stage."""
    build_model: Callable[[RunSettings], CascadeVAE]
    build_schedule: Callable[[RunSettings], CascadeSchedule]
    """The per-dim KL weights over training."""
    step: StepFunction
    loss_keys: Callable[[int, int], set[str]]
    """(num_continuous, num_categories) -> every loss key the step returns."""
    build_extras: Callable[[RunSettings, torch.device], Extras] = no_extras
    """The variant's extra trained modules, their optimizers and its step settings, on a device."""
    section: str | None = None
    """The config section holding the variant's settings (a field of Config), if any."""
    schedule_follows_num_steps: Callable[[RunSettings], bool] = never
    """Whether the trained state's schedule is a function of `train.num_steps`, which a resume
    then must not change (JointVAE's capacity ramp with `jointvae.capacity_steps: 0`)."""

    @property
    def has_discrete_stage(self) -> bool:
        return self.schedule_kind == "cascade"


VARIANTS: dict[str, Variant] = {
    variant.name: variant
    for variant in (
        Variant(
            name="cascade",
            description="CascadeVAE (Jeong & Song 2019): continuous dims relieved stage by "
            "stage, then a discrete code chosen by the global assignment solver",
            has_code=True,
            schedule_kind="cascade",
            codes=Codes.SOLVER,
            build_model=cascade.build_model,
            build_schedule=cascade.cascade_schedule,
            step=cascade.step,
            loss_keys=cascade.loss_keys,
        ),
        Variant(
            name="cascade_c",
            description="CascadeVAE-C: the cascade's continuous dims only, no discrete code",
            has_code=False,
            schedule_kind="cascade_c",
            codes=Codes.NONE,
            build_model=cascade.build_model,
            build_schedule=cascade.continuous_schedule,
            step=cascade.step,
            loss_keys=cascade.loss_keys,
        ),
        Variant(
            name="beta_vae",
            description="beta-VAE (Higgins et al. 2017): one KL weight `model.beta` on every "
            "continuous dim, no discrete code",
            has_code=False,
            schedule_kind="cascade_c",
            codes=Codes.NONE,
            build_model=cascade.build_model,
            build_schedule=beta_vae.schedule,
            step=cascade.step,
            loss_keys=cascade.loss_keys,
        ),
        Variant(
            name="jointvae",
            description="JointVAE (Dupont 2018): a Gumbel-softmax code and controlled "
            "capacities (the `jointvae` section)",
            has_code=True,
            schedule_kind="cascade_c",
            codes=Codes.NONE,
            build_model=jointvae.build_model,
            build_schedule=cascade.continuous_schedule,
            step=jointvae.step,
            loss_keys=jointvae.loss_keys,
            build_extras=jointvae.build_extras,
            section="jointvae",
            schedule_follows_num_steps=jointvae.ramp_follows_num_steps,
        ),
        Variant(
            name="oracle",
            description="CascadeVAE whose discrete stage decodes with the TRUE shape: a "
            "supervised known answer",
            has_code=True,
            schedule_kind="cascade",
            codes=Codes.ORACLE,
            build_model=cascade.build_model,
            build_schedule=cascade.cascade_schedule,
            step=cascade.step,
            loss_keys=cascade.loss_keys,
        ),
        Variant(
            name="factorvae",
            description="FactorVAE (Kim & Mnih 2018): the ELBO plus gamma times a total "
            "correlation estimate from a discriminator (the `factorvae` section), no discrete "
            "code",
            has_code=False,
            schedule_kind="cascade_c",
            codes=Codes.NONE,
            build_model=factorvae.build_model,
            build_schedule=factorvae.schedule,
            step=factorvae.step,
            loss_keys=factorvae.loss_keys,
            build_extras=factorvae.build_extras,
            section="factorvae",
        ),
    )
}
"""Every variant, in the order `model.variant` lists them."""


def names() -> list[str]:
    return list(VARIANTS)


def variant_of(config: RunSettings) -> Variant:
    """The registry entry of `config.model.variant` (validated by the config)."""
    return VARIANTS[config.model.variant]
