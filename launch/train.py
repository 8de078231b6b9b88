"""Train CascadeVAE with Ray Train.

    python -m launch.train --config configs/quick.yaml [--set train.num_steps=500 ...]

Uses the cluster at RAY_ADDRESS when set (as under `ray job submit`), else starts a local Ray.
The whole config is validated before any Ray work; a bad config exits with status 2 and one
message listing every problem. Running the same command again resumes the run from its last
checkpoint (the run folder is `<train.storage_path>/<run name>`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from trainer.config import Config, ConfigError, load_config


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m launch.train", description=__doc__.split("\n")[1]
    )
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = load_config(args.config, args.set)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    from pathlib import Path

    from launch.cluster import check_resources, connect
    from trainer.worker import fit

    started = time.time()
    where = connect()
    print(f"[cascadevae] Ray: {where}; config {args.config} (run '{config.run_name}')", flush=True)
    train = config.train
    check_resources(
        train.num_workers * train.cpus_per_worker,
        train.num_workers if train.use_gpu else 0,
        f"config {args.config}",
    )
    storage = Path(train.storage_path).expanduser().resolve()
    run_dir = storage / config.run_name
    try:
        result = fit(config, storage_path=str(storage))
    except Exception as err:  # Ray wraps worker errors; show the cause and fail
        print(f"error: training failed: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    if result.error is not None:
        print(f"error: training failed: {result.error}", file=sys.stderr)
        return 1
    print("\n".join(summary_lines(config, result, str(run_dir), time.time() - started)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
