"""Every scalar key a run reports: the keys of a log interval and of a report to Ray Train.

The Train worker reports these keys and the sweeps and studies (launch.sweep, launch.study)
check the metrics they name against them, so both read this module.
"""

from __future__ import annotations

from trainer.config import Config
from trainer.core.agreement import agreement_keys
from trainer.core.step import STEP_KEYS
from trainer.eval import output_keys, table_keys
from trainer.variants.registry import variant_of
from trainer.variants.types import Codes

PERF_KEYS = ("perf/data_ms", "perf/train_step_ms", "perf/images_per_s", "perf/step_ms")
"""Timing keys of every interval (plus perf/code_wait_share with a solver)."""
CODE_TIMING_NAMES = (
    "solve_ms",
    "round_trip_ms",
    "gather_ms",
    "wait_ms",
    "to_host_ms",
    "broadcast_ms",
    "to_device_ms",
)
"""The code exchange's timings (trainer.distributed.codes.CodeTimings), reported as
`solver/<name>`."""
CODE_TIMING_KEYS = tuple(f"solver/{name}" for name in CODE_TIMING_NAMES)
CHECKPOINT_SCORE = "checkpoint/score"
"""Report key Ray Train ranks checkpoints by when `train.keep_best_by` is set."""


def evaluation_keys(config: Config) -> set[str]:
    """The keys an evaluation adds (trainer.observe.hooks.EvaluationHook): the protocols'
    outputs and tables, and `perf/eval_s`."""
    protocols, model = config.eval.protocols, config.model
    tables = table_keys(protocols, model.num_continuous, model.effective_categories)
    return set(output_keys(protocols)) | set(tables) | {"perf/eval_s"}


def interval_keys(config: Config) -> set[str]:
    """Every key an interval of a run with `config` can hold: the step's metrics, the solver's
    timings, the code agreement, the timings of `trainer.observe.cadence.Hooks.summary`, and
    the evaluation's keys."""
    model, variant = config.model, variant_of(config)
    categories = model.effective_categories
    keys = variant.loss_keys(model.num_continuous, categories)
    keys |= set(STEP_KEYS) | set(PERF_KEYS)
    if categories:
        keys |= agreement_keys(categories)
    if variant.codes is Codes.SOLVER:
        keys |= set(CODE_TIMING_KEYS) | {"perf/code_wait_share"}
    return keys | evaluation_keys(config)


def reported_keys(config: Config) -> set[str]:
    """Every scalar name a training run with `config` reports to Ray (and so to Tune)."""
    keys = interval_keys(config) | {"step"}
    return keys | {CHECKPOINT_SCORE} if config.train.keep_best_by else keys
