"""Run a study: N seeds x a list of models under one budget, through Ray Tune, then a report.

    python -m launch.study --config configs/studies/cpu_budget.yaml            # run / resume
    python -m launch.study --config configs/studies/cpu_budget.yaml --report   # report only
    python -m launch.study --config configs/studies/cpu_tenth.yaml --storage-path /data/studies

A study file::

    name: cpu_budget
    base: ../quick.yaml                 # training config, relative to this file
    description: ...                    # the protocol, copied into results.md
    set: {train.num_steps: 4000}        # overrides for every run
    models:                             # model name -> its seeds and overrides
      cascade: {seeds: [0, 1, 2]}       # a variant's name: model.variant defaults to it
      beta_vae: {seeds: [0, 1], set: {model.beta: 4}}
      ours: {seeds: [0], set: {model.variant: cascade, solver.lam: 0.01}}
    selection_metric: eval/authors_factorvae
    metrics: [eval/authors_factorvae, eval/discrete_accuracy]
    curve_metrics: [eval/authors_factorvae, codes/shape_agreement]
    max_concurrent_trials: 2
    storage_path: runs/studies          # Tune experiment folder <storage_path>/<name>
    results_dir: results/cpu_budget     # results.md, results.parquet, curves.png, bars.png

Each (model, seed) is one Tune trial (a grid over run names), each trial a Ray Train run; the
same command resumes an interrupted study: finished runs are kept; unfinished ones continue
from their last checkpoint, because each run's Train folder is the trial's folder under the
study's storage path (`launch.tune.run_trial`). Everything is validated before Ray
starts (the `StudyFile` schema).

Every report also keeps each finished run's record (its metrics table, config and wall-time
line) under `<results_dir>/runs/<run>/`, beside the report. Those records travel with the
results: a report on a machine where a run's folder is gone reads the run from there, and a
new experiment (no Tune state in its folder yet) does not train a run that has a record again.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import pyarrow.parquet as pq
from pydantic import (
    AfterValidator,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from launch.study_report import RunRecord, read_run, write_report
from launch.sweep import RUN_DIMENSION, Dimension, SweepConfig, resolve_base, trial_config
from trainer.config import Config, ConfigError, read_yaml
from trainer.eval.registry import output_keys
from trainer.observe.cadence import extra_evaluation_steps
from trainer.observe.run_log import read_attempts, read_metrics
from trainer.reported import reported_keys
from trainer.run_folder import config_changes, read_run_config
from trainer.schema import RuleError, Schema, plain_name, rules_apply, validate
from trainer.variants.registry import VARIANTS

VARIANT_KEY = "model.variant"


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
    storage_flag: str | None = None
    """`--storage-path` when given: it replaces `storage_path` and belongs to the rerun command."""

    def trial_config(self, params: dict[str, Any]) -> Config:
        _, _, overrides = self.runs[params[RUN_DIMENSION]]
        return trial_config(
            self.base_raw, overrides, source=f"{self.source} run {params[RUN_DIMENSION]}"
        )

    def trained_runs(self) -> list[str]:
        """The runs this experiment trains: its grid (all runs, less those skipped for a
        finished record)."""
        return list(self.dimensions[0].values)

    def num_trials(self) -> int:
        return len(self.trained_runs())


def run_name(model: str, seed: int) -> str:
    return f"{model}-s{seed}"


class ModelRuns(Schema):
    """One model of a study: its seeds and its overrides of the base config."""

    seeds: list[int]
    set: dict[str, Any] = Field(default_factory=dict)

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, seeds: list[int]) -> list[int]:
        if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
            raise ValueError(f"a non-empty list of distinct integers >= 0, got {seeds!r}")
        return seeds


class StudyFile(Schema):
    """A study file. Validating it (context `folder`: where `base` is relative to) also builds
    and checks every run's config."""

    name: Annotated[str, AfterValidator(plain_name)] | None = None
    """Default: the file's stem."""
    base: str
    """The training config, relative to the study file."""
    description: str = ""
    set: dict[str, Any] = Field(default_factory=dict)
    models: dict[str, ModelRuns] = Field(min_length=1)
    """Model name (letters, digits and _) -> its seeds and overrides. A model named after a
    registered variant (trainer.variants.registry) trains that variant unless `model.variant`
    is set for it or for the whole study."""
    selection_metric: str = "eval/authors_factorvae"
    metrics: list[str] | None = Field(None, min_length=1)
    """Default: [selection_metric]."""
    curve_metrics: list[str] | None = Field(None, min_length=1)
    """Default: metrics."""
    max_concurrent_trials: int = Field(1, ge=1)
    storage_path: str = Field("runs/studies", min_length=1)
    results_dir: str | None = Field(None, min_length=1)
    """Default: results/<name>."""

    _base_raw: dict[str, Any] = PrivateAttr(default_factory=dict)
    _runs: dict[str, tuple[str, int, dict[str, Any]]] = PrivateAttr(default_factory=dict)
    _configs: list[Config] = PrivateAttr(default_factory=list)

    @field_validator("models")
    @classmethod
    def _model_names(cls, models: dict[str, ModelRuns]) -> dict[str, ModelRuns]:
        bad = [m for m in models if not m.replace("_", "").isalnum()]
        if bad:
            raise ValueError(f"model names are letters, digits and _, got {bad}")
        return models

    @model_validator(mode="after")
    def _runs_are_valid(self, info: ValidationInfo) -> StudyFile:
        reads = ("base", "set", "models", "selection_metric", "metrics", "curve_metrics")
        if not rules_apply(info, self, *reads):
            return self
        problems: list[str] = []
        folder = Path((info.context or {}).get("folder", "."))
        # The runs' configs are checked one by one below, the base config alone is not.
        self._base_raw, _ = resolve_base(folder / self.base, self.set, problems, check=False)
        for model, spec in self.models.items():
            where = f"models.{model}"
            named = model in VARIANTS and VARIANT_KEY not in {**self.set, **spec.set}
            for seed in spec.seeds:
                # A model named after a registered variant trains that variant by default.
                overrides = {**({VARIANT_KEY: model} if named else {}), **spec.set, "seed": seed}
                try:
                    self._configs.append(trial_config(self._base_raw, overrides, source=where))
                except ConfigError as err:
                    problems.extend(f"{where} seed {seed}: {p}" for p in err.problems)
                    break
                self._runs[run_name(model, seed)] = (model, seed, overrides)
        evaluated = {key for c in self._configs for key in output_keys(c.eval.protocols)}
        if self._configs:
            for metric in [self.selection_metric, *(self.metrics or [])]:
                if metric not in evaluated:
                    known = sorted(evaluated)
                    problems.append(
                        f"metrics: {metric!r} is evaluated by no run; evaluated: {known}"
                    )
            # A curve may also follow a training scalar (codes/shape_agreement, loss/recon).
            reported = evaluated | {key for c in self._configs for key in reported_keys(c)}
            for metric in self.curve_metrics or []:
                if metric not in reported:
                    problems.append(
                        f"curve_metrics: {metric!r} is reported by no run; evaluated: "
                        f"{sorted(evaluated)}, or any training scalar such as "
                        f"{sorted(k for k in reported - evaluated if '/' in k)[:6]}"
                    )
        if problems:
            raise RuleError(problems)
        return self


def load_study(path: str | Path) -> StudyConfig:
    """Read and check a study file and every run config it makes; ConfigError lists all."""
    path = Path(path)
    spec: StudyFile = validate(StudyFile, read_yaml(path), str(path), {"folder": path.parent})
    name = spec.name or path.stem
    metrics = spec.metrics or [spec.selection_metric]
    return StudyConfig(
        name=name,
        base_raw=spec._base_raw,
        base=spec._configs[0],
        dimensions=[Dimension(RUN_DIMENSION, RUN_DIMENSION, "grid", list(spec._runs))],
        algorithm="grid",
        max_concurrent_trials=spec.max_concurrent_trials,
        metric=spec.selection_metric,
        mode="max",
        scheduler="none",
        storage_path=spec.storage_path,
        source=str(path),
        runs=spec._runs,
        models=list(spec.models),
        description=spec.description,
        metrics=list(metrics),
        curve_metrics=list(spec.curve_metrics or metrics),
        results_dir=spec.results_dir or f"results/{name}",
    )


def experiment_dir(study: StudyConfig) -> Path:
    return Path(study.storage_path).expanduser().resolve() / study.name


ARCHIVE = "runs"
"""The folder of the finished runs' records under a study's results_dir."""
RECORD_FILES = ("metrics.parquet", "config.yaml", "run.json")


def archive_dir(study: StudyConfig) -> Path:
    return Path(study.results_dir) / ARCHIVE


def record_problem(study: StudyConfig, name: str) -> str | None:
    """Why run `name`'s record under `<results_dir>/runs/` cannot stand for the run as the
    study file now defines it (None when it can): no record, settings that change the trained
    state (as a resume would refuse them), or fewer steps than the run now has."""
    kept = archive_dir(study) / name
    if not all((kept / f).is_file() for f in RECORD_FILES):
        return "no record"
    config = study.trial_config({RUN_DIMENSION: name})
    refused, _ = config_changes(read_run_config(kept) or {}, config)
    if refused:
        return "trained with other settings (" + "; ".join(c.line() for c in refused) + ")"
    steps = pq.read_table(kept / "metrics.parquet", columns=["step"])["step"].to_pylist()
    if max(steps, default=0) < config.train.num_steps:
        return f"it ends at step {max(steps, default=0)} of {config.train.num_steps}"
    return None


def archived_runs(study: StudyConfig) -> list[str]:
    """The study's runs whose record under `<results_dir>/runs/` stands for the run (see
    `record_problem`), in study order."""
    return [name for name in study.runs if record_problem(study, name) is None]


def _archive_run(study: StudyConfig, name: str, train_dir: Path, line: str) -> None:
    """Keep a finished run's record: its metrics table as one file, its config, its line."""
    model, seed, _ = study.runs[name]
    target = archive_dir(study) / name
    target.mkdir(parents=True, exist_ok=True)
    table = target / ".metrics.parquet.tmp"
    pq.write_table(read_metrics(train_dir), table)
    table.replace(target / "metrics.parquet")
    shutil.copyfile(train_dir / "config.yaml", target / "config.yaml")
    run = {"run": name, "model": model, "seed": seed, "line": line}
    (target / "run.json").write_text(json.dumps(run, indent=1) + "\n")


def collect_runs(study: StudyConfig, *, partial: bool = False) -> tuple[list[RunRecord], list[str]]:
    """The runs found in the experiment folder (Tune's params.json names each trial's run),
    and one line per run: name, last step, wall time. An unfinished run is left out, or with
    `partial` kept with the readings it has so far (its line says so). A finished run's record
    is kept under `<results_dir>/runs/`; a run with no folder in the experiment is read from
    its record there when it has one (its line says so)."""
    records, lines = [], []
    folder = experiment_dir(study)
    found: set[str] = set()
    for params_path in sorted(folder.glob("*/params.json")):
        name = json.loads(params_path.read_text()).get(RUN_DIMENSION)
        if name not in study.runs:
            continue
        model, seed, _ = study.runs[name]
        config = study.trial_config({RUN_DIMENSION: name})
        table = params_path.parent / "train" / "metrics.parquet"
        start, diagnostic = config.cascade.discrete_start_step, extra_evaluation_steps(config)
        record = read_run(model, seed, table, start, diagnostic)
        if record is None:
            continue
        found.add(name)
        num_steps = config.train.num_steps
        if record.last_step < num_steps:  # still running or interrupted
            included = " (in this partial report: its readings up to that step)" if partial else ""
            lines.append(
                f"`{name}`: unfinished at step {record.last_step} of {num_steps}{included}"
            )
            if partial:
                records.append(record)
            continue
        records.append(record)
        line = f"`{name}`: {record.last_step} steps{_wall_time(params_path.parent)}"
        lines.append(line)
        _archive_run(study, name, table.parent, line)
    for name in study.runs:
        if name in found:
            continue
        problem = record_problem(study, name)
        if problem is not None:
            unused = "" if problem == "no record" else f" (its record is not used: {problem})"
            lines.append(f"`{name}`: no results yet{unused}")
            continue
        model, seed, _ = study.runs[name]
        config = study.trial_config({RUN_DIMENSION: name})
        start, diagnostic = config.cascade.discrete_start_step, extra_evaluation_steps(config)
        kept = archive_dir(study) / name
        record = read_run(model, seed, kept / "metrics.parquet", start, diagnostic)
        assert record is not None  # record_problem read the file
        records.append(record)
        line = json.loads((kept / "run.json").read_text())["line"]
        lines.append(f"{line} (read from its record in {kept}: its folder is not in {folder})")
    order = {name: index for index, name in enumerate(study.runs)}
    return records, sorted(lines, key=lambda line: order[line.split("`")[1]])


def _wall_time(trial_dir: Path) -> str:
    """The wall-time part of a run's line (", <m> min wall time"), from Tune's time, which
    covers the run's last start only: for a run that resumed, it says so and names the step
    that start resumed from."""
    minutes = _wall_minutes(trial_dir)
    if minutes is None:
        return ""
    starts = [
        a["start_step"]
        for a in read_attempts(trial_dir / "train")
        if a.get("rank") == 0 and "start_step" in a
    ]
    if len(starts) <= 1:
        return f", {minutes:.1f} min wall time"
    return (
        f", {minutes:.1f} min wall time since its last start (from step {starts[-1]}; "
        f"started {len(starts)} times)"
    )


def _wall_minutes(trial_dir: Path) -> float | None:
    """Wall time of the trial from Tune's result.json (time_total_s of its last line)."""
    result = trial_dir / "result.json"
    if not result.is_file():
        return None
    lines = [line for line in result.read_text().splitlines() if line.strip()]
    if not lines:
        return None
    return float(json.loads(lines[-1]).get("time_total_s", 0.0)) / 60.0


PARTIAL_NOTE = (
    "**A partial report**: unfinished runs are included with the readings they have so far "
    "(see Runs for each run's last step); a best or last reading of an unfinished run is not "
    "the run's result."
)


def report(study: StudyConfig, *, partial: bool = False) -> list[Path]:
    runs, lines = collect_runs(study, partial=partial)
    if not runs:
        raise SystemExit(f"study '{study.name}': no run results under {experiment_dir(study)}")
    partial_runs = partial and any("unfinished" in line for line in lines)
    return write_report(
        Path(study.results_dir),
        runs,
        title=f"Study `{study.name}`" + (" (partial)" if partial_runs else ""),
        preamble=(PARTIAL_NOTE + "\n\n" if partial_runs else "")
        + study.description
        + f"\n\nRerun: `python -m launch.study --config {study.source}"
        + (f" --storage-path {study.storage_flag}`." if study.storage_flag else "`."),
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
    parser.add_argument(
        "--partial",
        action="store_true",
        help="with --report: include unfinished runs with their readings so far (the report "
        "says it is partial)",
    )
    parser.add_argument(
        "--storage-path",
        help="folder of the study's experiment instead of the file's storage_path (e.g. one "
        "outside the work tree, so a long study outlives a checkout); give the same one to resume",
    )
    args = parser.parse_args(argv)
    try:
        study = load_study(args.config)
        if args.storage_path:
            study.storage_path = study.storage_flag = args.storage_path
        if not args.report:  # a report reads the run folders only
            study.base.check_files(f"{args.config} (base config)")
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.partial and not args.report:
        print("error: --partial goes with --report", file=sys.stderr)
        return 2
    if args.report:
        for path in report(study, partial=args.partial):
            print(f"wrote {path}")
        return 0

    from launch.run_lock import run_locked
    from launch.tune import TUNE_STATE, prepare_experiment

    folder = experiment_dir(study)
    if (folder / TUNE_STATE).is_file():
        _resumed_runs(study, folder)
    elif not _skip_recorded_runs(study):
        for path in report(study):
            print(f"wrote {path}")
        return 0
    command = ["python -m launch.study", *(argv or sys.argv[1:])]
    return run_locked(
        lambda: prepare_experiment(study, folder, args.config, command),
        lambda: _run_study(study, args.config, folder),
    )


def _skip_recorded_runs(study: StudyConfig) -> bool:
    """A new experiment trains only the runs without a finished record under
    `<results_dir>/runs/` (a resumed one keeps the runs it started with); the report still
    reads every run. Whether a run is left to train."""
    recorded = archived_runs(study)
    for name in recorded:
        where = archive_dir(study) / name
        print(f"[cascadevae] {name}: finished, its record is in {where}; not run again")
    left = [name for name in study.runs if name not in recorded]
    study.dimensions = [Dimension(RUN_DIMENSION, RUN_DIMENSION, "grid", left)]
    if not left:
        print(f"[cascadevae] study '{study.name}': every run has a finished record; report only")
    return bool(left)


def _resumed_runs(study: StudyConfig, folder: Path) -> None:
    """A resumed experiment trains the grid it started with (Tune restores it): the runs its
    record lists or, for a record written before it listed them, the runs with a trial folder
    there and those without a finished record. `study`'s grid becomes that list, so what the
    command prints names the runs it trains."""
    from launch.tune import TRAINED_RUNS, read_experiment_record

    runs = read_experiment_record(folder).get(TRAINED_RUNS)
    if runs is None:
        started = {
            json.loads(p.read_text()).get(RUN_DIMENSION) for p in folder.glob("*/params.json")
        }
        recorded = set(archived_runs(study))
        runs = [name for name in study.runs if name in started or name not in recorded]
    grid = [name for name in study.runs if name in runs]
    study.dimensions = [Dimension(RUN_DIMENSION, RUN_DIMENSION, "grid", grid)]


def _run_study(study: StudyConfig, source: str, folder: Path) -> int:
    from launch.tune import fit_experiment

    what = (
        f"study '{study.name}': {study.num_trials()} run(s) ({', '.join(study.trained_runs())}), "
        f"{study.max_concurrent_trials} at a time"
    )
    fitted = fit_experiment(study, f"study {source}", folder, what)
    if isinstance(fitted, int):
        return fitted
    grid, minutes = fitted
    if grid is None:
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
    return 1 if failed and len(failed) == study.num_trials() else 0


if __name__ == "__main__":
    sys.exit(main())
