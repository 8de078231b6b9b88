"""The Ray Train side of a run: the per-worker loop and the TorchTrainer that runs it.

This is the only Ray-Train-aware module of `trainer/`. Every step of every worker:
  1. read this rank's disjoint shard of global batch t (a pure function of seed, t, rank);
  2. encode, draw z with this step's noise, compute the unary shard (B, K) without gradients;
  3. rank 0 gathers all shards, the central solver actor solves ONE assignment over the global
     batch, every rank receives its slice of codes (trainer.distributed.codes);
  4. decode with those codes and take the DDP gradient step (trainer.core.step).
Before the discrete stage the codes are all zeros and the solver is not called.

Rank 0 alone writes TensorBoard, the metrics table and checkpoints; every rank calls
`ray.train.report` once per log interval (a report is a barrier across ranks).
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.build import (
    build_capacities,
    build_model,
    build_optimizer,
    build_schedule,
    evaluation_kwargs,
    open_data,
)
from trainer.checkpoint import TrainState, read_checkpoint, restore_state, save_checkpoint
from trainer.config import Config
from trainer.core.agreement import JOINT_PREFIX, agreement_metrics
from trainer.core.model import CascadeVAE
from trainer.core.step import train_step
from trainer.data.dsprites import DSprites, batch_indices_for_step
from trainer.distributed.codes import GlobalCodeClient
from trainer.distributed.runtime import keep_freed_memory
from trainer.eval import SHAPE_FACTOR, evaluate_model
from trainer.loop import load_batch, spread_indices, step_seed, true_shape_codes
from trainer.observe.images import category_means, reconstructions, traversals
from trainer.observe.progress import IntervalMeter, codes_text, eval_text, format_eta, say
from trainer.observe.run_log import NullRunLog, RunLog

SOLVER_NAMESPACE = "cascadevae"
FAILED_ONCE_MARKER = ".failed_once_at_step"
CHECKPOINT_SCORE = "checkpoint/score"
"""Report key Ray Train ranks checkpoints by when `train.keep_best_by` is set."""


# --------------------------------------------------------------------------- pure helpers


def average_across_ranks(metrics: dict[str, float], world_size: int) -> dict[str, float]:
    """Mean of every metric over ranks; `codes/count_*` and `codes/joint_*` are summed (counts
    of the global batch)."""
    if world_size == 1:
        return metrics
    import torch.distributed as dist

    keys = sorted(metrics)
    values = torch.tensor([metrics[k] for k in keys], dtype=torch.float64)
    backend_device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    values = values.to(backend_device)
    dist.all_reduce(values)
    values = values.cpu()
    return {
        k: float(v) if k.startswith(("codes/count_", JOINT_PREFIX)) else float(v) / world_size
        for k, v in zip(keys, values.tolist(), strict=True)
    }


# --------------------------------------------------------------------------- the worker loop
def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Entry point of every Ray Train worker. `loop_config`: {"config", "run_dir", "solver"}."""
    import ray
    import ray.train
    import ray.train.torch

    _quiet_report_echo()
    keep_freed_memory()  # large activation buffers are reused instead of re-faulted every step
    config = Config.from_dict(loop_config["config"])
    run_dir = Path(loop_config["run_dir"])
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    train = config.train

    # Same initialisation on every rank (DDP also broadcasts rank 0's parameters).
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    dataset = open_data(config)
    model = build_model(config).to(device)
    optimizer, scheduler = build_optimizer(config, model)
    state = TrainState(model, optimizer, scheduler, next_step=0)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            payload, _ = read_checkpoint(folder)
            restore_state(payload, state)
    start_step = state.next_step
    ddp_model = ray.train.torch.prepare_model(model)  # DDP when world_size > 1

    solve = None
    if rank == 0 and loop_config.get("solver"):
        from solver.actor import solve_remote

        actor = ray.get_actor(loop_config["solver"]["name"], namespace=SOLVER_NAMESPACE)
        lam, timeout_s = config.solver.lam, config.solver.timeout_s

        def solve(unary_NK: np.ndarray) -> tuple[np.ndarray, float]:
            labels_N, solve_ms, _ = solve_remote(actor, unary_NK, lam, timeout_s)
            return labels_N, solve_ms

    recorded: list[tuple[int, np.ndarray, np.ndarray]] = []
    client = (
        None
        if config.model.variant != "cascade"
        else GlobalCodeClient(
            solve,
            rank=rank,
            world_size=world_size,
            record=(lambda u, c: recorded.append((client.step, u, c)))
            if train.record_codes_steps
            else None,
        )
    )
    schedule = build_schedule(config)
    capacities = build_capacities(config)
    oracle = config.model.variant == "oracle"
    log = RunLog(run_dir, config.to_yaml(), resume_step=start_step) if rank == 0 else NullRunLog()
    # Evenly spaced over the grid, so every shape and scale is in the preview.
    preview_x = load_batch(dataset, np.linspace(0, len(dataset) - 1, 8).astype(np.int64), device)
    preview_x = torch.cat([preview_x, load_batch(dataset, spread_indices(len(dataset)), device)])
    if rank == 0:
        say(
            f"[cascadevae] rank 0 of {world_size} on {device}: steps {start_step}->"
            f"{train.num_steps}, global batch {train.global_batch}, {len(dataset)} images, "
            f"run dir {run_dir}"
        )

    meter = IntervalMeter()
    run_started = time.perf_counter()
    steps_this_attempt = 0
    last_metrics: dict[str, float] = {}
    latest_eval: dict[str, float] = {}
    for step in range(start_step, train.num_steps):
        if train.fail_at_step and step == train.fail_at_step:
            _fail_once(run_dir, step, rank)
        if client is not None:
            client.step = step
        phase_started = time.perf_counter()
        indices = batch_indices_for_step(
            len(dataset),
            seed=config.seed,
            step=step,
            rank=rank,
            world_size=world_size,
            global_batch=train.global_batch,
        )
        x_B1HW = load_batch(dataset, indices, device)
        shapes_B = dataset.latent_classes[indices, SHAPE_FACTOR]
        data_done = time.perf_counter()
        generator = torch.Generator().manual_seed(step_seed(config.seed, step, rank))
        if client and train.record_codes_steps and len(recorded) >= train.record_codes_steps:
            client.record = None
        metrics = train_step(
            ddp_model,
            optimizer,
            scheduler,
            x_B1HW,
            iteration=step,
            schedule=schedule,
            eps_generator=generator,
            choose_codes=true_shape_codes(shapes_B) if oracle else client,
            weight_penalty_coef=config.model.weight_penalty,
            shapes_B=shapes_B,
            capacities=capacities,
        )
        # Where a step's time goes (the rest of perf/step_ms is reporting and logging).
        metrics["perf/data_ms"] = 1000.0 * (data_done - phase_started)
        metrics["perf/train_step_ms"] = 1000.0 * (time.perf_counter() - data_done)
        meter.add(metrics)
        steps_this_attempt += 1
        done = step + 1
        last = done == train.num_steps
        log_due = done % train.log_every == 0
        eval_due = (log_due or last) and _due(done, train.eval_every, last)
        # Keeping the best model by a metric needs a checkpoint of every evaluated model.
        checkpoint_due = last or done % train.checkpoint_every == 0
        checkpoint_due = checkpoint_due or (eval_due and bool(train.keep_best_by))
        if not (checkpoint_due or log_due):
            continue

        # ---- one log interval ends: aggregate, write, report (every rank, same count)
        interval_end = time.perf_counter()
        elapsed = interval_end - meter.started
        interval = meter.means()
        timings = client.timings.summary() if client is not None else {}
        if client is not None:
            client.timings.clear()
        # Every rank waits for codes; only rank 0 talks to the solver. Reduce the keys that all
        # ranks hold (a collective needs equal shapes), then add rank 0's solver timings.
        for key in ("solver/wait_ms", "solver/gather_ms"):
            if key in timings:
                interval[key] = timings.pop(key)
        interval = average_across_ranks(interval, world_size)
        interval.update(agreement_metrics(interval))
        interval.update(timings)
        interval["perf/images_per_s"] = meter.steps * train.global_batch / max(elapsed, 1e-9)
        interval["perf/step_ms"] = 1000.0 * elapsed / max(meter.steps, 1)
        if "solver/wait_ms" in interval:
            interval["perf/code_wait_share"] = interval["solver/wait_ms"] / interval["perf/step_ms"]
        if rank == 0:
            if eval_due:
                interval.update(_evaluate(config, model, dataset, device))
            if _due(done, train.image_every, last):
                _log_images(log, done, model, preview_x)
            log.scalars(done, interval)
            rate = steps_this_attempt / (time.perf_counter() - run_started)
            say(
                f"[cascadevae] step {done}/{train.num_steps} | "
                f"{interval['perf/images_per_s']:.0f} img/s | "
                f"ETA {format_eta((train.num_steps - done) / max(rate, 1e-9))} | "
                f"loss {interval['loss/total']:.2f} (recon {interval['loss/recon']:.2f})"
                + (f" | {codes_text(interval)}" if "codes/shape_agreement" in interval else "")
                + (
                    f" | {eval_text(interval)}"
                    if any(k.startswith("eval/") for k in interval)
                    else ""
                )
            )
        last_metrics = interval
        # Evaluations are rarer than reports; carry the latest one forward so that a Tune
        # scheduler ranking trials on an eval metric sees it in every report.
        latest_eval.update({k: v for k, v in interval.items() if k.startswith("eval/")})
        report = {"step": done, **latest_eval, **interval}
        if train.keep_best_by:
            # Only a model evaluated at this very step is ranked; the others rank last.
            report[CHECKPOINT_SCORE] = float(interval.get(train.keep_best_by, -math.inf))
        if checkpoint_due:
            _report_with_checkpoint(report, rank, state, done, config, log)
        else:
            ray.train.report(report)
        meter = IntervalMeter(started=interval_end)

    if recorded:
        np.savez(
            run_dir / f"codes_rank{rank}.npz",
            steps=np.array([s for s, _, _ in recorded]),
            unary=np.stack([u for _, u, _ in recorded]),
            codes=np.stack([c for _, _, c in recorded]),
        )
    if rank == 0:
        final = {k: v for k, v in last_metrics.items() if k.startswith(("eval/", "loss/"))}
        log.hparams(_hparams(config), final)
        log.close()


def _quiet_report_echo() -> None:
    """Silence Train V2's INFO echo of every report ("Reporting training result N: ...").

    Ray 2.60 logs it on a logger named after its source file, which `LoggingConfig` does not
    reach; the rank-0 progress line already says what matters.
    """
    import logging

    try:
        from ray.train.v2._internal.execution import context as train_context
    except ImportError:  # another Ray layout: keep its logging as it is
        return
    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)


def _due(done: int, every: int, last: bool) -> bool:
    return last or (every > 0 and done % every == 0)


def _evaluate(config: Config, model: CascadeVAE, dataset: DSprites, device) -> dict[str, float]:
    started = time.perf_counter()
    model.eval()
    try:
        results = evaluate_model(model, dataset, device=device, **evaluation_kwargs(config))
    finally:
        model.train()
    results["perf/eval_s"] = time.perf_counter() - started
    return results


def _log_images(log, step: int, model: CascadeVAE, preview_x: torch.Tensor) -> None:
    model.eval()
    try:
        log.image("images/reconstructions", step, reconstructions(model, preview_x[:8]))
        if model.num_categories:
            log.image("images/category_means", step, category_means(model, preview_x))
        for category, grid in traversals(model, preview_x[:1]).items():
            tag = "images/traversal" if category is None else f"images/traversal_category{category}"
            log.image(tag, step, grid)
    finally:
        model.train()
    log.flush()


def _hparams(config: Config) -> dict[str, Any]:
    flat = config.flat()
    keep = (
        "seed",
        "cascade.",
        "solver.lam",
        "optim.lr",
        "train.num_steps",
        "train.global_batch",
        "train.num_workers",
        "model.",
    )
    return {k: v for k, v in flat.items() if k.startswith(keep) and v is not None}


def _report_with_checkpoint(report, rank: int, state: TrainState, done: int, config, log) -> None:
    import ray.train

    with tempfile.TemporaryDirectory() as folder:
        checkpoint = None
        if rank == 0:
            log.flush()
            state.next_step = done
            save_checkpoint(folder, state, config.to_yaml())
            checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report(report, checkpoint=checkpoint)


def _fail_once(run_dir: Path, step: int, rank: int) -> None:
    """Fault drill (`train.fail_at_step`): crash every worker once at `step`, never again."""
    import ray.train.collective

    marker = run_dir / FAILED_ONCE_MARKER
    # All ranks look before rank 0 writes, so they agree on whether this is the first time.
    first_time = not marker.exists()
    ray.train.collective.barrier()
    if first_time:
        if rank == 0:
            marker.write_text(str(step))
        ray.train.collective.barrier()
        raise RuntimeError(f"train.fail_at_step={step}: injected worker failure (fault drill)")


# --------------------------------------------------------------------------- the trainer
def _checkpoint_config(train):
    """Keep the newest checkpoints, or with `train.keep_best_by` the best ones by that metric;
    Ray Train always keeps the latest checkpoint besides them (for resuming)."""
    from ray.train import CheckpointConfig

    if not train.keep_best_by:
        return CheckpointConfig(num_to_keep=train.num_checkpoints_kept)
    return CheckpointConfig(
        num_to_keep=train.num_checkpoints_kept,
        checkpoint_score_attribute=CHECKPOINT_SCORE,
        checkpoint_score_order="max",
    )


def fit(config: Config, *, storage_path: str | None = None, callbacks: list | None = None):
    """Run (or resume) one training run on the connected Ray cluster; returns the Train Result.

    The run folder is `<storage_path>/<run name>`; a second call with the same folder resumes
    from its last checkpoint. Builds the data cache on the driver first so that workers only
    memory-map it.
    """
    import ray
    from ray.train import (
        FailureConfig,
        LoggingConfig,
        RunConfig,
        ScalingConfig,
    )
    from ray.train.torch import TorchConfig, TorchTrainer

    train = config.train
    storage = Path(storage_path or train.storage_path).expanduser().resolve()
    run_dir = storage / config.run_name
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(config.to_yaml())
    open_data(config, progress=True)

    solver_info, actor = None, None
    if config.model.variant == "cascade":
        from solver.actor import get_or_create_solver_actor

        name = f"{config.solver.actor_name}-{config.run_name}-{os.getpid()}"
        actor = get_or_create_solver_actor(name, namespace=SOLVER_NAMESPACE)
        solver_info = {"name": name}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "config": config.to_dict(),
            "run_dir": str(run_dir),
            "solver": solver_info,
        },
        scaling_config=ScalingConfig(
            num_workers=train.num_workers,
            use_gpu=train.use_gpu,
            resources_per_worker={"CPU": train.cpus_per_worker},
        ),
        torch_config=TorchConfig(
            backend="nccl" if train.use_gpu else "gloo", timeout_s=int(train.collective_timeout_s)
        ),
        run_config=RunConfig(
            name=config.run_name,
            storage_path=str(storage),
            failure_config=FailureConfig(max_failures=train.max_failures),
            checkpoint_config=_checkpoint_config(train),
            callbacks=callbacks,
            # Train's INFO logs echo every report; the rank-0 progress line says what matters.
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
    )
    try:
        return trainer.fit()
    finally:
        if actor is not None:
            ray.kill(actor, no_restart=True)
