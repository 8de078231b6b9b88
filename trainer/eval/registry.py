"""The metric registry: every evaluation protocol, what it computes and what it reports.

Everything that names protocols or their output keys reads `METRICS`: the validation of
`eval.protocols` and `train.keep_best_by` (trainer.eval.options, trainer.config), the metric
checks of sweep and study files (launch.sweep, launch.study), `launch.evaluate` (`--protocols`,
`--metric-option`), `evaluate_model` and the final metrics of the TensorBoard hparams view.

The options of a metric are fields of the evaluation settings (`EvalConfig`, the `eval` section of
a config), which hold their defaults; `Metric.options` maps each field to the keyword of the
metric's compute function.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from trainer.eval import authors_factorvae, discrete_accuracy, factor_dim_mi, factorvae, mig
from trainer.eval.types import MetricResult


@dataclass(frozen=True)
class Output:
    """One scalar a metric reports."""

    key: str
    """Flat name, as in TensorBoard and `ray.train.report` (`eval/mig`)."""
    read: Callable[[MetricResult], float]
    """Reads the value from the metric's result."""
    description: str
    higher_is_better: bool | None = True
    """None: a count that is neither better nor worse (it cannot rank checkpoints)."""


@dataclass(frozen=True)
class Metric:
    """One evaluation protocol.

    `compute(represent, dataset, rng, *, global_sample, **kwargs)` returns a MetricResult; its
    first output is the score.
    """

    name: str
    compute: Callable[..., MetricResult]
    outputs: tuple[Output, ...]
    description: str
    options: Mapping[str, str] = field(default_factory=dict)
    """Evaluation setting (an `EvalConfig` field) -> keyword of `compute`."""
    needs_codes: bool = False
    """Refused for a model without a discrete code."""
    reads_codes: Callable[[Mapping[str, Any]], bool] = lambda kwargs: True
    """Whether, with these `compute` keywords, it reads the discrete code when there is one."""
    table_keys: Callable[[int, int], tuple[str, ...]] = lambda num_continuous, num_categories: ()
    """Keys of a diagnostic table reported besides `outputs` (they rank nothing), for a model with
    these numbers of continuous dims and categories; `read_table` gives their values."""
    read_table: Callable[[MetricResult], dict[str, float]] = lambda result: {}

    @property
    def higher_is_better(self) -> bool | None:
        return self.outputs[0].higher_is_better

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(o.key for o in self.outputs)

    def kwargs(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        """The `compute` keywords from the evaluation settings (a mapping of EvalConfig fields)."""
        return {keyword: settings[name] for name, keyword in self.options.items()}


def _score(result: MetricResult) -> float:
    return result.score


METRICS: dict[str, Metric] = {
    metric.name: metric
    for metric in (
        Metric(
            name="authors_factorvae",
            compute=authors_factorvae.compute_authors_factorvae,
            outputs=(
                Output("eval/authors_factorvae", _score, "accuracy of the authors' votes"),
                Output(
                    "eval/active_dims",
                    lambda r: float(r.details["active_dims"]),
                    "KL-active continuous dims the authors' variant kept",
                    higher_is_better=None,
                ),
            ),
            description=authors_factorvae.DESCRIPTION,
            options={
                "num_votes": "num_votes",
                "vote_size": "vote_size",
                "kl_threshold": "kl_threshold",
            },
        ),
        Metric(
            name="factorvae",
            compute=factorvae.compute_factorvae,
            outputs=(
                Output("eval/factorvae", _score, "accuracy on the held-out votes"),
                Output(
                    "eval/factorvae_train",
                    lambda r: r.details["train_accuracy"],
                    "accuracy on the votes the classifier was fit on",
                ),
            ),
            description=factorvae.DESCRIPTION,
            options={
                "factorvae_num_train": "num_train",
                "factorvae_num_eval": "num_eval",
                "factorvae_vote_size": "vote_size",
                "factorvae_std_threshold": "std_threshold",
                "factorvae_include_discrete": "include_discrete",
            },
            reads_codes=lambda kwargs: bool(kwargs["include_discrete"]),
        ),
        Metric(
            name="discrete_accuracy",
            compute=discrete_accuracy.compute_discrete_accuracy,
            outputs=(Output("eval/discrete_accuracy", _score, "best one-to-one match accuracy"),),
            description=discrete_accuracy.DESCRIPTION,
            needs_codes=True,
        ),
        Metric(
            name="mig",
            compute=mig.compute_mig,
            outputs=(Output("eval/mig", _score, "mutual information gap"),),
            description=mig.DESCRIPTION,
            options={"mig_num_bins": "num_bins"},
        ),
        Metric(
            name="factor_dim_mi",
            compute=factor_dim_mi.compute_factor_dim_mi,
            outputs=(
                Output(
                    "eval/mi_shape_z",
                    _score,
                    "largest share of the shape's entropy one continuous dim holds",
                    higher_is_better=None,
                ),
            ),
            description=factor_dim_mi.DESCRIPTION,
            options={"mig_num_bins": "num_bins"},
            table_keys=factor_dim_mi.table_keys,
            read_table=lambda result: dict(result.details["table"]),
        ),
    )
}
"""Every protocol, in a fixed order: `evaluate_model` gives each its own random stream by its
position here, and reports in this order (a new protocol goes last: the streams of the others
stay as they were)."""

SHARED_OPTIONS = ("num_global", "batch_size")
"""Evaluation settings of every protocol: the global sample's size and the encoder batch."""


def names() -> list[str]:
    return list(METRICS)


def select(protocols: Iterable[str]) -> list[Metric]:
    """The registered metrics among `protocols`, in registry order (unknown names skipped)."""
    asked = set(protocols)
    return [m for m in METRICS.values() if m.name in asked]


def output_keys(protocols: Iterable[str]) -> list[str]:
    """Every output key of `protocols`, in registry order (their tables: `table_keys`)."""
    return [key for metric in select(protocols) for key in metric.keys]


def table_keys(protocols: Iterable[str], num_continuous: int, num_categories: int) -> list[str]:
    """The diagnostic table keys of `protocols` for a model with these dims and categories."""
    return [
        key
        for metric in select(protocols)
        for key in metric.table_keys(num_continuous, num_categories)
    ]


TABLE_NAMESPACES = ("mi/", "confusion/")
"""The namespaces of the table keys (besides `eval/`, what an evaluation reports)."""


def score_keys(protocols: Iterable[str]) -> list[str]:
    """The keys of `protocols` that rank checkpoints and trials (higher is better)."""
    return [o.key for m in select(protocols) for o in m.outputs if o.higher_is_better]


def option_names() -> list[str]:
    """Every evaluation setting a metric reads (the `--metric-option` keys)."""
    names = [*SHARED_OPTIONS, *(name for m in METRICS.values() for name in m.options)]
    return list(dict.fromkeys(names))  # a setting two metrics read is listed once
