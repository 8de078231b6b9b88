"""The training loop with no Ray: the step pipeline and the hooks that run between steps.

`TrainLoop.step(step)` is one step of one rank: batch indices -> images on the device -> one
train step (trainer.core.step) with this step's noise and chooser -> the step's metrics. The
Train worker and the overhead benchmark both run it.

`Hooks.after_step(step, metrics)` collects the metrics and, when any hook's `Cadence` is due,
ends a log interval: the interval means are reduced over ranks and every due hook runs on them
(evaluation, images, logging, the report with or without a checkpoint), in the given order.
Every rank reaches the same decisions, so the collective reduction and the reports stay in step.

Legend: B = this rank's batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from trainer.build import (
    apply_memory_format,
    build_extras,
    build_model,
    build_optimizer,
    build_schedule,
    compile_networks,
    device_switch,
    open_data,
    resolve_precision,
)
from trainer.config import Config
from trainer.core.agreement import agreement_keys, agreement_metrics
from trainer.core.step import STEP_KEYS, NonFiniteLossError, host_to_device, unwrap
from trainer.data.device import DeviceDSprites
from trainer.data.dsprites import LATENT_NAMES, DSprites, batch_indices_for_step
from trainer.distributed.codes import CodeTimings
from trainer.distributed.codes import GlobalCodeClient as CodeClient
from trainer.observe.progress import IntervalMeter
from trainer.variants.registry import variant_of
from trainer.variants.types import Codes, Extras

SHAPE_FACTOR = LATENT_NAMES.index("shape")
Chooser = Callable[[torch.Tensor], torch.Tensor]
"""unary_BK -> codes_B (int64)."""

PERF_KEYS = ("perf/data_ms", "perf/train_step_ms", "perf/images_per_s", "perf/step_ms")
"""Timing keys of every interval (plus perf/code_wait_share with a solver)."""


def true_shape_codes(shapes_B: np.ndarray) -> Chooser:
    """The oracle's chooser: ignores the unary matrix and returns the true shapes, on the host
    (check_codes validates them there and copies them without waiting for the device)."""
    codes_B = torch.as_tensor(np.asarray(shapes_B, dtype=np.int64))
    return lambda unary_BK: codes_B


def step_seed(seed: int, step: int, rank: int) -> int:
    """Seed of the noise eps of (step, rank): resumed runs redraw exactly the same noise."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1, np.uint64)[0] >> 1)


def load_batch(dataset: DSprites, indices: np.ndarray, device: torch.device) -> torch.Tensor:
    """(B,) indices -> float32 images (B, 1, 64, 64) in {0, 1} on `device`."""
    images_BHW = dataset.images(indices)
    return torch.from_numpy(images_BHW).to(device=device, dtype=torch.float32).unsqueeze(1)


class TrainLoop:
    """One rank's step pipeline for the config's model variant (trainer.variants.registry).
    `model` may be DDP-wrapped; `chooser` gives the codes in the discrete stage of a variant
    whose codes come from the solver (a GlobalCodeClient; None for variants without one); an
    oracle variant decodes with the true shapes instead. `extras`: the variant's extra parts
    (trainer.build.build_extras, possibly DDP-wrapped); None builds them on `device`.

    The train section's device switches take effect here: `data_on_device` (the packed dataset
    on the device, trainer.data.device), `metrics_on_device` (StepMetrics left unread),
    `compile` (the encoder and decoder compiled in place, so checkpoints keep their keys),
    `autocast` and `channels_last` (resolved on the device into `self.precision`; the model's
    kernels are converted here unless the caller did it before wrapping the model in DDP, as
    the Train worker does).
    """

    def __init__(
        self,
        config: Config,
        dataset: DSprites,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        *,
        device: torch.device,
        chooser: Chooser | None = None,
        rank: int = 0,
        world_size: int = 1,
        extras: Extras | None = None,
    ):
        self.config = config
        self.dataset = dataset
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.device = device
        self.chooser = chooser
        self.rank = rank
        self.world_size = world_size
        self.variant = variant_of(config)
        self.schedule = build_schedule(config)
        self.extras = extras if extras is not None else build_extras(config, device)
        self.oracle = self.variant.codes is Codes.ORACLE
        train = config.train
        self.metrics_on_device = device_switch(train.metrics_on_device, device)
        self.precision = resolve_precision(train, device)
        apply_memory_format(unwrap(model), self.precision)
        self.device_data = (
            DeviceDSprites(dataset, device) if device_switch(train.data_on_device, device) else None
        )
        if train.compile != "none":
            compile_networks(unwrap(model), train.compile)

    def step(self, step: int) -> MutableMapping[str, float]:
        """Train step `step`; its metrics plus `perf/data_ms` and `perf/train_step_ms` (host
        times: with the metrics on the device they time the launch of the work, which the
        device may finish later)."""
        started = time.perf_counter()
        train = self.config.train
        indices = batch_indices_for_step(
            len(self.dataset),
            seed=self.config.seed,
            step=step,
            rank=self.rank,
            world_size=self.world_size,
            global_batch=train.global_batch,
        )
        shapes_host_B = self.dataset.latent_classes[indices, SHAPE_FACTOR]
        shapes_B: np.ndarray | torch.Tensor = shapes_host_B
        if self.device_data is not None:
            indices_B = host_to_device(torch.from_numpy(indices), self.device)
            x_B1HW = self.device_data.images(indices_B)
            shapes_B = self.device_data.classes(indices_B, SHAPE_FACTOR)
        else:
            x_B1HW = load_batch(self.dataset, indices, self.device)
        if self.precision.channels_last:
            x_B1HW = x_B1HW.contiguous(memory_format=torch.channels_last)
        data_done = time.perf_counter()
        chooser = true_shape_codes(shapes_host_B) if self.oracle else self.chooser
        if chooser is not None and hasattr(chooser, "step"):
            chooser.step = step  # named in the chooser's error messages
        eps_generator = torch.Generator().manual_seed(step_seed(self.config.seed, step, self.rank))
        metrics = self.variant.step(
            self.model,
            self.optimizer,
            self.scheduler,
            x_B1HW,
            iteration=step,
            schedule=self.schedule,
            eps_generator=eps_generator,
            choose_codes=chooser,
            weight_penalty_coef=self.config.model.weight_penalty,
            shapes_B=shapes_B,
            extras=self.extras,
            metrics_on_device=self.metrics_on_device,
            autocast_bf16=self.precision.autocast_bf16,
        )
        metrics["perf/data_ms"] = 1000.0 * (data_done - started)
        metrics["perf/train_step_ms"] = 1000.0 * (time.perf_counter() - data_done)
        return metrics


def interval_keys(config: Config) -> set[str]:
    """Every key an interval of a run with `config` can hold: the step's metrics, the solver's
    timings, the code agreement, the timings of `Hooks.summary`, and the evaluation's keys."""
    from trainer.observe.hooks import evaluation_keys

    model, variant = config.model, variant_of(config)
    categories = model.effective_categories
    keys = variant.loss_keys(model.num_continuous, categories)
    keys |= set(STEP_KEYS) | set(PERF_KEYS)
    if categories:
        keys |= agreement_keys(categories)
    if variant.codes is Codes.SOLVER:
        keys |= set(CodeTimings.KEYS) | {"perf/code_wait_share"}
    return keys | evaluation_keys(config)


def local_loop(
    config: Config, device: torch.device, progress: bool = False
) -> tuple[TrainLoop, CodeClient]:
    """One process's TrainLoop with the solver called in-process (no Ray): the plain loop the
    benchmarks compare the system with. Returns it and its code client (whose timings hold the
    solve time itself)."""
    from solver import get_solver

    torch.manual_seed(config.seed)
    dataset = open_data(config, progress=progress)
    model = build_model(config).to(device)
    optimizer, scheduler = build_optimizer(config, model)
    lam = config.solver.lam

    def solve(unary_NK: np.ndarray) -> tuple[np.ndarray, float]:
        # The client checked the matrix (finite float64 (N, K)); the solver times itself.
        solver = get_solver(*unary_NK.shape)
        labels_N = solver.solve_valid(unary_NK, lam)
        return labels_N, solver.last_solve_ms

    client = CodeClient(solve)
    loop = TrainLoop(config, dataset, model, optimizer, scheduler, device=device, chooser=client)
    return loop, client


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
