"""When log intervals end and which hooks run there, in which order: `Cadence`, `Hooks`.

`Hooks.after_step(step, metrics)` collects the metrics of a step and, when any of its interval
ends is due, ends a log interval: the interval means are reduced over ranks and every hook whose
own `Cadence` is due runs on them (evaluation, images, logging, the report with or without a
checkpoint), in the given order. Every rank reaches the same decisions, so the collective
reduction and the reports stay in step.

No Ray: the reduction over ranks and the extra keys are injected (the Train worker passes the
all-reduce and its code client's timings).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from trainer.config import Config
from trainer.core.agreement import agreement_metrics
from trainer.core.step import NonFiniteLossError
from trainer.observe.progress import IntervalMeter


@dataclass(frozen=True)
class Cadence:
    """When a hook runs: every `every` steps (0: never on the way), after the steps done listed
    in `at_steps` and, with `at_end`, after the last step. `due(done, last)` takes the number of
    steps done."""

    every: int
    at_end: bool = True
    at_steps: frozenset[int] = frozenset()

    def due(self, done: int, last: bool) -> bool:
        return (
            (last and self.at_end)
            or (self.every > 0 and done % self.every == 0)
            or done in self.at_steps
        )


def extra_evaluation_steps(config: Config) -> frozenset[int]:
    """The evaluation `train.eval_at_discrete_start` adds to the `train.eval_every` cadence (none
    when the discrete start is on it). It is diagnostic: it ranks no checkpoint
    (`train.keep_best_by`) and no best-by-metric reading of a study."""
    train = config.train
    start = config.cascade.discrete_start_step
    on_cadence = train.eval_every > 0 and start % train.eval_every == 0
    return frozenset({start} if train.eval_at_discrete_start and not on_cadence else ())


def evaluation_cadence(config: Config) -> Cadence:
    """When a run evaluates: every `train.eval_every` steps, at the end and, with
    `train.eval_at_discrete_start`, after the steps before the discrete stage."""
    return Cadence(config.train.eval_every, at_steps=extra_evaluation_steps(config))


class Hook(Protocol):
    """A component run at the end of the log intervals its cadence selects. `run` may add keys
    to `interval` (an evaluation does) for the hooks after it."""

    cadence: Cadence

    def run(self, done: int, interval: dict[str, float]) -> None: ...


class StepHook(Protocol):
    """A component run before every step (the fault drills)."""

    def before_step(self, step: int) -> None: ...


Reduce = Callable[[dict[str, float]], dict[str, float]]
"""Interval means of this rank -> the same keys over all ranks (identity with one rank)."""


class Hooks:
    """Runs the hooks. A log interval ends where any of `ends` is due (the same cadences on
    every rank, whatever hooks a rank runs); then every hook whose own cadence is due runs.

    `extra` (optional) returns keys to add to an interval before the reduction (held by every
    rank) and after it (rank 0's own, such as its solver timings), then forgets them.
    """

    def __init__(
        self,
        hooks: Sequence[Hook],
        *,
        ends: Sequence[Cadence],
        num_steps: int,
        global_batch: int,
        reduce: Reduce = lambda metrics: metrics,
        extra: Callable[[], tuple[dict[str, float], dict[str, float]]] | None = None,
        before: Sequence[StepHook] = (),
    ):
        self.hooks = list(hooks)
        self.ends = list(ends)
        self.before = list(before)
        self.num_steps = num_steps
        self.global_batch = global_batch
        self.reduce = reduce
        self.extra = extra
        self.meter = IntervalMeter()

    def before_step(self, step: int) -> None:
        for hook in self.before:
            hook.before_step(step)

    def after_step(self, step: int, metrics: Mapping[str, float]) -> dict[str, float] | None:
        """Add the step's metrics; at an interval end, run the due hooks and return the
        interval's metrics (None otherwise). Metrics left on the device are read there, once,
        and a non-finite loss among them raises NonFiniteLossError naming its step before
        any hook (report, checkpoint) runs."""
        self.meter.add(metrics, step)
        done = step + 1
        last = done == self.num_steps
        if not any(cadence.due(done, last) for cadence in self.ends):
            return None
        interval_end = time.perf_counter()
        interval = self.summary(interval_end, done)
        for hook in self.hooks:
            if hook.cadence.due(done, last):
                hook.run(done, interval)
        self.meter = IntervalMeter(started=interval_end)
        return interval

    def summary(self, interval_end: float, done: int | None = None) -> dict[str, float]:
        """The interval's means over ranks, with agreement, perf and solver keys (`done`: the
        steps done, named in a NonFiniteLossError)."""
        meter = self.meter
        means, non_finite = meter.read()
        if non_finite is not None:
            raise NonFiniteLossError(*non_finite, stopped_at=done)
        shared, own = self.extra() if self.extra is not None else ({}, {})
        interval = self.reduce({**means, **shared})
        interval.update(agreement_metrics(interval))
        interval.update(own)
        elapsed = interval_end - meter.started
        interval["perf/images_per_s"] = meter.steps * self.global_batch / max(elapsed, 1e-9)
        interval["perf/step_ms"] = 1000.0 * elapsed / max(meter.steps, 1)
        if "solver/wait_ms" in interval:
            interval["perf/code_wait_share"] = interval["solver/wait_ms"] / interval["perf/step_ms"]
        return interval
