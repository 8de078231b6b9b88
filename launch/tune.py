"""Hyperparameter sweeps with Ray Tune; every trial is a multi-worker Ray Train run.

    python -m launch.tune --config configs/sweeps/debug.yaml

The sweep file is validated before any trial starts (see launch/sweep.py). All trials live
under one experiment folder `<storage_path>/<name>`:

    <trial>/train/tb/        the trial's TensorBoard run (model scalars, images, hparams)
    <trial>/train/...        its checkpoints, metrics.parquet and config.yaml
    results.parquet          one row per trial: hyperparameters, final and best metric, status
    best_config.yaml         the best trial's training config, ready for `launch.train`

so `tensorboard --logdir <experiment folder>` compares all trials. Running the same command
again after an interruption continues the experiment; a failed trial is reported and the others
go on. Each trial runs a small driver function (the supported Train V2 pattern) that fits a
TorchTrainer and forwards its reports to Tune.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from launch.run_lock import run_locked
from launch.sweep import RUN_DIMENSION, SweepConfig, load_sweep
from trainer.config import ConfigError

TRIAL_DRIVER = "trial_driver"
"""Custom resource a trial driver holds instead of a CPU, so that the Train workers of a trial
can use every CPU (a driver holding one CPU starves 2 workers on 2 CPUs forever)."""


def run_trial(params: dict[str, Any], sweep: SweepConfig, experiment_dir: str) -> None:
    """Tune's per-trial driver: fit one TorchTrainer in the trial's folder of the experiment,
    report to Tune.

    The run folder is `<experiment_dir>/<trial>/train`, in the experiment's storage, so a
    resumed experiment (a new driver, often a new Ray session) finds each unfinished trial's
    checkpoints and continues it from there. `get_trial_dir()` is a working folder of the
    current Ray session, which a later session does not have."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from trainer.distributed.worker import fit

    config = sweep.trial_config(params)
    trial_dir = Path(experiment_dir) / Path(ray.tune.get_context().get_trial_dir()).name
    result = fit(config, storage_path=str(trial_dir), callbacks=[TuneReportCallback()])
    if result.error is not None:
        raise result.error


EXPERIMENT_RECORD = "cascadevae_experiment.json"
"""What defines the trials of an experiment, written when it starts; a resume compares it."""
TRAINED_RUNS = "trained_runs"
"""The record key of a study's grid: the runs its experiment trains, fixed when it starts (the
runs with a finished record then are left out). Tune restores that grid on a resume."""
TUNE_STATE = "tuner.pkl"
"""Written by Tune when an experiment starts: its presence means the folder can be resumed."""


def experiment_record(sweep: SweepConfig) -> dict[str, Any]:
    """Flat {key: value} of what defines the experiment's trials: the searcher, metric and
    scheduler, the space, and every trial's base config (a study: each run's config). Tune
    restores its searcher and scheduler as they were, so any difference is a changed
    experiment."""
    record: dict[str, Any] = {
        "search.algorithm": sweep.algorithm,
        "search.num_samples": sweep.num_samples,
        "metric": sweep.metric,
        "mode": sweep.mode,
        "scheduler.type": sweep.scheduler,
        "scheduler.grace_period": sweep.grace_period,
        "scheduler.reduction_factor": sweep.reduction_factor,
        "max_trial_failures": sweep.max_trial_failures,
    }
    runs = getattr(sweep, "runs", None)
    if runs:  # a study: one run per grid point, each with its own config
        for name in runs:
            flat = sweep.trial_config({RUN_DIMENSION: name}).flat()
            record.update({f"runs.{name}.{k}": v for k, v in flat.items()})
        record[TRAINED_RUNS] = list(sweep.dimensions[0].values)
        return record
    record.update({f"search.space.{d.name}": {d.kind: list(d.values)} for d in sweep.dimensions})
    record.update({f"base.{k}": v for k, v in sweep.base.flat().items()})
    return record


def experiment_problems(sweep: SweepConfig, experiment_dir: Path) -> list[str]:
    """One line per difference between the sweep (or study) file and the experiment it would
    resume; [] for a new experiment, the same file, or an experiment without a record. Fields
    that are not trained state (`_not_state`) may differ."""
    path = experiment_dir / EXPERIMENT_RECORD
    if not (experiment_dir / TUNE_STATE).is_file() or not path.is_file():
        return []
    old = json.loads(path.read_text())
    new = json.loads(json.dumps(experiment_record(sweep)))  # the same types as the stored one
    problems = []
    added = sorted({k.split(".")[1] for k in new.keys() - old.keys() if k.startswith("runs.")})
    gone = sorted({k.split(".")[1] for k in old.keys() - new.keys() if k.startswith("runs.")})
    problems += [
        f"runs.{n}: not a run of the experiment (a study's runs are fixed when it starts)"
        for n in added
    ]
    problems += [f"runs.{n}: a run of the experiment, missing from the file" for n in gone]
    skip = {f"runs.{n}." for n in added + gone}
    for key in sorted(old.keys() | new.keys()):
        if key == TRAINED_RUNS:  # a resume trains the experiment's own grid (`trained_runs`)
            continue
        if any(key.startswith(prefix) for prefix in skip) or _not_state(key):
            continue
        if old.get(key) != new.get(key):
            before, after = old.get(key), new.get(key)
            problems.append(f"{key}: the experiment has {before!r}, this file {after!r}")
    return problems


def _not_state(key: str) -> bool:
    """Whether a record key (`base.<field>` or `runs.<run>.<field>`) names a field that only
    says where, how or how long (trainer.run_folder.NOT_STATE, such as `solver.transport`):
    a resume may change it, and each run's folder records the change."""
    from trainer.run_folder import NOT_STATE

    parts = key.split(".")
    field = ".".join(parts[1:] if parts[0] == "base" else parts[2:] if parts[0] == "runs" else [])
    return field in NOT_STATE


def read_experiment_record(experiment_dir: Path) -> dict[str, Any]:
    """The experiment's record ({} when it has none)."""
    path = experiment_dir / EXPERIMENT_RECORD
    return json.loads(path.read_text()) if path.is_file() else {}


def write_experiment_record(sweep: SweepConfig, experiment_dir: Path) -> None:
    experiment_dir.mkdir(parents=True, exist_ok=True)
    path = experiment_dir / EXPERIMENT_RECORD
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(experiment_record(sweep), indent=1, sort_keys=True))
    os.replace(tmp, path)


def prepare_experiment(sweep: SweepConfig, experiment_dir: Path, source: str, argv: list[str]):
    """The checks of an experiment folder before Ray: storage and data cache writable, its lock
    (held until released), a resume's file against the experiment's record (which is written
    for a new experiment). Returns the lock and lines to print; raises ConfigError or
    RunFolderBusyError with the message to show."""
    import shlex

    from trainer.run_folder import RunLock, storage_problems

    problems = storage_problems(sweep.base, experiment_dir.parent)
    if problems:
        raise ConfigError(problems, "storage")
    lock = RunLock(experiment_dir, f"{shlex.join(argv)}")
    try:
        problems = experiment_problems(sweep, experiment_dir)
        if problems:
            problems.append(
                f"the experiment in {experiment_dir} was started from another file; resuming "
                "it would mix two experiments. Give the changed file another `name` (a new "
                "experiment folder), or restore the file"
            )
            raise ConfigError(problems, f"{source} (resume of {experiment_dir})")
        if not (experiment_dir / TUNE_STATE).is_file():
            write_experiment_record(sweep, experiment_dir)
    except BaseException:
        lock.release()
        raise
    return lock, [line for line in [lock.message()] if line]


def trial_name(params: dict[str, Any], index: int | str) -> str:
    parts = [f"{k}={_short(v)}" for k, v in sorted(params.items())]
    return "_".join([f"t{index}", *parts])


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _searched(sweep: SweepConfig, config: dict[str, Any]) -> dict[str, Any]:
    config = config or {}  # a trial that never started has no config in its result
    return {d.name: config[d.name] for d in sweep.dimensions if d.name in config}


def build_tuner(sweep: SweepConfig, experiment_dir: Path, restore: bool):
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    has_driver_resource = ray.cluster_resources().get(TRIAL_DRIVER, 0) > 0
    driver_resources: dict[str, float] = (
        {"cpu": 0, TRIAL_DRIVER: 1} if has_driver_resource else {"cpu": 0.001}
    )
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, sweep=sweep, experiment_dir=str(experiment_dir)),
        resources=driver_resources,
    )
    if restore:
        return tune.Tuner.restore(str(experiment_dir), trainable=trainable, resume_errored=True)

    scheduler = FIFOScheduler()
    if sweep.scheduler == "asha":
        scheduler = ASHAScheduler(
            time_attr="step",
            max_t=sweep.base.train.num_steps,
            grace_period=sweep.grace_period,
            reduction_factor=sweep.reduction_factor,
        )
    search_alg = None
    if sweep.algorithm == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        search_alg = OptunaSearch(seed=sweep.base.seed)

    def name_of(trial) -> str:
        return trial_name(_searched(sweep, trial.config), trial.trial_id.split("_")[-1])

    return tune.Tuner(
        trainable,
        param_space={d.name: d.tune_domain() for d in sweep.dimensions},
        tune_config=tune.TuneConfig(
            metric=sweep.metric,
            mode=sweep.mode,
            num_samples=sweep.num_samples,
            max_concurrent_trials=sweep.max_concurrent_trials,
            scheduler=scheduler,
            search_alg=search_alg,
            trial_name_creator=name_of,
            trial_dirname_creator=name_of,
        ),
        run_config=tune.RunConfig(
            name=sweep.name,
            storage_path=str(experiment_dir.parent),
            failure_config=tune.FailureConfig(max_failures=sweep.max_trial_failures),
        ),
    )


def results_rows(sweep: SweepConfig, grid) -> list[dict[str, Any]]:
    """One row per trial: hyperparameters, final/best metric, steps, checkpoint, status."""
    rows = []
    num_steps = sweep.base.train.num_steps
    for result in grid:
        metrics = result.metrics or {}
        history = result.metrics_dataframe
        values = []
        checkpoint = None
        if history is not None and sweep.metric in history:
            values = [float(v) for v in history[sweep.metric].tolist() if _finite(v)]
        if history is not None and "checkpoint_path" in history:
            paths = [p for p in history["checkpoint_path"].tolist() if isinstance(p, str)]
            checkpoint = paths[-1] if paths else None
        step = int(metrics.get("step", 0) or 0)
        if result.error is not None:
            status = "ERROR"
        elif step >= num_steps:
            status = "COMPLETED"
        else:
            status = "STOPPED_EARLY"
        best = (max if sweep.mode == "max" else min)(values) if values else math.nan
        rows.append(
            {
                "trial": Path(result.path).name,
                **{f"param/{k}": v for k, v in _searched(sweep, result.config).items()},
                "status": status,
                "step": step,
                f"final/{sweep.metric}": values[-1] if values else math.nan,
                f"best/{sweep.metric}": best,
                "final/loss/total": float(metrics.get("loss/total", math.nan)),
                "checkpoint_path": checkpoint or "",
                "trial_dir": str(result.path),
                "tensorboard_dir": str(Path(result.path) / "train" / "tb"),
                "error": "" if result.error is None else error_summary(result.error),
            }
        )
    rows.sort(key=lambda r: _sort_key(r[f"best/{sweep.metric}"], sweep.mode))
    return rows


def error_summary(error: BaseException) -> str:
    """The innermost `SomeError: message` line of a (Ray-wrapped) trial error, for the table."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    causes = [
        line.strip()
        for line in text.splitlines()
        if re.match(r"^\s*[\w.]*(Error|Exception)\b.*:", line)
    ]
    return (causes[-1] if causes else f"{type(error).__name__}: {text.splitlines()[0]}")[:300]


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _sort_key(value: float, mode: str) -> tuple[int, float]:
    if not _finite(value):
        return (1, 0.0)
    return (0, -value if mode == "max" else value)


def write_results(sweep: SweepConfig, rows: list[dict[str, Any]], experiment_dir: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    keys = list(dict.fromkeys(k for row in rows for k in row))
    table = pa.table({k: [row.get(k) for row in rows] for k in keys})
    table = table.replace_schema_metadata(
        {"sweep": sweep.source, "metric": sweep.metric, "mode": sweep.mode}
    )
    path = experiment_dir / "results.parquet"
    pq.write_table(table, path)
    best = next(
        (r for r in rows if r["status"] != "ERROR" and _finite(r[f"best/{sweep.metric}"])), None
    )
    if best is not None:
        params = {k[len("param/") :]: v for k, v in best.items() if k.startswith("param/")}
        config = sweep.trial_config(params)
        config.name = f"{sweep.name}_best"
        config.train.run_name = ""
        header = (
            f"# Best trial of sweep '{sweep.name}' ({best['trial']}): "
            f"best {sweep.metric} = {best[f'best/{sweep.metric}']:.4g}\n"
            f"# Run it: python -m launch.train --config {experiment_dir}/best_config.yaml\n"
        )
        (experiment_dir / "best_config.yaml").write_text(header + config.to_yaml())
    return path


def summary_text(sweep: SweepConfig, rows: list[dict[str, Any]]) -> str:
    params = [d.name for d in sweep.dimensions]
    header = ["trial", *params, "status", "step", f"best {sweep.metric}", f"final {sweep.metric}"]
    lines = [header]
    for r in rows:
        lines.append(
            [
                r["trial"].split("_")[0],
                *[_short(r.get(f"param/{p}")) for p in params],
                r["status"],
                str(r["step"]),
                _short(r[f"best/{sweep.metric}"]),
                _short(r[f"final/{sweep.metric}"]),
            ]
        )
    widths = [max(len(str(row[i])) for row in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in lines
    )


@contextlib.contextmanager
def interruption_watch():
    """Yield a function telling whether Ctrl-C interrupted `Tuner.fit()` inside the block.

    Tune replaces the SIGINT handler during fit and, on the first Ctrl-C, saves the experiment,
    puts the previous handler (ours) back and returns normally. So the handler in place after
    fit tells whether the sweep was interrupted.
    """
    flag = {"set": False}

    def ours(signum, frame):  # only reached when Tune did not install its own handler
        flag["set"] = True
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    previous = signal.signal(signal.SIGINT, ours)
    try:
        yield lambda: flag["set"] or signal.getsignal(signal.SIGINT) is ours
    finally:
        signal.signal(signal.SIGINT, previous)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m launch.tune", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--config", required=True, help="sweep file, e.g. configs/sweeps/debug.yaml"
    )
    args = parser.parse_args(argv)
    try:
        sweep = load_sweep(args.config)
        sweep.base.check_files(f"{args.config} (base config)")
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    experiment_dir = Path(sweep.storage_path).expanduser().resolve() / sweep.name
    command = ["python -m launch.tune", *(argv or sys.argv[1:])]
    return run_locked(
        lambda: prepare_experiment(sweep, experiment_dir, args.config, command),
        lambda: _run_sweep(sweep, args.config, experiment_dir),
    )


def fit_experiment(sweep: SweepConfig, source: str, experiment_dir: Path, what: str):
    """Connect to Ray (or start a local one), check its resources and that every node sees
    the storage, then run or resume the Tune experiment in `experiment_dir`. `what` describes
    it in the first line printed. Returns (result grid, None if Ctrl-C interrupted it;
    minutes) or an int exit status when a check failed."""
    # A run reports some metrics only from a later step (the code agreement from the discrete
    # stage, eval/* from the first evaluation); ASHA and the result grid skip reports without
    # the ranking metric, so Tune must not refuse them.
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    from ray import tune

    from launch.cluster import check_resources, connect
    from trainer.distributed.nodes import probe_storage, storage_message

    started = time.time()
    where = connect(resources={TRIAL_DRIVER: 1000})
    train = sweep.base.train
    check_resources(
        train.num_workers * train.cpus_per_worker,
        train.num_workers * train.gpus_per_worker if train.use_gpu else 0,
        source,
    )
    reports = probe_storage(experiment_dir.parent)
    problem = storage_message(experiment_dir.parent, reports, f"{source}: storage_path")
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    restore = tune.Tuner.can_restore(str(experiment_dir))
    print(
        f"[cascadevae] Ray: {where}; {what}; {'resuming' if restore else 'new'} experiment "
        f"{experiment_dir}",
        flush=True,
    )
    tuner = build_tuner(sweep, experiment_dir, restore)
    with interruption_watch() as interrupted:
        grid = tuner.fit()
        was_interrupted = interrupted()
    return (None if was_interrupted else grid), (time.time() - started) / 60


def _run_sweep(sweep: SweepConfig, source: str, experiment_dir: Path) -> int:
    what = (
        f"sweep '{sweep.name}': {sweep.algorithm} search, {sweep.num_trials()} trial(s), metric "
        f"{sweep.metric} ({sweep.mode}), scheduler {sweep.scheduler}"
    )
    fitted = fit_experiment(sweep, f"sweep {source}", experiment_dir, what)
    if isinstance(fitted, int):
        return fitted
    grid, minutes = fitted
    if grid is None:  # Ctrl-C: Tune saved the experiment state and returned early
        print(
            f"\n=== sweep '{sweep.name}' interrupted after {minutes:.1f} min; its state is saved "
            f"in {experiment_dir}. Run the same command to continue it. ===",
            flush=True,
        )
        return 130
    rows = results_rows(sweep, grid)
    table = write_results(sweep, rows, experiment_dir)
    failed = [r for r in rows if r["status"] == "ERROR"]
    print(
        f"\n=== sweep '{sweep.name}' finished in {minutes:.1f} min: "
        f"{len(rows)} trial(s), {len(failed)} failed ==="
    )
    print(summary_text(sweep, rows))
    for r in failed:
        print(f"failed: {r['trial']}: {r['error']}")
    print(f"results table : {table}")
    if (experiment_dir / "best_config.yaml").exists():
        print(f"best config   : {experiment_dir / 'best_config.yaml'}")
    print(f"TensorBoard   : tensorboard --logdir {experiment_dir}")
    return 1 if len(failed) == len(rows) else 0


if __name__ == "__main__":
    sys.exit(main())
