"""One global assignment of discrete codes across data-parallel ranks.

Legend: B = this rank's batch, G = global batch (B * world size), K = categories; arrays of
one assignment problem are N x K (N = G).

Every rank computes the unary matrix of its own shard (B, K). Rank 0 gathers the shards in rank
order into the (N, K) matrix of the whole global batch, asks the solver for one assignment, and
broadcasts the N labels; each rank keeps its slice [rank * B, (rank + 1) * B). Only the unary
going out and the codes coming back cross the worker/solver boundary.

No Ray here: the solve function is injected (the worker passes one that calls the solver actor),
so this file runs in plain `torch.distributed` tests and in a single process.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
import torch.distributed as dist

from trainer.errors import PicklableError
from trainer.reported import CODE_TIMING_KEYS, CODE_TIMING_NAMES

SolveFn = Callable[[np.ndarray], tuple[np.ndarray, float]]
"""(unary_NK float64) -> (labels_N int64, solve_ms)."""


class CodeExchangeError(RuntimeError):
    """A rank could not obtain its codes (a peer missing, the solver unreachable)."""


class NonFiniteUnaryError(PicklableError, FloatingPointError):
    """The unary matrix of a step holds NaN or inf (the model diverged or its input is bad);
    the solver is not called. Every rank raises it for the same step."""

    def __init__(self, step: int | None, unary_NK: np.ndarray, rows_per_rank: int):
        bad_NK = ~np.isfinite(unary_NK)
        self.step = step
        self.ranks = sorted({int(i) // rows_per_rank for i in np.flatnonzero(bad_NK.any(axis=1))})
        num_nan, num_inf = int(np.isnan(unary_NK).sum()), int(np.isinf(unary_NK).sum())
        super().__init__(
            f"step {step}: the unary matrix {unary_NK.shape} holds NaN/inf ({num_nan} NaN, "
            f"{num_inf} inf entries, in the shard(s) of rank(s) {self.ranks}); the model's "
            "outputs are not finite (diverged weights or non-finite input images), so no codes "
            "can be chosen"
        )


@dataclass
class CodeTimings:
    """Per-call timings of the last log interval, in milliseconds.

    gather_ms: in the all-gather of unary shards, which includes waiting for the slowest rank
        (the same synchronisation DDP's gradient all-reduce would impose anyway);
    wait_ms: from holding all shards until holding this rank's codes: the cost of the central
        solver (the four parts below, plus the glue between them);
    to_host_ms: the (N, K) unary matrix to a host numpy array and its finiteness check;
    round_trip_ms / solve_ms: rank 0 only, the whole call of the solve function and the solve
        inside it (with the actor: round_trip_ms - solve_ms is the actor call's own cost);
    broadcast_ms: the broadcast of the N labels (0 with one rank: nothing is sent);
    to_device_ms: this rank's labels into an int64 tensor on the unary's device.
    """

    NAMES: ClassVar[tuple[str, ...]] = CODE_TIMING_NAMES
    """The fields below, in order (the reported keys are declared in trainer.reported)."""
    KEYS: ClassVar[tuple[str, ...]] = CODE_TIMING_KEYS
    """Keys `summary` can return."""

    solve_ms: list[float] = field(default_factory=list)
    round_trip_ms: list[float] = field(default_factory=list)
    gather_ms: list[float] = field(default_factory=list)
    wait_ms: list[float] = field(default_factory=list)
    to_host_ms: list[float] = field(default_factory=list)
    broadcast_ms: list[float] = field(default_factory=list)
    to_device_ms: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        """Means over the interval under `solver/...` keys; empty when no call was made."""
        out: dict[str, float] = {}
        for name in self.NAMES:
            values = getattr(self, name)
            if values:
                out[f"solver/{name}"] = float(np.mean(values))
        return out

    def clear(self) -> None:
        for name in self.NAMES:
            getattr(self, name).clear()


class GlobalCodeClient:
    """Callable `unary_BK -> codes_B` giving this rank its slice of one global assignment.

    `solve` is only called on rank 0. With world_size 1 no collective is used.
    `record` (optional) receives (unary_BK, codes_B) numpy copies of every call, for tests.
    `transport` (optional) says what answers `solve` (for the run's record), `close` (optional)
    releases what `solve` holds.
    """

    def __init__(
        self,
        solve: SolveFn | None,
        *,
        rank: int = 0,
        world_size: int = 1,
        record: Callable[[np.ndarray, np.ndarray], None] | None = None,
        transport: Callable[[], str] | None = None,
        close: Callable[[], None] | None = None,
    ):
        if rank == 0 and solve is None:
            raise ValueError("GlobalCodeClient: rank 0 needs a solve function")
        self.solve = solve
        self.transport = transport
        self._close = close
        self.rank = rank
        self.world_size = world_size
        self.record = record
        self.timings = CodeTimings()
        self.step: int | None = None  # set by the caller, used in error messages

    def __call__(self, unary_BK: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        batch = unary_BK.shape[0]
        unary_BK = unary_BK.detach().contiguous()
        try:
            if self.world_size == 1:
                codes_B = self._single(unary_BK)
            else:
                codes_B = self._exchange(unary_BK)
        except (CodeExchangeError, NonFiniteUnaryError):
            raise
        except Exception as err:  # gloo/NCCL timeouts and dead peers surface as RuntimeError
            raise CodeExchangeError(
                f"rank {self.rank}/{self.world_size} at step {self.step}: exchanging unary shards "
                f"and codes failed ({type(err).__name__}: {err}). A worker is missing or the "
                "solver actor is unreachable; the run restarts from its last checkpoint if "
                "train.max_failures allows."
            ) from err
        gathered_ms = self.timings.gather_ms[-1] if self.world_size > 1 else 0.0
        self.timings.wait_ms.append((time.perf_counter() - start) * 1000.0 - gathered_ms)
        if self.record is not None:
            self.record(unary_BK.cpu().numpy().copy(), codes_B.cpu().numpy().copy())
        assert codes_B.shape == (batch,)
        return codes_B

    def close(self) -> None:
        if self._close is not None:
            self._close()

    def _check_finite(self, unary_NK: np.ndarray, rows_per_rank: int) -> None:
        if not np.isfinite(unary_NK).all():
            raise NonFiniteUnaryError(self.step, unary_NK, rows_per_rank)

    def _solve_on_rank0(self, unary_NK: np.ndarray) -> np.ndarray:
        assert self.solve is not None
        start = time.perf_counter()
        labels_N, solve_ms = self.solve(unary_NK)
        self.timings.round_trip_ms.append((time.perf_counter() - start) * 1000.0)
        self.timings.solve_ms.append(float(solve_ms))
        return np.asarray(labels_N, dtype=np.int64)

    def _to_host(self, unary_NK: torch.Tensor, rows_per_rank: int) -> np.ndarray:
        """float64 host copy of the (N, K) matrix, checked finite (a NonFiniteUnaryError)."""
        started = time.perf_counter()
        host_NK = unary_NK.to(device="cpu", dtype=torch.float64).numpy()
        self._check_finite(host_NK, rows_per_rank)
        self.timings.to_host_ms.append((time.perf_counter() - started) * 1000.0)
        return host_NK

    def _single(self, unary_BK: torch.Tensor) -> torch.Tensor:
        """World size 1: this rank's batch is the whole problem."""
        labels_N = self._solve_on_rank0(self._to_host(unary_BK, unary_BK.shape[0]))
        started = time.perf_counter()
        self.timings.broadcast_ms.append(0.0)
        codes_B = torch.from_numpy(np.array(labels_N)).to(unary_BK.device)  # a writable copy
        self.timings.to_device_ms.append((time.perf_counter() - started) * 1000.0)
        return codes_B

    def _exchange(self, unary_BK: torch.Tensor) -> torch.Tensor:
        batch, _ = unary_BK.shape
        # all_gather rather than gather: supported by gloo and NCCL alike, and the shards are tiny.
        shards = [torch.empty_like(unary_BK) for _ in range(self.world_size)]
        started = time.perf_counter()
        dist.all_gather(shards, unary_BK)
        self.timings.gather_ms.append((time.perf_counter() - started) * 1000.0)
        # Every rank holds every shard, so all ranks see the same NaN and stop together.
        unary_NK = self._to_host(torch.cat(shards), batch)
        labels_N = torch.empty(batch * self.world_size, dtype=torch.int64, device=unary_BK.device)
        to_device_ms = 0.0  # rank 0's copy of the labels into labels_N, then every rank's slice
        if self.rank == 0:
            solved_N = self._solve_on_rank0(unary_NK)
            started = time.perf_counter()
            labels_N.copy_(torch.from_numpy(solved_N))
            to_device_ms = (time.perf_counter() - started) * 1000.0
        started = time.perf_counter()
        dist.broadcast(labels_N, src=0)
        self.timings.broadcast_ms.append((time.perf_counter() - started) * 1000.0)
        started = time.perf_counter()
        codes_B = labels_N[self.rank * batch : (self.rank + 1) * batch].clone()
        to_device_ms += (time.perf_counter() - started) * 1000.0
        self.timings.to_device_ms.append(to_device_ms)
        return codes_B
