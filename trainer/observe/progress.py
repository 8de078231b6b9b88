"""Progress of a run: interval means of step metrics, the rank-0 progress line, the ETA."""

from __future__ import annotations

import sys
import time
from collections import defaultdict


class IntervalMeter:
    """Means of step metrics over one log interval, plus throughput."""

    def __init__(self, started: float | None = None):
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        self.steps = 0
        # Each interval starts where the previous one ended, so the time spent reporting,
        # checkpointing and evaluating is charged to the step time rather than hidden.
        self.started = time.perf_counter() if started is None else started

    def add(self, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.sums[key] += float(value)
            self.counts[key] += 1
        self.steps += 1

    def means(self) -> dict[str, float]:
        return {k: self.sums[k] / self.counts[k] for k in sorted(self.sums)}


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
