"""Overhead of the distributed system over a plain single-process loop, discrete stage on.

Same model, global batch, data and steps for:
  (a) a plain loop: the worker's step pipeline (trainer.loop.TrainLoop), solver in-process;
  (b) this system (Ray Train + solver actor) with 1 worker;
  (c) this system with 2 workers (the global batch split between them).
Step times are medians of per-interval means (`log_every` steps per interval, the first interval
dropped as warm-up); the system's intervals include reporting and checkpointing time. The machine
is shared and its speed drifts over minutes, so (a) runs before (b), between (b) and (c), and
after (c): each system run is compared with the mean of the two (a) runs around it. Prints
(b)/(a), (c)/(a) and the share of step time spent waiting for codes; summary line last.

    python -m benchmarks.overhead [--steps 300] [--log-every 50] [--batch 64]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.local_loop import local_loop
from trainer.build import open_data
from trainer.config import load_config

ROOT = Path(__file__).resolve().parent.parent


def make_config(args, workers: int, storage: str, extra: tuple[str, ...] = ()):
    overrides = [
        f"train.num_steps={args.steps}",
        f"train.global_batch={args.batch}",
        f"train.num_workers={workers}",
        f"train.log_every={args.log_every}",
        f"train.checkpoint_every={args.steps}",
        "train.eval_every=0",
        "train.image_every=0",
        "cascade.discrete_start_stage=0",  # discrete stage from the first step
        "cascade.stage_length=100",
        f"train.run_name=overhead_{workers}w",
        f"train.storage_path={storage}",
        "eval.protocols=[authors_factorvae]",
        "eval.num_global=200",
        "eval.num_votes=10",
        "eval.vote_size=10",
        "data.num_positions=8",
        "data.num_orientations=10",
        "data.num_scales=6",
        *extra,
    ]
    return load_config(ROOT / "configs" / "debug.yaml", overrides)


def plain_loop(config, threads: int) -> tuple[float, float, float, float]:
    """(interval step ms, code wait share, 0, train_step ms), medians, of the worker's own step
    pipeline (trainer.loop.TrainLoop) in this process, with the solver called in-process."""
    torch.set_num_threads(threads)
    loop, client = local_loop(config, torch.device("cpu"))
    train = config.train
    interval_ms, wait_share, step_fn_ms = [], [], []
    started = time.perf_counter()
    for step in range(train.num_steps):
        step_fn_ms.append(loop.step(step)["perf/train_step_ms"])
        if (step + 1) % train.log_every == 0:
            now = time.perf_counter()
            waited = sum(client.timings.wait_ms)
            client.timings.clear()
            elapsed_ms = (now - started) * 1000.0
            interval_ms.append(elapsed_ms / train.log_every)
            wait_share.append(waited / elapsed_ms)
            started = now
    skip = train.log_every  # the first interval is warm-up, as for the system runs
    return (
        statistics.median(interval_ms[1:]),
        statistics.median(wait_share[1:]),
        0.0,
        statistics.median(step_fn_ms[skip:]),
    )


def system_run(config) -> tuple[float, float, float, float]:
    """(interval step ms, code wait share, shard-sync share, train_step ms), medians, of a run."""
    from trainer.distributed.worker import fit
    from trainer.observe.run_log import read_metrics

    result = fit(config)
    if result.error is not None:
        raise result.error
    rows = read_metrics(Path(config.train.storage_path) / config.run_name)
    rows = rows.to_pylist()[1:]
    return (
        statistics.median(r["perf/step_ms"] for r in rows),
        statistics.median(r.get("perf/code_wait_share", 0.0) for r in rows),
        statistics.median((r.get("solver/gather_ms") or 0.0) / r["perf/step_ms"] for r in rows),
        statistics.median(r["perf/train_step_ms"] for r in rows),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()

    from launch.cluster import connect
    from trainer.runtime import keep_freed_memory

    keep_freed_memory()  # as the Train workers do, so (a) and (b) allocate alike

    with tempfile.TemporaryDirectory() as storage:
        connect(num_cpus=os.cpu_count())
        one = make_config(args, 1, storage)
        open_data(one, progress=True)
        # (a) uses the thread count of one Ray worker with 1 CPU (Ray sets OMP_NUM_THREADS=1).
        threads = int(one.train.cpus_per_worker)
        plain = [plain_loop(one, threads)]
        system = {"b": system_run(one)}
        plain.append(plain_loop(one, threads))
        system["c"] = system_run(make_config(args, 2, storage))
        plain.append(plain_loop(one, threads))
    baseline_ms = {"b": (plain[0][0] + plain[1][0]) / 2, "c": (plain[1][0] + plain[2][0]) / 2}

    print(
        f"\nsteps {args.steps}, global batch {args.batch}, discrete stage on, "
        f"{args.log_every}-step intervals (first dropped)"
    )
    print(
        f"{'run':<36}{'step ms':>9}{'vs (a)':>8}{'code wait':>11}{'shard sync':>12}"
        f"{'train_step ms':>15}"
    )
    names = {
        "a": "(a) plain loop, in-process solver",
        "b": "(b) Ray Train, 1 worker",
        "c": "(c) Ray Train, 2 workers",
    }
    rows = [("a", plain[0]), ("b", system["b"]), ("a", plain[1]), ("c", system["c"])]
    rows.append(("a", plain[2]))
    for key, (ms, share, sync, step_fn) in rows:
        ratio = f"{ms / baseline_ms[key]:>8.3f}" if key in baseline_ms else f"{'':>8}"
        print(
            f"{names[key]:<36}{ms:>9.1f}{ratio}{100 * share:>10.1f}%{100 * sync:>11.1f}%"
            f"{step_fn:>15.1f}"
        )
    print(
        "code wait: from holding all unary shards to holding the codes (solve, actor round trip,"
        " broadcast);\nshard sync: in the all-gather, mostly waiting for the slower rank (the"
        " synchronisation DDP's all-reduce imposes anyway);\ntrain_step ms: the core step"
        " function alone (forward with unary and codes, backward, optimizer), median per step;"
        "\nvs (a): against the mean of the two (a) runs before and after it."
    )
    b_ratio = system["b"][0] / baseline_ms["b"]
    c_ratio = system["c"][0] / baseline_ms["c"]
    print(
        f"SUMMARY overhead b/a={b_ratio:.3f} c/a={c_ratio:.3f} "
        f"code_wait_b={100 * system['b'][1]:.1f}% code_wait_c={100 * system['c'][1]:.1f}% "
        f"(targets: b/a <= 1.10, code wait <= 5%)"
    )


if __name__ == "__main__":
    main()
