"""Test and fault-drill seams, off unless asked for: `train.fail_at_step` (every rank crashes
once at that step), `train.hold_at_step` (rank 0 waits once before each of those steps until
released, so that a test can kill a process at a known step), `train.record_codes_steps`
(each rank saves its unary shards and codes of the first N discrete steps), and a solver actor
that holds every call (for the fault tests).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from trainer.distributed.codes import GlobalCodeClient
from trainer.distributed.solver_actor import SolverActor

FAILED_ONCE_MARKER = ".failed_once_at_step"


def held_marker(step: int) -> str:
    """The file rank 0 writes in the run folder when it starts to hold before `step`."""
    return f".held_at_step_{step}"


def release_file(step: int) -> str:
    """The file that releases the hold before `step` once it exists in the run folder."""
    return f".release_hold_{step}"


class FaultDrill:
    """Crash every worker once at `step`, never again (a marker in the run folder remembers)."""

    def __init__(self, step: int, run_dir: Path, rank: int):
        self.step, self.run_dir, self.rank = step, run_dir, rank

    def before_step(self, step: int) -> None:
        if step != self.step:
            return
        import ray.train.collective

        marker = self.run_dir / FAILED_ONCE_MARKER
        # All ranks look before rank 0 writes, so they agree on whether this is the first time.
        first_time = not marker.exists()
        ray.train.collective.barrier()
        if first_time:
            if self.rank == 0:
                marker.write_text(str(step))
            ray.train.collective.barrier()
            raise RuntimeError(f"train.fail_at_step={step}: injected worker failure (fault drill)")


class HoldDrill:
    """Rank 0 waits before each of `steps` until `release_file(step)` exists in the run folder,
    the first time the run reaches that step (`held_marker(step)`, holding the step, says it is
    waiting). Other ranks go on and wait in the step's first collective."""

    poll_s = 0.05

    def __init__(self, steps: Sequence[int], run_dir: Path, rank: int):
        self.steps, self.run_dir, self.rank = frozenset(steps), run_dir, rank

    def before_step(self, step: int) -> None:
        marker = self.run_dir / held_marker(step)
        if step not in self.steps or self.rank != 0 or marker.exists():
            return
        marker.write_text(str(step))
        while not (self.run_dir / release_file(step)).exists():
            time.sleep(self.poll_s)


class CodeRecorder:
    """Keeps (step, unary_BK, codes_B) of a client's first `limit` calls; `save` writes them to
    `codes_rank{rank}.npz` in the run folder."""

    def __init__(self, client: GlobalCodeClient, limit: int, run_dir: Path, rank: int):
        self.client, self.limit, self.run_dir, self.rank = client, limit, run_dir, rank
        self.recorded: list[tuple[int, np.ndarray, np.ndarray]] = []
        client.record = self._record

    def _record(self, unary_BK: np.ndarray, codes_B: np.ndarray) -> None:
        self.recorded.append((int(self.client.step or 0), unary_BK, codes_B))
        if len(self.recorded) >= self.limit:
            self.client.record = None

    def save(self) -> None:
        if not self.recorded:
            return
        np.savez(
            self.run_dir / f"codes_rank{self.rank}.npz",
            steps=np.array([s for s, _, _ in self.recorded]),
            unary=np.stack([u for _, u, _ in self.recorded]),
            codes=np.stack([c for _, _, c in self.recorded]),
        )


class DelayedSolverActor(SolverActor):
    """A SolverActor that sleeps `delay_s` before every solve, so that a test can kill it with
    a call in flight or see a call time out. With `started_log` (a file path), every solve
    appends a line with the actor's pid when it starts, before its sleep: a test that reads
    the line knows a call is inside the actor."""

    def __init__(self, delay_s: float, started_log: str | None = None):
        super().__init__()
        self._delay_s = float(delay_s)
        self._started_log = started_log

    def solve(
        self, unary_NK: np.ndarray, lam: float, checked: bool = False, counted: bool = True
    ) -> tuple[np.ndarray, float]:
        if self._started_log is not None:
            with open(self._started_log, "a") as log:
                log.write(f"{os.getpid()}\n")
        time.sleep(self._delay_s)
        return super().solve(unary_NK, lam, checked, counted)
