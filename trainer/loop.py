"""The training loop with no Ray: the step pipeline of one rank.

`TrainLoop.step(step)` is one step of one rank: batch indices -> images on the device -> one
train step (trainer.core.step) with this step's noise and chooser -> the step's metrics. The
Train worker and the benchmarks' in-process loop (benchmarks/local_loop.py) both run it; what
runs between steps (log intervals, hooks) is trainer.observe.cadence.

Legend: B = this rank's batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, MutableMapping

import numpy as np
import torch

from trainer.build import (
    apply_memory_format,
    build_extras,
    build_schedule,
    compile_networks,
    device_switch,
    resolve_precision,
)
from trainer.config import Config
from trainer.core.step import host_to_device, unwrap
from trainer.data.device import DeviceDSprites
from trainer.data.dsprites import LATENT_NAMES, DSprites, batch_indices_for_step
from trainer.variants.registry import variant_of
from trainer.variants.types import Codes, Extras

SHAPE_FACTOR = LATENT_NAMES.index("shape")
Chooser = Callable[[torch.Tensor], torch.Tensor]
"""unary_BK -> codes_B (int64)."""


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
