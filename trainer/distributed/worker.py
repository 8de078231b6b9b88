"""The Ray Train side of a run: the per-worker loop and the TorchTrainer that runs it.

The worker builds its parts (trainer.build), restores the last checkpoint and loops
`metrics = loop.step(step); hooks.after_step(step, metrics)` (trainer.loop). In one step of
every worker:
  1. read this rank's disjoint shard of global batch t (a pure function of seed, t, rank);
  2. encode, draw z with this step's noise, compute the unary shard (B, K) without gradients;
  3. rank 0 gathers all shards, the central solver actor solves ONE assignment over the global
     batch, every rank receives its slice of codes (trainer.distributed.codes);
  4. decode with those codes and take the DDP gradient step (trainer.core.step).
Before the discrete stage the codes are all zeros and the solver is not called.

Rank 0 alone evaluates and writes TensorBoard, the metrics table and checkpoints; every rank
calls `ray.train.report` once per log interval (a report is a barrier across ranks).
"""

from __future__ import annotations

import functools
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch

from trainer.build import (
    apply_memory_format,
    build_extras,
    build_model,
    build_optimizer,
    open_data,
    resolve_precision,
)
from trainer.checkpoint import (
    CorruptCheckpointError,
    TrainState,
    read_newest_intact,
    restore_state,
    save_checkpoint,
)
from trainer.config import Config
from trainer.core.agreement import JOINT_PREFIX
from trainer.distributed.codes import GlobalCodeClient
from trainer.distributed.drills import CodeRecorder, FaultDrill, HoldDrill
from trainer.eval import TABLE_NAMESPACES, output_keys
from trainer.loop import TrainLoop, load_batch
from trainer.observe.cadence import Cadence, Hook, Hooks, evaluation_cadence
from trainer.observe.hooks import EvaluationHook, ImageHook, LogHook
from trainer.observe.images import preview_indices
from trainer.observe.progress import say
from trainer.observe.run_log import NullRunLog, RunLog, record_attempt
from trainer.provenance import Provenance, read_provenance
from trainer.reported import CHECKPOINT_SCORE
from trainer.run_folder import prepare_run_folder, upload_checkpoint
from trainer.runtime import keep_freed_memory
from trainer.variants.registry import variant_of
from trainer.variants.types import Codes

SOLVER_NAMESPACE = "cascadevae"
STALL_TIMEOUT_VAR = "RAY_TRAIN_WORKER_HEALTH_CHECK_TIMEOUT_S"
"""Ray Train marks a worker dead when its health check hangs this long (train.stall_timeout_s)."""
UNRANKED_SCORE = -sys.float_info.max
"""The `checkpoint/score` of a checkpoint with no evaluation to rank it: below every real score,
and finite, because Ray Train's checkpoint snapshot is pydantic JSON, which writes -inf and NaN
as null and then cannot read them back on resume."""


def checkpoint_score(interval: dict[str, float], key: str, ranked: bool) -> float:
    """The ranking score of the checkpoint at the end of `interval`: the value of `key` when the
    model was evaluated on the ranked cadence, else (or when that value is not finite)
    UNRANKED_SCORE."""
    score = interval.get(key, UNRANKED_SCORE) if ranked else UNRANKED_SCORE
    return float(score) if math.isfinite(score) else UNRANKED_SCORE


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
    """Entry point of every Ray Train worker. `loop_config`: {"config", "run_dir", "solver",
    "provenance"}."""
    import ray.train
    import ray.train.torch

    _quiet_report_echo()
    keep_freed_memory()  # large activation buffers are reused instead of re-faulted every step
    config = Config.from_dict(loop_config["config"])
    run_dir = Path(loop_config["run_dir"])
    provenance = Provenance.from_dict(loop_config["provenance"])
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()

    # Same initialisation on every rank (DDP also broadcasts rank 0's parameters).
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    dataset = open_data(config)
    model = build_model(config).to(device)
    optimizer, scheduler = build_optimizer(config, model)
    extras = build_extras(config, device)  # the variant's other trained modules, if any
    state = TrainState(model, optimizer, scheduler, next_step=0, extras=extras)
    resumed = _restore(state, ray.train.get_checkpoint(), run_dir)
    start_step = state.next_step
    precision = resolve_precision(config.train, device)
    apply_memory_format(model, precision)  # before DDP lays out its gradient buckets
    record_attempt(
        run_dir, rank=rank, world_size=world_size, start_step=start_step, notes=resumed,
        precision=precision.dtype_name, memory_format=precision.memory_format_name,
        torch_threads=torch.get_num_threads(),  # Ray's OMP_NUM_THREADS: train.cpus_per_worker
    )  # fmt: skip
    client = _code_client(config, loop_config.get("solver"), rank, world_size)
    extras.wrap(ray.train.torch.prepare_model)  # DDP when world_size > 1, as the VAE
    loop = TrainLoop(
        config,
        dataset,
        ray.train.torch.prepare_model(model),  # DDP when world_size > 1
        optimizer,
        scheduler,
        device=device,
        chooser=client,
        rank=rank,
        world_size=world_size,
        extras=extras,
    )
    run_yaml = provenance.yaml_header() + config.to_yaml()
    log = RunLog(run_dir, run_yaml, resume_step=start_step) if rank == 0 else NullRunLog()
    hooks, recorder = _hooks(
        config,
        model,
        dataset,
        device,
        log,
        state,
        run_dir,
        client,
        rank,
        world_size,
        start_step,
        provenance,
    )
    if rank == 0:
        for line in resumed:
            say(f"[cascadevae] {line}")
        say(
            f"[cascadevae] rank 0 of {world_size} on {device}: steps {start_step}->"
            f"{config.train.num_steps}, global batch {config.train.global_batch}, "
            f"{len(dataset)} images, {precision.describe()}, "
            f"{torch.get_num_threads()} torch thread(s), run dir {run_dir}"
        )

    last_interval: dict[str, float] = {}
    for step in range(start_step, config.train.num_steps):
        hooks.before_step(step)
        metrics = loop.step(step)
        last_interval = hooks.after_step(step, metrics) or last_interval

    if recorder is not None:
        recorder.save()
    if rank == 0:
        scores = output_keys(config.eval.protocols)
        final = {k: v for k, v in last_interval.items() if k in scores or k.startswith("loss/")}
        used = {  # what `auto` resolved to on this machine
            "train.precision": precision.dtype_name,
            "train.memory_format": precision.memory_format_name,
        }
        if client is not None and client.transport is not None:
            used["solver.transport"] = client.transport()  # `ordinary (reason)` on a fallback
        log.hparams(_hparams(config) | used | provenance.hparams(), final)
        log.close()
    if client is not None:
        client.close()


def _restore(state: TrainState, checkpoint, run_dir: Path) -> list[str]:
    """Load the newest intact checkpoint into `state`: Ray's latest, or when that one is corrupt
    the newest readable `checkpoint_*` folder of the run before it. Returns what to tell the
    user (skipped folders, the step resumed from); raises when checkpoints exist but none reads.
    """
    if checkpoint is None:
        return []
    with checkpoint.as_directory() as latest:
        latest = Path(latest)
        older = sorted(
            (p for p in run_dir.glob("checkpoint_*") if p.is_dir() and p.name < latest.name),
            reverse=True,
        )
        found, skipped = read_newest_intact([latest, *older])
        if found is None:
            reason = "no intact checkpoint to resume from: " + "; ".join(skipped)
            raise CorruptCheckpointError(latest, reason)
        payload, folder = found
        restore_state(payload, state)
    lines = [f"skipped {line}" for line in skipped]
    return lines + [f"resumed from step {state.next_step} ({folder.name})"] if skipped else lines


def _code_client(config: Config, solver: dict | None, rank: int, world_size: int):
    """The chooser of a variant whose codes come from the solver: rank 0 calls the solver actor
    named in `solver` (None for the other variants)."""
    if variant_of(config).codes is not Codes.SOLVER:
        return None
    solve, transport, close = None, None, None
    if rank == 0 and solver:
        import ray

        from trainer.distributed.solver_actor import (
            CompiledSolve,
            get_or_create_solver_actor,
            restart_if_another_graph_ran,
            solve_remote,
        )

        if solver.get("beside_rank0"):  # owned by this worker: it ends with the worker group
            # A name per worker process: a restarted group never finds its dead predecessor's.
            name = f"{solver['name']}-rank0-{os.getpid()}"
            node_id = ray.get_runtime_context().get_node_id()
            actor = get_or_create_solver_actor(name, SOLVER_NAMESPACE, node_id)
        else:
            actor = ray.get_actor(solver["name"], namespace=SOLVER_NAMESPACE)
        lam, timeout_s = config.solver.lam, config.solver.timeout_s
        # The client checks each step's matrix once (finite, float64, 2-D) on every rank;
        # lam was checked with the config: nothing is validated again on the way.
        call: Any = functools.partial(solve_remote, actor)
        transport = lambda: "ordinary"  # noqa: E731
        if config.solver.transport_for(config.train.use_gpu) == "compiled":
            if not solver.get("beside_rank0") and restart_if_another_graph_ran(actor, timeout_s):
                # The actor outlived an earlier worker group, whose graph loop held it.
                print(
                    "[cascadevae] the solver actor was restarted: an earlier worker group's "
                    "compiled graph had run on it",
                    flush=True,
                )
            compiled = call = CompiledSolve(actor)
            # Built and warmed up in the background while the first steps run.
            compiled.start(config.train.global_batch, config.model.num_categories, lam)
            transport, close = (lambda: compiled.transport), compiled.close

        def solve(unary_NK: np.ndarray) -> tuple[np.ndarray, float]:
            labels_N, solve_ms, _ = call(unary_NK, lam, timeout_s, checked=True)
            return labels_N, solve_ms

    return GlobalCodeClient(
        solve, rank=rank, world_size=world_size, transport=transport, close=close
    )


def _hooks(
    config,
    model,
    dataset,
    device,
    log,
    state,
    run_dir,
    client,
    rank,
    world_size,
    start_step,
    provenance: Provenance,
):
    """The run's hooks in order: evaluation and pictures and the log on rank 0, the report
    (with a checkpoint when due) on every rank; the drills when the config asks for them."""
    train = config.train
    preview_x = load_batch(dataset, preview_indices(len(dataset), num_spread=240), device)
    hooks: list[Hook] = []
    if rank == 0:  # the log after the evaluation, so that its scalars and line include it
        hooks += [
            EvaluationHook(evaluation_cadence(config), config, model, dataset, device),
            ImageHook(Cadence(train.image_every), model, preview_x, log),
            LogHook(Cadence(1), log, num_steps=train.num_steps, start_step=start_step),
        ]
    hooks.append(ReportHook(config, state, log, rank, run_dir, provenance))
    before: list = [FaultDrill(train.fail_at_step, run_dir, rank)] if train.fail_at_step else []
    if train.hold_at_step:
        before.append(HoldDrill(train.hold_at_step, run_dir, rank))
    recorder = None
    if client is not None and train.record_codes_steps:
        recorder = CodeRecorder(client, train.record_codes_steps, run_dir, rank)
    checkpoints, evaluations = Cadence(train.checkpoint_every), evaluation_cadence(config)
    runner = Hooks(
        hooks,
        ends=[Cadence(train.log_every), checkpoints, evaluations, Cadence(train.image_every)],
        num_steps=train.num_steps,
        global_batch=train.global_batch,
        reduce=lambda metrics: average_across_ranks(metrics, world_size),
        extra=(lambda: _solver_timings(client)) if client is not None else None,
        before=before,
    )
    return runner, recorder


def _solver_timings(client: GlobalCodeClient) -> tuple[dict[str, float], dict[str, float]]:
    """(keys every rank holds, rank 0's own) of the client's interval timings; clears them.
    Every rank waits for codes; only rank 0 talks to the solver."""
    timings = client.timings.summary()
    client.timings.clear()
    shared: dict[str, float] = {
        k: timings.pop(k) for k in ("solver/wait_ms", "solver/gather_ms") if k in timings
    }
    return shared, timings


class ReportHook:
    """`ray.train.report` at every interval end, on every rank (a report is a barrier): with a
    checkpoint every `train.checkpoint_every` steps, at the end, and, with `train.keep_best_by`,
    after every evaluation of the `train.eval_every` cadence. The latest evaluation is carried
    forward in every report, so that a Tune scheduler ranking trials on an eval metric sees it
    each time."""

    def __init__(
        self,
        config: Config,
        state: TrainState,
        log,
        rank: int,
        run_dir: Path,
        provenance: Provenance,
    ):
        train = config.train
        self.config, self.state, self.log, self.rank = config, state, log, rank
        self.run_dir, self.provenance = run_dir, provenance
        self.keep_best_by = train.keep_best_by
        self.checkpoints = Cadence(train.checkpoint_every)
        self.ranked_evaluations = Cadence(train.eval_every)  # not the extra, diagnostic one
        self.cadence = Cadence(1)  # every interval end
        self.latest_eval: dict[str, float] = {}

    def run(self, done: int, interval: dict[str, float]) -> None:
        import ray.train

        last = done == self.config.train.num_steps
        evaluated = ("eval/", *TABLE_NAMESPACES)
        self.latest_eval.update({k: v for k, v in interval.items() if k.startswith(evaluated)})
        report = {"step": done, **self.latest_eval, **interval}
        checkpoint_due = self.checkpoints.due(done, last)
        if self.keep_best_by:
            # Keeping the best model by a metric needs a checkpoint of every evaluated model;
            # only a model evaluated at this very step on the eval_every cadence is ranked, the
            # others rank last.
            ranked = self.ranked_evaluations.due(done, last)
            checkpoint_due = checkpoint_due or ranked
            report[CHECKPOINT_SCORE] = checkpoint_score(interval, self.keep_best_by, ranked)
        if not checkpoint_due:
            ray.train.report(report)
            return
        with tempfile.TemporaryDirectory() as folder:
            checkpoint = None
            if self.rank == 0:
                self.log.flush()
                self.state.next_step = done
                run_yaml = self.provenance.yaml_header() + self.config.to_yaml()
                save_checkpoint(folder, self.state, run_yaml, self.provenance.as_dict())
                checkpoint = ray.train.Checkpoint.from_directory(folder)
            ray.train.report(report, checkpoint=checkpoint, checkpoint_upload_fn=self._upload)

    def _upload(self, checkpoint, name: str):
        """Ray Train's copy of a checkpoint into the run folder, made whole-or-absent
        (trainer.run_folder.upload_checkpoint)."""
        import ray.train

        return ray.train.Checkpoint.from_directory(
            str(upload_checkpoint(checkpoint.path, self.run_dir, name))
        )


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


def fit(
    config: Config,
    *,
    storage_path: str | None = None,
    callbacks: list | None = None,
    provenance: Provenance | None = None,
):
    """Run (or resume) one training run on the connected Ray cluster; returns the Train Result.

    The run folder is `<storage_path>/<run name>`; a second call with the same folder resumes
    from its last checkpoint. Builds the data cache on the driver first so that workers only
    memory-map it. `provenance` (read here when not given) goes into config.yaml, every
    checkpoint's state.json and the TensorBoard hparams.
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
    provenance = provenance or read_provenance()
    # Refuses a resume with another trained state; config.yaml is written after the check.
    for line in prepare_run_folder(run_dir, config, header=provenance.yaml_header()):
        say(f"[cascadevae] {line}")
    open_data(config, progress=True)

    solver_info, actor = None, None
    if variant_of(config).codes is Codes.SOLVER:
        from trainer.distributed.nodes import head_node_id
        from trainer.distributed.solver_actor import get_or_create_solver_actor

        name = f"{config.solver.actor_name}-{config.run_name}-{os.getpid()}"
        solver_info = {"name": name, "beside_rank0": config.solver.placement == "rank0"}
        if not solver_info["beside_rank0"]:
            # Pinned: the head lives as long as the cluster, so the actor never moves.
            actor = get_or_create_solver_actor(name, SOLVER_NAMESPACE, head_node_id())
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "config": config.to_dict(),
            "run_dir": str(run_dir),
            "solver": solver_info,
            "provenance": provenance.as_dict(),
        },
        scaling_config=ScalingConfig(
            num_workers=train.num_workers,
            use_gpu=train.use_gpu,
            placement_strategy=train.placement_strategy,
            resources_per_worker={"CPU": train.cpus_per_worker}
            | ({"GPU": train.gpus_per_worker} if train.use_gpu else {}),
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
            # (ray.train exports Train V2's RunConfig, Ray's default, which takes logging_config;
            # a type checker reads the V1 class of the other import branch.)
            logging_config=LoggingConfig(log_level="WARNING"),  # type: ignore[call-arg]
        ),
    )
    try:
        # Set for the call, then restored: Train hands the variable to its controller.
        with mock.patch.dict(os.environ, {STALL_TIMEOUT_VAR: f"{train.stall_timeout_s:g}"}):
            return trainer.fit()
    finally:
        if actor is not None:
            ray.kill(actor, no_restart=True)
