"""The types a variant's entry is made of: who chooses its codes, the extra parts its step
trains or reads (trainer.variants.registry), and the parts of a run config its builders read.

The config module imports the variants (their names and settings sections), so the variants
name no config module: their builders read a run config through the protocols below, which
trainer.config.Config and its sections satisfy."""

from __future__ import annotations

import enum
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn


class ModelSettings(Protocol):
    """The `model` section as the variants read it (trainer.config.ModelConfig)."""

    @property
    def variant(self) -> str: ...
    @property
    def num_continuous(self) -> int: ...
    @property
    def num_categories(self) -> int: ...
    @property
    def effective_categories(self) -> int: ...
    @property
    def beta(self) -> float: ...


class TrainSettings(Protocol):
    """The `train` section as the variants read it (trainer.config.TrainConfig)."""

    @property
    def num_steps(self) -> int: ...


class Codes(enum.Enum):
    """Who chooses the discrete codes of a step in the discrete stage."""

    SOLVER = "solver"
    """The central assignment solver (a Ray actor; trainer.distributed.codes)."""
    ORACLE = "oracle"
    """The true shapes of the batch (a supervised known answer)."""
    NONE = "none"
    """Nobody: no discrete stage, or the model infers its own code (JointVAE)."""


@dataclass
class Extras:
    """What a variant's step needs besides the VAE, its optimizer and its KL schedule.

    `modules` are networks the variant trains besides the VAE, `optimizers` their optimizers:
    both go into every checkpoint and come back on resume (`state_dict`), and the Train worker
    wraps the modules for DDP as it wraps the VAE (`wrap`). `settings` are plain values the
    step reads (JointVAE's capacity ramp, FactorVAE's gamma).
    """

    modules: dict[str, nn.Module] = field(default_factory=dict)
    optimizers: dict[str, torch.optim.Optimizer] = field(default_factory=dict)
    settings: Any = None

    def module(self, name: str) -> nn.Module:
        """The module `name` without its DDP wrapper (what a checkpoint stores)."""
        module = self.modules[name]
        inner = getattr(module, "module", module)
        assert isinstance(inner, nn.Module)
        return inner

    def state_dict(self) -> dict[str, Any]:
        """The modules' and optimizers' states; {} when there are none."""
        if not self.modules and not self.optimizers:
            return {}
        return {
            "modules": {name: self.module(name).state_dict() for name in self.modules},
            "optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load `state_dict()`'s output; a missing part raises naming it."""
        if not self.modules and not self.optimizers:
            return
        for kind, parts in (("modules", self.modules), ("optimizers", self.optimizers)):
            missing = sorted(set(parts) - set(state.get(kind, {})))
            if missing:
                raise ValueError(f"the checkpoint holds no state of the variant's {kind} {missing}")
        for name in self.modules:
            self.module(name).load_state_dict(state["modules"][name])
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][name])

    def wrap(self, prepare: Callable[[nn.Module], nn.Module]) -> None:
        """Replace every module by `prepare(module)` (Ray Train's prepare_model: DDP with more
        than one worker); the optimizers keep the same parameters."""
        self.modules = {name: prepare(module) for name, module in self.modules.items()}


def no_extras(config: object, device: torch.device) -> Extras:
    return Extras()


StepFunction = Callable[..., MutableMapping[str, float]]
"""`step(model, optimizer, scheduler, images_B1HW, *, iteration, schedule, eps_generator,
choose_codes, weight_penalty_coef, shapes_B, extras, metrics_on_device, autocast_bf16)` ->
the step's metrics (a dict of floats, or a StepMetrics with `metrics_on_device`), as
trainer.core.step.train_step."""
