"""Steps per second of the training step pipeline, for `benchmarks/gpu.sh` (any device).

    python benchmarks/gpu_bench.py plain    --stage discrete --steps 2000 --out plain.json
    python benchmarks/gpu_bench.py switches --stage discrete --steps 1000 --out switches.json
    python benchmarks/gpu_bench.py system   --stage discrete --steps 2000 --out system.json
    python benchmarks/gpu_bench.py trials   --count 10 --steps 2000 --out trials.json

plain: the worker's own step pipeline (trainer.loop.TrainLoop) and its interval meter
(trainer.observe.cadence.Hooks, read every train.log_every steps) in this process, the solver
called in-process (benchmarks.local_loop; needs torch, pyomo and highspy; no Ray). switches:
the plain loop once per rung of SWITCH_RUNGS, each rung adding one device switch to the one
before (`--rungs` picks some).
system: one Ray Train run with the
solver actor (needs Ray). trials: `count` single-worker runs at once through Ray Tune, sharing
one GPU (`train.gpus_per_worker = 1 / count`). Each writes one JSON object of figures; steps/s
is measured after the first `--warmup` steps.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from trainer.config import Config, load_config  # noqa: E402


def bench_overrides(args) -> list[str]:
    """`key=value` overrides of configs/dsprites.yaml: the paper's model and batch on a smaller
    grid, no evaluation, the discrete stage from the first step (`--stage discrete`) or never
    (`--stage pre`)."""
    gpu = torch.cuda.is_available()
    return [
        f"train.num_steps={args.steps}",
        f"train.log_every={max(1, min(500, args.steps // 4))}",
        f"train.checkpoint_every={args.steps}",
        "train.eval_every=0",
        "train.image_every=0",
        "train.num_workers=1",
        f"train.use_gpu={'true' if gpu else 'false'}",
        "cascade.stage_length=100000",
        f"cascade.discrete_start_stage={0 if args.stage == 'discrete' else 10}",
        "eval.protocols=[]",
        "train.keep_best_by=",
        f"data.num_positions={args.positions}",
        *args.set,
    ]


def bench_config(args, storage: str) -> Config:
    return load_config(
        ROOT / "configs" / "dsprites.yaml",
        [*bench_overrides(args), f"train.storage_path={storage}"],
    )


SWITCHES_OFF = [
    "train.data_on_device=false",
    "train.metrics_on_device=false",
    "optim.implementation=for_loop",
    "train.compile=none",
    "train.autocast=none",
]
"""The rung `default`: every device switch off (the host data path, metrics read per step)."""

SWITCH_RUNGS: list[tuple[str, list[str]]] = [
    ("default", []),
    ("data_on_device", ["train.data_on_device=true"]),
    ("metrics_on_device", ["train.metrics_on_device=true"]),
    ("fused_adam", ["optim.implementation=fused"]),
    ("compile", ["train.compile=default"]),
    ("bf16", ["train.autocast=bf16"]),
]
"""(name, overrides added to the rung before): each rung keeps the switches of those above."""


def rung_overrides(names: list[str]) -> list[tuple[str, list[str]]]:
    """The rungs of SWITCH_RUNGS up to the last of `names`, each with its cumulative overrides;
    only those named are returned (a rung keeps the switches of every rung above it)."""
    known = [name for name, _ in SWITCH_RUNGS]
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise ValueError(f"unknown rungs {unknown}; choose from {known}")
    chosen, overrides = [], list(SWITCHES_OFF)
    for name, added in SWITCH_RUNGS:
        overrides = overrides + added
        if name in names:
            chosen.append((name, overrides))
    return chosen


def _measure(config: Config, warmup: int, steps: int) -> tuple[str, float]:
    """(device, seconds of steps warmup..steps-1) of the plain loop with its interval meter."""
    from benchmarks.local_loop import local_loop
    from trainer.observe.cadence import Cadence, Hooks

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    loop, _ = local_loop(config, device, progress=True)
    train = config.train
    hooks = Hooks(
        [], ends=[Cadence(train.log_every)], num_steps=steps, global_batch=train.global_batch
    )
    for step in range(warmup):
        hooks.after_step(step, loop.step(step))
    _sync()
    started = time.perf_counter()
    for step in range(warmup, steps):
        hooks.after_step(step, loop.step(step))
    _sync()
    return str(device), time.perf_counter() - started


def plain(args) -> dict:
    with tempfile.TemporaryDirectory() as storage:
        config = bench_config(args, storage)
        device, seconds = _measure(config, args.warmup, args.steps)
    measured = args.steps - args.warmup
    return {
        "kind": "plain",
        "stage": args.stage,
        "device": device,
        "steps": measured,
        "seconds": seconds,
        "steps_per_s": measured / seconds,
    }


def switches(args) -> dict:
    """The plain loop's steps/s on each rung; a rung that fails is recorded with its error."""
    measured = args.steps - args.warmup
    rungs = []
    for name, overrides in rung_overrides(args.rungs):
        row: dict = {"name": name, "overrides": overrides}
        try:
            with tempfile.TemporaryDirectory() as storage:
                args_rung = argparse.Namespace(**{**vars(args), "set": [*args.set, *overrides]})
                config = bench_config(args_rung, storage)
                device, seconds = _measure(config, args.warmup, args.steps)
            row.update(device=device, seconds=seconds, steps_per_s=measured / seconds)
        except Exception as err:  # noqa: BLE001 - one rung failing must not lose the others
            row["error"] = f"{type(err).__name__}: {err}"[:500]
        rungs.append(row)
        print(json.dumps(row), flush=True)
    base = rungs[0].get("steps_per_s") if rungs and rungs[0]["name"] == "default" else None
    for row in rungs:
        if base and "steps_per_s" in row:
            row["speedup_vs_default"] = row["steps_per_s"] / base
    return {"kind": "switches", "stage": args.stage, "steps": measured, "rungs": rungs}


def system(args) -> dict:
    from launch.cluster import connect
    from trainer.distributed.worker import fit
    from trainer.observe.run_log import read_metrics

    connect()
    with tempfile.TemporaryDirectory() as storage:
        config = bench_config(args, storage)
        started = time.perf_counter()
        result = fit(config)
        seconds = time.perf_counter() - started
        if result.error is not None:
            raise result.error
        rows = read_metrics(Path(storage) / config.run_name).to_pylist()[1:]  # first: warm-up
    step_ms = sorted(r["perf/step_ms"] for r in rows)
    median_ms = step_ms[len(step_ms) // 2] if step_ms else float("nan")
    return {
        "kind": "system",
        "stage": args.stage,
        "device": "cuda" if config.train.use_gpu else "cpu",
        "steps": args.steps,
        "wall_seconds": seconds,
        "steps_per_s": 1000.0 / median_ms,
        "median_step_ms": median_ms,
    }


def trials(args) -> dict:
    """`count` concurrent single-worker runs through a generated sweep over seeds."""
    import yaml

    from launch import tune as launch_tune
    from trainer.observe.run_log import read_metrics

    gpu = torch.cuda.is_available()
    with tempfile.TemporaryDirectory() as storage:
        sweep = {
            "name": f"trials_{args.count}",
            "base": str(ROOT / "configs" / "dsprites.yaml"),
            "set": {
                **{
                    item.split("=", 1)[0]: yaml.safe_load(item.split("=", 1)[1])
                    for item in bench_overrides(args)
                },
                "train.gpus_per_worker": 1.0 / args.count if gpu else 1.0,
            },
            "search": {
                "algorithm": "grid",
                "max_concurrent_trials": args.count,
                "space": {"seed": {"grid": list(range(args.count))}},
            },
            "metric": "loss/recon",
            "mode": "min",
            "scheduler": {"type": "none"},
            "storage_path": storage,
        }
        path = Path(storage) / "sweep.yaml"
        path.write_text(yaml.safe_dump(sweep))
        started = time.perf_counter()
        status = launch_tune.main(["--config", str(path)])
        seconds = time.perf_counter() - started
        tables = [read_metrics(p.parent) for p in Path(storage).rglob("metrics.parquet*")]
    rates = []
    for table in tables:
        rows = table.to_pylist()[1:]
        if rows:
            rates.append(1000.0 / sorted(r["perf/step_ms"] for r in rows)[len(rows) // 2])
    return {
        "kind": "trials",
        "count": args.count,
        "exit_status": status,
        "wall_seconds": seconds,
        "trials_reporting": len(rates),
        "steps_per_s_per_trial": rates,
        "total_steps_per_s": sum(rates),
    }


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("kind", choices=("plain", "switches", "system", "trials"))
    parser.add_argument("--stage", choices=("pre", "discrete"), default="discrete")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--count", type=int, default=1, help="trials at once (kind trials)")
    parser.add_argument("--positions", type=int, default=16, help="data.num_positions")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--rungs",
        nargs="+",
        default=[name for name, _ in SWITCH_RUNGS],
        help="kind switches: the rungs to measure (each keeps the switches of those above)",
    )
    parser.add_argument("--out", required=True, help="JSON file to write")
    args = parser.parse_args(argv)
    if not 0 <= args.warmup < args.steps:
        parser.error(f"--warmup must be in [0, --steps), got {args.warmup}")
    kinds = {"plain": plain, "switches": switches, "system": system, "trials": trials}
    figures = kinds[args.kind](args)
    figures["torch"] = torch.__version__
    Path(args.out).write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
