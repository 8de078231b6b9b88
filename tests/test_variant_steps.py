"""Tests of the steps of the model variants (trainer.variants: beta_vae, oracle, jointvae)
against known answers: the KL weights, the codes decoded, the capacity ramp.

Shape suffixes (CONTRIBUTING.md): B batch, K categories.
"""

from __future__ import annotations

import pytest
import torch

from trainer.config import OptimConfig
from trainer.core.model import JointVAE
from trainer.core.schedule import make_optimizer
from trainer.core.step import train_step


def _variant_config(variant: str, **model):
    from trainer.config import Config

    raw = {"model": {"variant": variant, **model}, "train": {"num_steps": 100}}
    raw["cascade"] = {"stage_length": 10, "discrete_start_stage": 1}
    raw["jointvae"] = {"capacity_steps": 50}
    if variant in ("beta_vae", "cascade_c"):
        raw["eval"] = {"protocols": ["authors_factorvae"]}
    return Config.from_dict(raw)


def test_beta_vae_weighs_every_dim_with_beta_from_the_first_step():
    from trainer.build import build_model, build_schedule

    config = _variant_config("beta_vae", beta=6.0)
    model, schedule = build_model(config), build_schedule(config)
    assert model.num_categories == 0
    for iteration in (0, 35, 99):
        assert schedule.betas(iteration).tolist() == [6.0] * 6
        assert not schedule.discrete_active(iteration)


def test_oracle_decodes_with_the_true_shapes():
    import numpy as np

    from trainer.build import build_model, build_schedule
    from trainer.loop import true_shape_codes

    config = _variant_config("oracle")
    torch.manual_seed(0)
    model, schedule = build_model(config), build_schedule(config)
    optimizer, scheduler = make_optimizer(model)
    shapes = np.array([2, 0, 1, 1])
    metrics = train_step(
        model, optimizer, scheduler, (torch.rand(4, 1, 64, 64) > 0.5).float(),
        iteration=15, schedule=schedule, eps_generator=torch.Generator().manual_seed(0),
        choose_codes=true_shape_codes(shapes), shapes_B=shapes,
    )  # fmt: skip
    assert metrics["discrete/active"] == 1.0
    assert [metrics[f"codes/count_{k}"] for k in range(3)] == [1.0, 2.0, 1.0]
    assert metrics["codes/joint_k2_s2"] == 1.0 and metrics["codes/joint_k0_s1"] == 0.0


def test_jointvae_step_follows_the_capacity_ramp_and_lowers_its_loss():
    from trainer.build import build_capacities, build_model, build_schedule

    config = _variant_config("jointvae")
    torch.manual_seed(0)
    model, schedule = build_model(config), build_schedule(config)
    assert isinstance(model, JointVAE)
    capacities = build_capacities(config)
    assert capacities.steps == 50 and capacities.gamma == 150.0
    optimizer, scheduler = make_optimizer(model, OptimConfig(lr=1e-3))
    x = (torch.rand(8, 1, 64, 64) > 0.9).float()
    generator = torch.Generator().manual_seed(0)
    losses = []
    for iteration in range(30):
        metrics = train_step(
            model, optimizer, scheduler, x, iteration=iteration, schedule=schedule,
            eps_generator=generator, capacities=capacities, weight_penalty_coef=0.0,
        )  # fmt: skip
        losses.append(metrics["loss/recon"])
    assert metrics["capacity/z"] == pytest.approx(40.0 * 29 / 50)
    assert metrics["capacity/c"] == pytest.approx(1.1 * 29 / 50)
    assert sum(metrics[f"codes/count_{k}"] for k in range(3)) == 8
    assert losses[-1] < 0.6 * losses[0]
    with pytest.raises(ValueError, match="capacities"):
        train_step(
            model, optimizer, scheduler, x, iteration=0, schedule=schedule,
            eps_generator=generator,
        )  # fmt: skip
