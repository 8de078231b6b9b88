"""The evaluation settings (the `eval` section of a config): which protocols run, and every
option of every metric with its default. The one place those defaults are set; `evaluate_model`
and `launch.evaluate` read them from here.
"""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import Field, field_validator

from trainer.eval.authors_factorvae import (
    AUTHORS_KL_THRESHOLD,
    AUTHORS_NUM_GLOBAL,
    AUTHORS_NUM_VOTES,
    AUTHORS_VOTE_SIZE,
)
from trainer.eval.factorvae import (
    FACTORVAE_NUM_EVAL,
    FACTORVAE_NUM_TRAIN,
    FACTORVAE_STD_THRESHOLD,
    FACTORVAE_VOTE_SIZE,
)
from trainer.eval.mig import MIG_NUM_BINS
from trainer.eval.registry import METRICS, option_names
from trainer.schema import ConfigError, Float, Schema, parse_override


class EvalConfig(Schema):
    protocols: list[str] = Field(default_factory=lambda: ["authors_factorvae", "discrete_accuracy"])
    """Metrics computed every `train.eval_every` steps and at the end: names in
    trainer.eval.registry.METRICS."""
    num_global: int | None = Field(AUTHORS_NUM_GLOBAL, ge=2)
    """Images of the global sample shared by every protocol (variances, KL activity, discrete
    accuracy, MIG); null: every image of the dataset."""
    batch_size: int = Field(256, ge=1)
    """Images per encoder batch (x K decoder rows for codes); as fast as 1024 here, less memory."""
    num_votes: int = Field(AUTHORS_NUM_VOTES, ge=1)
    """authors_factorvae: votes, split evenly over the factors that vary (authors: 800)."""
    vote_size: int = Field(AUTHORS_VOTE_SIZE, ge=2)
    """authors_factorvae: images per vote (authors: 100)."""
    kl_threshold: Float = Field(AUTHORS_KL_THRESHOLD, ge=0)
    """authors_factorvae: a continuous dim is kept when its mean KL is above this (nats)."""
    factorvae_num_train: int = Field(FACTORVAE_NUM_TRAIN, ge=1)
    """factorvae: votes the majority-vote classifier is fit on."""
    factorvae_num_eval: int = Field(FACTORVAE_NUM_EVAL, ge=1)
    """factorvae: held-out votes it is scored on."""
    factorvae_vote_size: int = Field(FACTORVAE_VOTE_SIZE, ge=2)
    """factorvae: images per vote."""
    factorvae_std_threshold: Float = Field(FACTORVAE_STD_THRESHOLD, ge=0)
    """factorvae: dims with a global standard deviation below this are pruned."""
    factorvae_include_discrete: bool = False
    """factorvae: also vote with the discrete code as one more dim (Gini variances)."""
    mig_num_bins: int = Field(MIG_NUM_BINS, ge=1)
    """mig and factor_dim_mi: equal-width bins of each continuous dim."""

    @field_validator("protocols")
    @classmethod
    def _registered(cls, protocols: list[str]) -> list[str]:
        unknown = [p for p in protocols if p not in METRICS]
        if unknown:
            raise ValueError(f"unknown {unknown}; choose from {list(METRICS)}")
        return protocols


def metric_option_overrides(items: Iterable[str]) -> list[str]:
    """`--metric-option KEY=VALUE` items -> `eval.KEY=VALUE` config overrides, read by the same
    parser as `--set`; a KEY that no metric declares is refused, naming it and the valid keys."""
    problems, overrides = [], []
    valid = option_names()
    for item in items:
        path, _ = parse_override(item, flag="--metric-option")
        key = ".".join(path)
        if key not in valid:
            problems.append(
                f"--metric-option {item!r}: unknown option {key!r}; valid: {', '.join(valid)}"
            )
        else:
            overrides.append(f"eval.{item.strip()}")
    if problems:
        raise ConfigError(problems, "--metric-option")
    return overrides
