"""What the step tests share (test_step, test_scalars, test_variant_steps): the authors'
schedule, synthetic images, a fresh model with its optimizer, and one step taken with its
metrics read and left on the device.

Shape suffixes (CONTRIBUTING.md): B batch, K categories.
"""

from __future__ import annotations

import torch

from trainer.config import OptimConfig
from trainer.core.model import CascadeVAE
from trainer.core.schedule import CascadeSchedule, make_optimizer
from trainer.core.step import train_step

AUTHORS = CascadeSchedule()  # discrete from iteration 80,000


def squares(count: int, seed: int) -> torch.Tensor:
    """(count, 1, 64, 64) binary images, each of one to three filled squares (side 8-20)."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.zeros(count, 1, 64, 64)
    for i in range(count):
        for _ in range(int(torch.randint(1, 4, (), generator=gen))):
            side = int(torch.randint(8, 21, (), generator=gen))
            row, col = torch.randint(0, 64 - side + 1, (2,), generator=gen).tolist()
            images[i, 0, row : row + side, col : col + side] = 1.0
    return images


def argmin_codes(unary_BK: torch.Tensor) -> torch.Tensor:
    return unary_BK.argmin(dim=1)


def model_and_optimizer(num_categories: int = 3, seed: int = 0, **opt_kwargs):
    torch.manual_seed(seed)
    model = CascadeVAE(num_continuous=6, num_categories=num_categories)
    optimizer, scheduler = make_optimizer(model, OptimConfig(**opt_kwargs))
    return model, optimizer, scheduler


def nan_images(count: int, seed: int) -> torch.Tensor:
    images = squares(count, seed)
    images[1, 0, 5, 5] = float("nan")
    return images


def step_both_ways(iteration: int, chooser=None, **kwargs):
    """The same step with metrics read (a dict) and left on the device (a StepMetrics)."""
    results = []
    for on_device in (False, True):
        model, optimizer, scheduler = model_and_optimizer(seed=3)
        metrics = train_step(
            model, optimizer, scheduler, squares(6, seed=4), iteration=iteration,
            schedule=AUTHORS, eps_generator=torch.Generator().manual_seed(5),
            choose_codes=chooser, metrics_on_device=on_device, **kwargs,
        )  # fmt: skip
        results.append((metrics, model))
    return results
