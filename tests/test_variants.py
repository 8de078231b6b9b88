"""The model-variant registry: what the config, the builders and the loop read from it."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest
import torch

from trainer.build import build_extras, build_model, build_schedule
from trainer.config import Config, ModelConfig, load_config
from trainer.core.model import CascadeVAE
from trainer.schema import Schema
from trainer.variants.registry import VARIANTS, variant_of
from trainer.variants.types import Codes, Extras

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
CORE_SECTIONS = {"data", "model", "cascade", "solver", "optim", "train", "eval"}


def _config(variant: str) -> Config:
    raw = {"model": {"variant": variant}, "train": {"num_steps": 100}}
    raw["cascade"] = {"stage_length": 10, "discrete_start_stage": 1}
    if not VARIANTS[variant].has_code:
        raw["eval"] = {"protocols": ["authors_factorvae"]}
    return Config.from_dict(raw)


def test_model_variant_allows_exactly_the_registered_names():
    allowed = typing.get_args(ModelConfig.model_fields["variant"].annotation)
    assert list(allowed) == list(VARIANTS)


def test_every_variant_section_is_a_config_section_and_back():
    sections = {
        name
        for name, field in Config.model_fields.items()
        if isinstance(field.annotation, type) and issubclass(field.annotation, Schema)
    }
    declared = {v.section for v in VARIANTS.values() if v.section is not None}
    assert declared <= sections
    assert sections - CORE_SECTIONS == declared  # no section without its variant


@pytest.mark.parametrize("name", list(VARIANTS))
def test_each_variant_builds_what_its_entry_says(name):
    variant = VARIANTS[name]
    config = _config(name)
    assert variant_of(config) is variant
    model = build_model(config)
    assert isinstance(model, CascadeVAE)
    assert (model.num_categories > 0) is variant.has_code
    assert config.model.effective_categories == model.num_categories
    schedule = build_schedule(config)
    assert schedule.num_continuous == config.model.num_continuous
    assert any(schedule.discrete_active(t) for t in range(100)) is variant.has_discrete_stage
    extras = build_extras(config)
    assert isinstance(extras, Extras)
    # Only variants with a discrete stage need a chooser; only the cascade calls the solver.
    if not variant.has_discrete_stage:
        assert variant.codes is Codes.NONE


def test_a_variant_without_a_code_refuses_the_code_protocols():
    for name, variant in VARIANTS.items():
        raw = {"model": {"variant": name}, "eval": {"protocols": ["discrete_accuracy"]}}
        raw["train"] = {"num_steps": 100}
        raw["cascade"] = {"stage_length": 10, "discrete_start_stage": 1}
        if variant.has_code:
            Config.from_dict(raw)
        else:
            with pytest.raises(ValueError, match="discrete_accuracy needs a discrete code"):
                Config.from_dict(raw)


def test_extras_round_trip_their_modules_and_optimizers():
    net = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.1)
    net(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    extras = Extras(modules={"d": net}, optimizers={"d": optimizer})
    state = extras.state_dict()
    other_net = torch.nn.Linear(3, 2)
    other = Extras(
        modules={"d": other_net},
        optimizers={"d": torch.optim.Adam(other_net.parameters(), lr=0.1)},
    )
    other.load_state_dict(state)
    assert torch.equal(other_net.weight, net.weight)
    assert other.optimizers["d"].state_dict()["state"][0]["step"] == 1
    with pytest.raises(ValueError, match="no state of the variant's modules"):
        other.load_state_dict({})
    assert Extras().state_dict() == {}
    Extras().load_state_dict({})  # nothing to load, nothing asked


def test_every_config_file_names_a_registered_variant():
    for path in CONFIGS.glob("*.yaml"):
        from trainer.config import read_yaml

        variant = read_yaml(path).get("model", {}).get("variant", "cascade")
        assert variant in VARIANTS, path


def test_a_study_model_named_after_a_variant_trains_that_variant(tmp_path):
    import yaml

    from launch.study import load_study

    raw = {
        "base": str(CONFIGS / "debug.yaml"),
        "set": {"eval.protocols": ["authors_factorvae"]},
        "models": {
            "beta_vae": {"seeds": [0]},  # the variant by its name
            "cascade_c": {"seeds": [0], "set": {"model.variant": "beta_vae"}},  # set wins
            "mine": {"seeds": [0]},  # not a variant's name: the base's variant
        },
        "storage_path": str(tmp_path / "runs"),
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    study = load_study(path)
    variant = {run: study.trial_config({"run": run}).model.variant for run in study.runs}
    assert variant == {"beta_vae-s0": "beta_vae", "cascade_c-s0": "beta_vae", "mine-s0": "cascade"}


def test_num_steps_is_trained_state_only_where_the_variants_schedule_follows_it():
    """JointVAE's capacity ramp over the whole run (`capacity_steps: 0`) makes `num_steps`
    part of the trained state; with a fixed ramp, or for the cascade, a resume may add steps."""
    from trainer.run_folder import state_fields

    ramp = load_config(
        CONFIGS / "debug.yaml", ["model.variant=jointvae", "jointvae.capacity_steps=0"]
    )
    fixed = load_config(
        CONFIGS / "debug.yaml", ["model.variant=jointvae", "jointvae.capacity_steps=30"]
    )
    assert "train.num_steps" in state_fields(ramp)
    assert "train.num_steps" not in state_fields(fixed)
    assert "train.num_steps" not in state_fields(load_config(CONFIGS / "debug.yaml"))
