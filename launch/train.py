"""Train CascadeVAE with Ray Train.

    python -m launch.train --config configs/quick.yaml [--set train.num_steps=500 ...]

Uses the cluster at RAY_ADDRESS when set (as under `ray job submit`), else starts a local Ray.
The whole config, and the .npz file it names, are validated before any Ray work; a bad config
exits with status 2 and one message listing every problem. Running the same command again
resumes the run from its last checkpoint (the run folder is `<train.storage_path>/<run name>`).
Ctrl-C stops the run with exit status 130 and prints the step of the last checkpoint and the
command that resumes it.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import threading
import time
from pathlib import Path

from trainer.config import Config, ConfigError, load_config

PROG = "python -m launch.train"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[1])
    parser.add_argument("--config", required=True, help="YAML config, e.g. configs/quick.yaml")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one field, e.g. --set train.num_steps=100 (repeatable)",
    )
    return parser.parse_args(argv)


def summary_lines(config: Config, result, run_dir: str, seconds: float) -> list[str]:
    metrics = result.metrics or {}
    finals = {
        k: v for k, v in metrics.items() if k.startswith(("eval/", "loss/total", "loss/recon"))
    }
    checkpoint = result.checkpoint.path if result.checkpoint is not None else "none"
    return [
        "",
        f"=== CascadeVAE run '{config.run_name}' finished in {seconds / 60:.1f} min ===",
        f"run directory : {run_dir}",
        f"TensorBoard   : tensorboard --logdir {run_dir}/tb",
        f"checkpoint    : {checkpoint}",
        f"metrics table : {run_dir}/metrics.parquet",
        f"final step    : {metrics.get('step', 'n/a')}",
        "final metrics : " + json.dumps({k: round(float(v), 4) for k, v in sorted(finals.items())}),
    ]


def resume_hint(run_dir: Path, argv: list[str], prog: str = PROG) -> str:
    """What an interrupted run says: the step of its newest INTACT checkpoint (each newer folder
    that cannot be read is named, with why) and the resume command."""
    from trainer.run_folder import newest_intact

    command = f"{prog} {shlex.join(argv)}".rstrip()
    folder, step, skipped = newest_intact(run_dir)
    lines = [f"skipped {line}" for line in skipped]
    if folder is not None:
        where = f"last checkpoint: step {step} ({folder}); the same command resumes from it"
    elif skipped:
        where = f"no intact checkpoint in {run_dir}; the same command starts the run from step 0"
    else:
        where = f"no checkpoint in {run_dir} yet; the same command starts the run from step 0"
    return "\n".join([f"interrupted: {where}", *(f"  {line}" for line in lines), f"  {command}"])


def _fit_in_thread(fit, config: Config, storage_path: str):
    """`fit(config, storage_path=...)` in a daemon thread, the main thread waiting for it, so
    that Ctrl-C raises KeyboardInterrupt here. (Ray Train installs its own SIGINT handler when
    fit runs in the main thread, and that handler ends the process with a status of its own.)
    Leaving the process then ends the run's actors: they belong to this driver's job."""
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = fit(config, storage_path=storage_path)
        except BaseException as err:  # re-raised in the main thread
            outcome["error"] = err

    thread = threading.Thread(target=run, name="fit", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.2)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def cluster_problem(config: Config, storage: Path) -> str | None:
    """What keeps the connected cluster from holding this run: too few nodes for
    STRICT_SPREAD, or nodes that do not share the storage folder (each live node writes and
    reads a probe file there)."""
    from trainer.distributed.nodes import (
        alive_nodes,
        probe_storage,
        storage_message,
        strict_spread_problem,
    )

    train = config.train
    if train.placement_strategy == "STRICT_SPREAD":
        problem = strict_spread_problem(alive_nodes(), train.num_workers, train.cpus_per_worker)
        if problem:
            return problem
    return storage_message(storage, probe_storage(storage))


def check_run_folder(config: Config, storage: Path, argv: list[str]):
    """The checks of the run folder before any Ray work, in order: storage and cache writable,
    the folder's lock (held by this process until it exits or releases it), the resume's
    config against the run's own. Returns the lock and lines to print; raises ConfigError (or
    RunFolderBusyError) with the message to show."""
    from trainer.run_folder import RunLock, check_resume, space_warning, storage_problems

    problems = storage_problems(config, storage)
    if problems:
        raise ConfigError(problems, "storage")
    run_dir = storage / config.run_name
    lock = RunLock(run_dir, f"{PROG} {shlex.join(argv)}")
    try:
        check_resume(run_dir, config)
        lines = [line for line in (lock.message(), space_warning(config, storage)) if line]
    except BaseException:
        lock.release()
        raise
    return lock, lines


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    try:
        config = load_config(args.config, args.set).check_files(args.config)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from launch.run_lock import run_locked

    storage = Path(config.train.storage_path).expanduser().resolve()
    run_dir = storage / config.run_name
    return run_locked(
        lambda: check_run_folder(config, storage, argv),
        lambda: _train(config, args.config, storage, run_dir, argv),
    )


def _train(config: Config, config_path: str, storage: Path, run_dir: Path, argv: list[str]) -> int:
    from launch.cluster import check_resources, connect
    from trainer.distributed.worker import fit
    from trainer.errors import project_cause

    started = time.time()
    train = config.train
    try:
        where = connect()
        print(
            f"[cascadevae] Ray: {where}; config {config_path} (run '{config.run_name}')",
            flush=True,
        )
        check_resources(
            train.num_workers * train.cpus_per_worker,
            train.num_workers * train.gpus_per_worker if train.use_gpu else 0,
            f"config {config_path}",
        )
        problem = cluster_problem(config, storage)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 2
        result = _fit_in_thread(fit, config, str(storage))
    except KeyboardInterrupt:
        print(f"\n{resume_hint(run_dir, argv)}", file=sys.stderr, flush=True)
        return 130
    except Exception as err:  # Ray wraps worker errors; show the project's own error if any
        print(f"error: training failed: {_one_line(project_cause(err) or err)}", file=sys.stderr)
        return 1
    if result.error is not None:
        cause = project_cause(result.error) or result.error
        print(f"error: training failed: {_one_line(cause)}", file=sys.stderr)
        return 1
    print("\n".join(summary_lines(config, result, str(run_dir), time.time() - started)), flush=True)
    return 0


def _one_line(error: BaseException) -> str:
    """`Type: message` of a project error; other errors keep their (multi-line) text."""
    from trainer.errors import is_project_error

    text = str(error)
    if is_project_error(error):
        text = " ".join(part.strip() for part in text.splitlines())
    return f"{type(error).__name__}: {text}"


if __name__ == "__main__":
    sys.exit(main())
