"""Run a study: N seeds x a list of models under one budget, through Ray Tune, then a report.

    python -m launch.study --config configs/studies/cpu_budget.yaml            # run / resume
    python -m launch.study --config configs/studies/cpu_budget.yaml --report   # report only

A study file::

    name: cpu_budget
    base: ../quick.yaml                 # training config, relative to this file
    description: ...                    # the protocol, copied into results.md
    set: {train.num_steps: 4000}        # overrides for every run
    models:                             # model name -> its seeds and overrides
      cascade: {seeds: [0, 1, 2], set: {model.variant: cascade}}
      beta_vae: {seeds: [0, 1], set: {model.variant: beta_vae, model.beta: 4}}
    selection_metric: eval/authors_factorvae
    metrics: [eval/authors_factorvae, eval/discrete_accuracy]
    curve_metrics: [eval/authors_factorvae, codes/shape_agreement]
    max_concurrent_trials: 2
    storage_path: runs/studies          # Tune experiment folder <storage_path>/<name>
    results_dir: results/cpu_budget     # results.md, results.parquet, curves.png, bars.png

Each (model, seed) is one Tune trial (a grid over run names), each trial a Ray Train run; the
same command resumes an interrupted study (finished runs are kept, unfinished ones restart from
their last checkpoint). Everything is validated before Ray starts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from launch.study_report import RunRecord, read_run, write_report
from launch.sweep import Dimension, SweepConfig, _unknown_keys, _yaml_scalar, trial_config
from trainer.config import Config, ConfigError, apply_overrides, eval_keys, read_yaml

STUDY_KEYS = {
    "name",
    "base",
    "description",
    "set",
    "models",
    "selection_metric",
    "metrics",
    "curve_metrics",
    "max_concurrent_trials",
    "storage_path",
    "results_dir",
}
MODEL_KEYS = {"seeds", "set"}
RUN_DIMENSION = "run"


@dataclass
class StudyConfig(SweepConfig):
    """A sweep whose one grid dimension is the run name `<model>-s<seed>`."""

    runs: dict[str, tuple[str, int, dict[str, Any]]] = field(default_factory=dict)
    """run name -> (model, seed, the run's overrides on top of the base)."""
    models: list[str] = field(default_factory=list)
    description: str = ""
    metrics: list[str] = field(default_factory=list)
    curve_metrics: list[str] = field(default_factory=list)
    results_dir: str = "results"

    def trial_config(self, params: dict[str, Any]) -> Config:
        _, _, overrides = self.runs[params[RUN_DIMENSION]]
        return trial_config(
            self.base_raw, overrides, source=f"{self.source} run {params[RUN_DIMENSION]}"
        )

    def num_trials(self) -> int:
        return len(self.runs)


def run_name(model: str, seed: int) -> str:
    return f"{model}-s{seed}"


def load_study(path: str | Path) -> StudyConfig:
    """Read and check a study file and every run config it makes; ConfigError lists all."""
    path = Path(path)
    raw = read_yaml(path)
    problems = _unknown_keys("", raw, STUDY_KEYS)
    name = raw.get("name", path.stem)
    if not isinstance(name, str) or not name or "/" in name:
        problems.append(f"name: must be a plain non-empty name, got {name!r}")
    base_raw: dict[str, Any] = {}
    if not isinstance(raw.get("base"), str):
        problems.append("base: required, the path of a training config (relative to the study)")
    else:
        try:
            base_raw = read_yaml((path.parent / raw["base"]).resolve())
        except ConfigError as err:
            problems.extend(f"base: {p}" for p in err.problems)
    fixed = raw.get("set") or {}
    if not isinstance(fixed, dict):
        problems.append(f"set: expected a mapping of field: value, got {fixed!r}")
        fixed = {}
    try:
        base_raw = apply_overrides(base_raw, [f"{k}={_yaml_scalar(v)}" for k, v in fixed.items()])
    except ConfigError as err:
        problems.extend(f"set: {p}" for p in err.problems)

    runs: dict[str, tuple[str, int, dict[str, Any]]] = {}
    models = raw.get("models")
    if not isinstance(models, dict) or not models:
        problems.append("models: required mapping of model name -> {seeds: [...], set: {...}}")
        models = {}
    configs: list[Config] = []
    for model, spec in models.items():
        where = f"models.{model}"
        if not isinstance(model, str) or not model.replace("_", "").isalnum():
            problems.append(f"{where}: model names are letters, digits and _, got {model!r}")
            continue
        if not isinstance(spec, dict):
            problems.append(f"{where}: expected {{seeds: [...], set: {{...}}}}, got {spec!r}")
            continue
        problems += _unknown_keys(f"{where}.", spec, MODEL_KEYS)
        seeds = spec.get("seeds")
        if (
            not isinstance(seeds, list)
            or not seeds
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
            or len(set(seeds)) != len(seeds)
        ):
            problems.append(
                f"{where}.seeds: a non-empty list of distinct integers >= 0, got {seeds!r}"
            )
            continue
        overrides = spec.get("set") or {}
        if not isinstance(overrides, dict):
            problems.append(f"{where}.set: expected a mapping of field: value, got {overrides!r}")
            continue
        for seed in seeds:
            run_overrides = {**overrides, "seed": seed}
            try:
                configs.append(trial_config(base_raw, run_overrides, source=where))
            except ConfigError as err:
                problems.extend(f"{where} seed {seed}: {p}" for p in err.problems)
                break
            runs[run_name(model, seed)] = (model, seed, run_overrides)

    selection = raw.get("selection_metric", "eval/authors_factorvae")
    metrics = raw.get("metrics", [selection])
    curve_metrics = raw.get("curve_metrics", metrics)
    reported: set[str] = set()
    for config in configs:
        reported |= eval_keys(config.eval.protocols)
    for key, value in (("metrics", metrics), ("curve_metrics", curve_metrics)):
        if not isinstance(value, list) or not value or not all(isinstance(m, str) for m in value):
            problems.append(f"{key}: a non-empty list of metric names, got {value!r}")
    if configs and isinstance(metrics, list):
        for metric in [selection, *metrics]:
            if metric not in reported:
                problems.append(
                    f"metrics: {metric!r} is evaluated by no run; evaluated: {sorted(reported)}"
                )
    concurrent = raw.get("max_concurrent_trials", 1)
    if not isinstance(concurrent, int) or isinstance(concurrent, bool) or concurrent < 1:
        problems.append(f"max_concurrent_trials: must be an integer >= 1, got {concurrent!r}")
    for key in ("storage_path", "results_dir"):
        if key in raw and (not isinstance(raw[key], str) or not raw[key]):
            problems.append(f"{key}: must be a non-empty path, got {raw[key]!r}")
    if problems:
        raise ConfigError(problems, str(path))

    base = configs[0]
    return StudyConfig(
        name=name,
        base_raw=base_raw,
        base=base,
        dimensions=[Dimension(RUN_DIMENSION, RUN_DIMENSION, "grid", list(runs))],
        algorithm="grid",
        max_concurrent_trials=concurrent,
        metric=selection,
        mode="max",
        scheduler="none",
        storage_path=raw.get("storage_path", "runs/studies"),
        source=str(path),
        runs=runs,
        models=list(models),
        description=str(raw.get("description", "")),
        metrics=list(metrics),
        curve_metrics=list(curve_metrics),
        results_dir=raw.get("results_dir", f"results/{name}"),
    )


def experiment_dir(study: StudyConfig) -> Path:
    return Path(study.storage_path).expanduser().resolve() / study.name


def collect_runs(study: StudyConfig) -> tuple[list[RunRecord], list[str]]:
    """The runs found in the experiment folder (Tune's params.json names each trial's run),
    and one line per run: name, last step, wall time."""
    records, lines = [], []
    folder = experiment_dir(study)
    for params_path in sorted(folder.glob("*/params.json")):
        name = json.loads(params_path.read_text()).get(RUN_DIMENSION)
        if name not in study.runs:
            continue
        model, seed, _ = study.runs[name]
        record = read_run(model, seed, params_path.parent / "train" / "metrics.parquet")
        if record is None:
            continue
        num_steps = study.trial_config({RUN_DIMENSION: name}).train.num_steps
        if record.last_step < num_steps:  # still running or interrupted: not in the table
            lines.append(f"`{name}`: unfinished at step {record.last_step} of {num_steps}")
            continue
        records.append(record)
        minutes = _wall_minutes(params_path.parent)
        lines.append(
            f"`{name}`: {record.last_step} steps"
            + (f", {minutes:.1f} min wall time" if minutes is not None else "")
        )
    missing = sorted(set(study.runs) - {line.split("`")[1] for line in lines})
    lines += [f"`{name}`: no results yet" for name in missing]
    return records, lines


def _wall_minutes(trial_dir: Path) -> float | None:
    """Wall time of the trial from Tune's result.json (time_total_s of its last line)."""
    result = trial_dir / "result.json"
    if not result.is_file():
        return None
    lines = [line for line in result.read_text().splitlines() if line.strip()]
    if not lines:
        return None
    return float(json.loads(lines[-1]).get("time_total_s", 0.0)) / 60.0


def report(study: StudyConfig) -> list[Path]:
    runs, lines = collect_runs(study)
    if not runs:
        raise SystemExit(f"study '{study.name}': no run results under {experiment_dir(study)}")
    return write_report(
        Path(study.results_dir),
        runs,
        title=f"Study `{study.name}`",
        preamble=study.description
        + f"\n\nRerun: `python -m launch.study --config {study.source}`.",
        models=study.models,
        selection_metric=study.metric,
        metrics=study.metrics,
        curve_metrics=study.curve_metrics,
        run_lines=lines,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m launch.study", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--config", required=True, help="study file, e.g. configs/studies/...")
    parser.add_argument(
        "--report", action="store_true", help="only (re)write the report from finished runs"
    )
    args = parser.parse_args(argv)
    try:
        study = load_study(args.config)
        if not args.report:  # a report reads the run folders only
            study.base.check_files(f"{args.config} (base config)")
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.report:
        for path in report(study):
            print(f"wrote {path}")
        return 0

    import os

    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    from ray import tune

    from launch.cluster import connect
    from launch.tune import TRIAL_DRIVER, build_tuner, interruption_watch

    started = time.time()
    where = connect(resources={TRIAL_DRIVER: 1000})
    folder = experiment_dir(study)
    restore = tune.Tuner.can_restore(str(folder))
    print(
        f"[cascadevae] Ray: {where}; study '{study.name}': {study.num_trials()} run(s) "
        f"({', '.join(study.runs)}), {study.max_concurrent_trials} at a time; "
        f"{'resuming' if restore else 'new'} experiment {folder}",
        flush=True,
    )
    tuner = build_tuner(study, folder, restore)
    with interruption_watch() as interrupted:
        grid = tuner.fit()
        was_interrupted = interrupted()
    minutes = (time.time() - started) / 60
    if was_interrupted:
        print(
            f"\n=== study '{study.name}' interrupted after {minutes:.1f} min; run the same "
            "command to continue it. ===",
            flush=True,
        )
        return 130
    failed = [r for r in grid if r.error is not None]
    print(f"\n=== study '{study.name}' finished in {minutes:.1f} min: {len(failed)} failed ===")
    for path in report(study):
        print(f"wrote {path}")
    return 1 if failed and len(failed) == len(study.runs) else 0


if __name__ == "__main__":
    sys.exit(main())
