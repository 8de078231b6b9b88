"""Progress of a run: interval means of step metrics, the rank-0 progress line, the ETA."""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from collections.abc import Mapping

import torch
from torch import Tensor

from trainer.core.scalars import StepMetrics

WATCHED_KEY = "loss/total"
"""The metric whose first non-finite value in an interval `IntervalMeter.read` reports."""

NonFinite = tuple[int, dict[str, float]]
"""(step, that step's metrics) of the first step whose watched metric was NaN or inf."""


class _DeviceSums:
    """The device vectors of steps with one set of names: their float64 sum (V,), their count,
    and the first step whose watched entry was not finite (-1: none) with its vector."""

    def __init__(self, names: tuple[str, ...], values: Tensor):
        self.names = names
        self.sum = torch.zeros(values.shape, dtype=torch.float64, device=values.device)
        self.count = 0
        self.watched = names.index(WATCHED_KEY) if WATCHED_KEY in names else None
        self.first_bad_step = torch.full((1,), -1.0, dtype=torch.float64, device=values.device)
        self.first_bad = torch.zeros(values.shape, dtype=torch.float64, device=values.device)

    def add(self, step: int, values: Tensor) -> None:
        """Device ops only: no host read."""
        values = values.detach().to(torch.float64)
        self.sum += values  # float64, in step order: the same sums as adding python floats
        self.count += 1
        if self.watched is not None:
            new = ~torch.isfinite(values[self.watched]) & (self.first_bad_step < 0)
            self.first_bad_step = torch.where(new, float(step), self.first_bad_step)
            self.first_bad = torch.where(new, values, self.first_bad)

    def tensors(self) -> list[Tensor]:
        return [self.sum, self.first_bad_step, self.first_bad]


class IntervalMeter:
    """Means of step metrics over one log interval, plus throughput.

    Plain floats are summed on the host. The unread device vector of a StepMetrics
    (trainer.core.scalars) is summed on its device, and the first step whose `loss/total` was
    NaN or inf is noted there too; `read` copies all of it to the host in one transfer.
    """

    def __init__(self, started: float | None = None):
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        self.device_sums: dict[tuple[str, ...], _DeviceSums] = {}
        self.steps = 0
        # Each interval starts where the previous one ended, so the time spent reporting,
        # checkpointing and evaluating is charged to the step time rather than hidden.
        self.started = time.perf_counter() if started is None else started

    def add(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Add one step's metrics; `step` is needed for metrics with an unread device part."""
        if isinstance(metrics, StepMetrics) and metrics.device_values is not None:
            if step is None:
                raise ValueError("metrics left on the device need their step")
            names, values = metrics.device_names, metrics.device_values
            if names not in self.device_sums:
                self.device_sums[names] = _DeviceSums(names, values)
            self.device_sums[names].add(step, values)
            metrics = metrics.host
        for key, value in metrics.items():
            self.sums[key] += float(value)
            self.counts[key] += 1
        self.steps += 1

    def read(self) -> tuple[dict[str, float], NonFinite | None]:
        """(the interval's means, the first non-finite step or None). One device -> host copy
        for all device sums."""
        sums, counts = dict(self.sums), dict(self.counts)
        groups = list(self.device_sums.values())
        found: list[NonFinite] = []
        if groups:
            read = torch.cat([t.flatten() for g in groups for t in g.tensors()]).tolist()
            at = 0
            for group in groups:
                size = len(group.names)
                group_sums, first_step = read[at : at + size], read[at + size]
                first_bad = read[at + size + 1 : at + 2 * size + 1]
                at += 2 * size + 1
                for name, value in zip(group.names, group_sums, strict=True):
                    sums[name] = sums.get(name, 0.0) + value
                    counts[name] = counts.get(name, 0) + group.count
                if first_step >= 0:
                    found.append((int(first_step), dict(zip(group.names, first_bad, strict=True))))
        means = {k: sums[k] / counts[k] for k in sorted(sums)}
        return means, min(found, key=lambda item: item[0]) if found else None

    def means(self) -> dict[str, float]:
        return self.read()[0]


def format_eta(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def say(line: str) -> None:
    """One progress line on the worker's stdout, which Ray forwards to the driver.

    Not `print`: Train V2 patches it in workers to log at INFO as well as write to the redirected
    stdout, so every printed line reached the driver twice.
    """
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def codes_text(metrics: dict[str, float]) -> str:
    shares = "/".join(
        f"{metrics[f'codes/share_{k}']:.2f}"
        for k in range(len(metrics))
        if f"codes/share_{k}" in metrics
    )
    return f"shape agreement {metrics['codes/shape_agreement']:.3f} (shares {shares})"


def eval_text(metrics: dict[str, float]) -> str:
    return " ".join(f"{k[5:]} {v:.3f}" for k, v in metrics.items() if k.startswith("eval/"))
