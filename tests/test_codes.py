"""The global code exchange over torch.distributed (gloo, 2 processes), without Ray."""

from __future__ import annotations

import datetime
import os
import socket
import time

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from trainer.distributed.codes import (
    CodeExchangeError,
    CodeTimings,
    GlobalCodeClient,
    NonFiniteUnaryError,
)

B, K = 4, 3
SOLVE_S = 0.2  # the fake solver's wall time
LATE_S = 0.5  # how late the late rank joins the exchange


DONE = "rank{rank}.done"  # written by a rank after its result file
READY = "rank0.entering"  # written by rank 0 just before it enters the exchange


def _wait_for(path: str, timeout_s: float) -> None:
    """Return once `path` exists; TimeoutError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout_s} s")
        time.sleep(0.05)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _shard(rank: int) -> torch.Tensor:
    # Distinct, recognisable values per rank: row i of rank r starts at 100 * r + 10 * i.
    base = 100.0 * rank + 10.0 * torch.arange(B, dtype=torch.float32)[:, None]
    return base + torch.arange(K, dtype=torch.float32)[None, :]


def _solve(unary_NK: np.ndarray) -> tuple[np.ndarray, float]:
    # Label of global row n is n % K: each rank must receive exactly its rows' labels.
    time.sleep(SOLVE_S)
    return np.arange(unary_NK.shape[0]) % K, 1.5


def _worker(
    rank: int,
    world: int,
    port: int,
    out_dir: str,
    skip_rank: int | None,
    nan_rank: int | None,
    late_rank: int | None,
) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    # The timeout bounds both joining the group and every collective: long enough to join on a
    # busy machine, short where a test waits for a missing rank to time out.
    timeout_s = 10 if skip_rank is not None else 60
    dist.init_process_group(
        "gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=timeout_s)
    )
    seen: dict[str, np.ndarray] = {}

    def solve(unary_NK):
        seen["unary"] = unary_NK.copy()
        return _solve(unary_NK)

    client = GlobalCodeClient(solve if rank == 0 else None, rank=rank, world_size=world)
    client.step = 7
    result: dict[str, object] = {}
    if late_rank is not None:  # rank 0 says it is entering the exchange; the late rank waits
        ready = os.path.join(out_dir, READY)  # for that, then LATE_S more
        if rank == 0:
            with open(ready, "w"):
                pass
        elif rank == late_rank:
            _wait_for(ready, timeout_s=120)
            time.sleep(LATE_S)
    if rank != skip_rank:
        shard = _shard(rank)
        if rank == nan_rank:
            shard[2, 1] = float("nan")
        try:
            result["codes"] = client(shard).numpy()
            result["timings"] = client.timings.summary()
        except (CodeExchangeError, NonFiniteUnaryError) as err:
            result["error"] = f"{type(err).__name__}: {err}"
    else:  # a hung peer: alive, but never joins the exchange, until rank 0 has its result
        _wait_for(os.path.join(out_dir, DONE.format(rank=0)), timeout_s=120)
    result["seen"] = seen.get("unary")
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    with open(os.path.join(out_dir, DONE.format(rank=rank)), "w"):
        pass  # the result file is complete
    # Leave without running gloo's destructors: after a timed-out collective (or racing the
    # peer's exit) they can abort the process, which would fail the test for the wrong reason.
    os._exit(0)


def _run(
    world: int,
    tmp_path,
    skip_rank: int | None = None,
    nan_rank: int | None = None,
    late_rank: int | None = None,
) -> list[dict]:
    mp.start_processes(
        _worker,
        args=(world, _free_port(), str(tmp_path), skip_rank, nan_rank, late_rank),
        nprocs=world,
        join=True,
        start_method="spawn",
    )
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(world)]


def test_two_ranks_get_their_slices_of_one_assignment(tmp_path):
    results = _run(2, tmp_path, late_rank=1)
    # Rank 0's solver saw the shards concatenated in rank order.
    np.testing.assert_array_equal(results[0]["seen"], torch.cat([_shard(0), _shard(1)]).numpy())
    labels = np.arange(2 * B) % K
    np.testing.assert_array_equal(results[0]["codes"], labels[:B])
    np.testing.assert_array_equal(results[1]["codes"], labels[B:])
    assert results[0]["timings"]["solver/solve_ms"] == 1.5  # what the solver reported
    assert "solver/solve_ms" not in results[1]["timings"]  # only rank 0 calls the solver
    # Wall times have lower bounds set by the sleeps: the solve call takes SOLVE_S; rank 0
    # waits for it after its gather; rank 1 cannot hold its codes sooner than SOLVE_S after it
    # starts its gather (rank 0 solves only once rank 1's shard is in), though its own gather
    # can end after rank 0 has started to solve when the machine is loaded; rank 0 gathers
    # until rank 1 joins, LATE_S after rank 0 said it was entering the exchange (half of it is
    # the bound, leaving room for the time rank 0 takes from that marker into the gather).
    assert results[0]["timings"]["solver/round_trip_ms"] >= 1000 * SOLVE_S
    assert results[0]["timings"]["solver/wait_ms"] >= 1000 * SOLVE_S
    late = results[1]["timings"]
    assert late["solver/gather_ms"] + late["solver/wait_ms"] >= 1000 * SOLVE_S
    assert results[0]["timings"]["solver/gather_ms"] >= 1000 * LATE_S / 2
    # Rank 0 reports every declared key; rank 1 waits for the solve inside the broadcast (the
    # same bound as its wait).
    assert set(results[0]["timings"]) == set(CodeTimings.KEYS)
    assert late["solver/gather_ms"] + late["solver/broadcast_ms"] >= 1000 * SOLVE_S
    for r in results:
        parts = sum(r["timings"].get(f"solver/{p}", 0.0) for p in ("to_host_ms", "to_device_ms"))
        parts += r["timings"].get("solver/round_trip_ms", 0.0) + r["timings"]["solver/broadcast_ms"]
        assert parts <= r["timings"]["solver/wait_ms"]  # the parts lie inside the wait


def test_missing_rank_ends_in_a_clear_error_not_a_hang(tmp_path):
    results = _run(2, tmp_path, skip_rank=1)
    message = results[0]["error"]
    assert "rank 0/2 at step 7" in message and "worker is missing" in message


def test_a_nan_shard_stops_every_rank_with_the_same_clear_error(tmp_path):
    results = _run(2, tmp_path, nan_rank=1)
    expected = (
        "NonFiniteUnaryError: step 7: the unary matrix (8, 3) holds NaN/inf (1 NaN, 0 inf "
        "entries, in the shard(s) of rank(s) [1])"
    )
    for r in results:
        assert r["error"].startswith(expected), r["error"]
    assert results[0]["seen"] is None  # the solver was never called


def test_non_finite_unary_is_named_not_blamed_on_the_solver():
    calls = []

    def solve(unary_NK):
        calls.append(unary_NK)
        return _solve(unary_NK)

    client = GlobalCodeClient(solve, rank=0, world_size=1)
    client.step = 12
    unary = _shard(0)
    unary[0, 0], unary[3, 2] = float("inf"), float("nan")
    with pytest.raises(NonFiniteUnaryError) as info:
        client(unary)
    assert str(info.value).startswith(
        "step 12: the unary matrix (4, 3) holds NaN/inf (1 NaN, 1 inf entries, in the shard(s) "
        "of rank(s) [0])"
    )
    assert info.value.step == 12 and info.value.ranks == [0]
    assert calls == []


def test_single_process_calls_solver_directly():
    client = GlobalCodeClient(_solve, rank=0, world_size=1)
    codes = client(_shard(0))
    np.testing.assert_array_equal(codes.numpy(), np.arange(B) % K)
    assert codes.dtype == torch.int64
    timings = client.timings.summary()
    assert set(timings) == set(CodeTimings.KEYS) - {"solver/gather_ms"}  # no collective
    assert timings["solver/broadcast_ms"] == 0.0 and timings["solver/solve_ms"] == 1.5


def test_rank0_requires_a_solver():
    with pytest.raises(ValueError, match="rank 0 needs a solve function"):
        GlobalCodeClient(None, rank=0, world_size=2)
