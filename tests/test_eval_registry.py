"""Tests of trainer.eval.registry and trainer.eval.options: every metric described, the
registry's settings exactly the `eval` section's, metric options as overrides of it.

Shape legend: N images, M continuous dims, V votes, P images per vote, K categories, S shapes.
"""

from __future__ import annotations

import pytest

from trainer.eval import (
    METRICS,
)


def test_metric_options_are_config_overrides_of_the_eval_section():
    from trainer.config import Config, apply_overrides
    from trainer.eval import metric_option_overrides
    from trainer.schema import ConfigError

    items = ["factorvae_num_train=100", "num_global=null", "kl_threshold=0.2", "mig_num_bins=10"]
    overrides = metric_option_overrides([*items, "factorvae_include_discrete=true"])
    assert overrides == [f"eval.{item}" for item in [*items, "factorvae_include_discrete=true"]]
    settings = Config.from_dict(apply_overrides({}, overrides)).eval
    assert (settings.factorvae_num_train, settings.num_global) == (100, None)
    assert (settings.kl_threshold, settings.mig_num_bins) == (0.2, 10)
    assert settings.factorvae_include_discrete is True
    with pytest.raises(ConfigError, match="expected key=value"):
        metric_option_overrides(["num_votes"])
    with pytest.raises(ConfigError) as info:
        metric_option_overrides(["no_such_key=1", "num_votes=5"])
    (problem,) = info.value.problems
    assert problem.startswith("--metric-option 'no_such_key=1': unknown option 'no_such_key'; ")
    assert "valid: num_global, batch_size, num_votes, vote_size, kl_threshold, " in problem
    # A declared option with a bad value is refused by the schema, naming the field and value.
    with pytest.raises(ConfigError, match=r"eval\.mig_num_bins: must be >= 1, got 0"):
        Config.from_dict(apply_overrides({}, metric_option_overrides(["mig_num_bins=0"])))


def test_protocols_describe_every_metric():
    assert list(METRICS) == [
        "authors_factorvae",
        "factorvae",
        "discrete_accuracy",
        "mig",
        "factor_dim_mi",
    ]
    assert "800 votes" in METRICS["authors_factorvae"].description
    assert "0.05" in METRICS["factorvae"].description
    assert "20 equal-width bins" in METRICS["mig"].description


def test_the_registry_declares_exactly_the_eval_settings():
    from trainer.eval import EvalConfig
    from trainer.eval.registry import option_names

    assert sorted(option_names()) == sorted(set(EvalConfig.model_fields) - {"protocols"})
    assert [m.keys for m in METRICS.values()] == [
        ("eval/authors_factorvae", "eval/active_dims"),
        ("eval/factorvae", "eval/factorvae_train"),
        ("eval/discrete_accuracy",),
        ("eval/mig",),
        ("eval/mi_shape_z",),
    ]
    assert [m.higher_is_better for m in METRICS.values()] == [True] * 4 + [None]
