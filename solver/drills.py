"""Fault-drill seam of the solver actor, used by the fault tests only: an actor that holds
every call for a while before solving, so a test can kill it with a call in flight or see a
call time out."""

from __future__ import annotations

import time

import numpy as np

from solver.actor import SolverActor


class DelayedSolverActor(SolverActor):
    """A SolverActor that sleeps `delay_s` before every solve."""

    def __init__(self, delay_s: float):
        super().__init__()
        self._delay_s = float(delay_s)

    def solve(self, unary_NK: np.ndarray, lam: float) -> tuple[np.ndarray, float]:
        time.sleep(self._delay_s)
        return super().solve(unary_NK, lam)
