"""Sweep files: a base training config, a search space, a searcher, a metric, a scheduler.

    name: debug_sweep
    base: ../debug.yaml              # training config, relative to this file
    set: {train.num_workers: 2}      # fixed overrides of the base, applied to every trial
    search:
      algorithm: grid                # grid | random | optuna (model-based, needs `optuna`)
      num_samples: 1                 # repeats of the grid (random: grid dims are crossed and
                                     # the other dims sampled anew in every repeat)
      max_concurrent_trials: 1
      space:
        beta_h: {grid: [4, 10]}      # or choice / uniform / loguniform / randint
        lambda: {grid: [0.001, 1.0]}
    metric: eval/authors_factorvae   # any scalar training reports
    mode: max
    scheduler: {type: asha, grace_period: 20, reduction_factor: 2}
    storage_path: runs/sweeps

Everything is checked before any trial starts (`load_sweep`): an empty or malformed space, an
unknown parameter, a metric training never reports, and every trial config the space can produce
at its extreme values. No Ray here except building Tune's search-space objects on request.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.config import Config, ConfigError, apply_overrides, eval_keys, read_yaml

PARAMETERS = {
    "beta_h": "cascade.beta_high",
    "beta_l": "cascade.beta_low",
    "lambda": "solver.lam",
    "seed": "seed",
    "lr": "optim.lr",
    "stage_length": "cascade.stage_length",
    "discrete_start": "cascade.discrete_start_stage",
}
"""Searchable names -> config fields (the dotted field names are accepted too)."""

DOMAINS = ("grid", "choice", "uniform", "loguniform", "randint")
ALGORITHMS = ("grid", "random", "optuna")
SCHEDULERS = ("asha", "none")
SWEEP_KEYS = {
    "name",
    "base",
    "set",
    "search",
    "metric",
    "mode",
    "scheduler",
    "storage_path",
    "max_trial_failures",
}
SEARCH_KEYS = {"algorithm", "num_samples", "max_concurrent_trials", "space"}
SCHEDULER_KEYS = {"type", "grace_period", "reduction_factor"}


@dataclass
class Dimension:
    name: str
    """Short name used in trial names (`beta_h`, `lambda`, ...)."""
    field: str
    """Dotted config field (`cascade.beta_high`, ...)."""
    kind: str
    values: list[Any]
    """grid/choice: the values; uniform/loguniform/randint: [low, high]."""

    def extremes(self) -> list[Any]:
        """Values that bound what this dimension can produce (for validation)."""
        if self.kind in ("grid", "choice"):
            return list(self.values)
        low, high = self.values
        return [low, high - 1] if self.kind == "randint" else [low, high]

    def tune_domain(self):
        from ray import tune

        if self.kind == "grid":
            return tune.grid_search(list(self.values))
        if self.kind == "choice":
            return tune.choice(list(self.values))
        if self.kind == "uniform":
            return tune.uniform(*self.values)
        if self.kind == "loguniform":
            return tune.loguniform(*self.values)
        return tune.randint(*self.values)


@dataclass
class SweepConfig:
    name: str
    base_raw: dict[str, Any]
    """The base training config (with `set` applied), as a raw mapping."""
    base: Config
    dimensions: list[Dimension]
    algorithm: str = "grid"
    num_samples: int = 1
    max_concurrent_trials: int = 1
    metric: str = "loss/recon"
    mode: str = "min"
    scheduler: str = "asha"
    grace_period: int = 1
    reduction_factor: float = 2.0
    storage_path: str = "runs/sweeps"
    max_trial_failures: int = 0
    source: str = "sweep"
    extra: dict[str, Any] = field(default_factory=dict)

    def trial_config(self, params: dict[str, Any]) -> Config:
        """The validated training config of one trial (`params`: short name -> value)."""
        overrides = {d.field: params[d.name] for d in self.dimensions if d.name in params}
        return trial_config(self.base_raw, overrides, source=f"{self.source} trial {params}")

    def grid_size(self) -> int:
        return math.prod(len(d.values) for d in self.dimensions if d.kind == "grid")

    def num_trials(self) -> int:
        return self.num_samples * self.grid_size()


def trial_config(base_raw: dict[str, Any], overrides: dict[str, Any], source: str) -> Config:
    raw = apply_overrides(base_raw, [f"{k}={_yaml_scalar(v)}" for k, v in overrides.items()])
    raw.setdefault("train", {})["run_name"] = "train"
    return Config.from_dict(raw, source=source)


def _yaml_scalar(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def reported_metrics(config: Config) -> set[str]:
    """Every scalar name a training run with `config` reports to Ray (and so to Tune)."""
    names = {
        "step",
        "loss/total",
        "loss/recon",
        "loss/kl",
        "loss/weight_penalty",
        "lr",
        "perf/images_per_s",
        "perf/step_ms",
    }
    names |= {f"kl/z{j}" for j in range(config.model.num_continuous)}
    names |= {f"beta/z{j}" for j in range(config.model.num_continuous)}
    categories = config.model.effective_categories
    if categories:
        names |= {"codes/shape_agreement", "discrete/active"}
        names |= {f"codes/share_{k}" for k in range(categories)}
        names |= {f"codes/count_{k}" for k in range(categories)}
    if config.model.variant == "cascade":
        names |= {"solver/wait_ms"}
    if config.model.variant == "jointvae":
        names |= {"capacity/z", "capacity/c", "kl/c"}
    names |= eval_keys(config.eval.protocols)
    return names


def _unknown_keys(prefix: str, section: dict, known: set[str]) -> list[str]:
    """One problem per key of `section` not in `known`, named `<prefix><key>`."""
    listed = ", ".join(sorted(known))
    return [f"{prefix}{key}: unknown key (known: {listed})" for key in section if key not in known]


def load_sweep(path: str | Path) -> SweepConfig:
    """Read and check a sweep file; raises ConfigError listing every problem."""
    path = Path(path)
    raw = read_yaml(path)
    problems: list[str] = []
    problems += _unknown_keys("", raw, SWEEP_KEYS)
    name = raw.get("name", path.stem)
    if not isinstance(name, str) or not name or "/" in name:
        problems.append(f"name: must be a plain non-empty name, got {name!r}")

    # The base training config, with the sweep's fixed overrides.
    base_raw: dict[str, Any] = {}
    base_value = raw.get("base")
    if not isinstance(base_value, str):
        problems.append("base: required, the path of a training config (relative to the sweep)")
    else:
        base_path = (path.parent / base_value).resolve()
        try:
            base_raw = read_yaml(base_path)
        except ConfigError as err:
            problems.extend(f"base: {p}" for p in err.problems)
    fixed = raw.get("set", {}) or {}
    if not isinstance(fixed, dict):
        problems.append(f"set: expected a mapping of field: value, got {fixed!r}")
        fixed = {}
    try:
        base_raw = apply_overrides(base_raw, [f"{k}={_yaml_scalar(v)}" for k, v in fixed.items()])
    except ConfigError as err:
        problems.extend(f"set: {p}" for p in err.problems)
    base: Config | None = None
    if base_raw:
        try:
            base = trial_config(base_raw, {}, source="base")
        except ConfigError as err:
            problems.extend(f"base config: {p}" for p in err.problems)

    search = raw.get("search")
    dimensions: list[Dimension] = []
    algorithm, num_samples, max_concurrent = "grid", 1, 1
    if not isinstance(search, dict):
        problems.append("search: required mapping with algorithm, num_samples, space")
        search = {}
    problems += _unknown_keys("search.", search, SEARCH_KEYS)
    algorithm = search.get("algorithm", "grid")
    if algorithm not in ALGORITHMS:
        problems.append(f"search.algorithm: {algorithm!r} is not one of {list(ALGORITHMS)}")
    num_samples = search.get("num_samples", 1)
    max_concurrent = search.get("max_concurrent_trials", 1)
    for key, value in (("num_samples", num_samples), ("max_concurrent_trials", max_concurrent)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            problems.append(f"search.{key}: must be an integer >= 1, got {value!r}")
    space = search.get("space")
    if not isinstance(space, dict) or not space:
        problems.append(
            "search.space: empty or missing; give at least one parameter, e.g. "
            "beta_h: {grid: [4, 10]}"
        )
        space = {}
    short_of = {v: k for k, v in PARAMETERS.items()}
    for key, spec in space.items():
        if key in PARAMETERS:
            short, field_name = key, PARAMETERS[key]
        elif key in short_of:
            short, field_name = short_of[key], key
        else:
            problems.append(
                f"search.space.{key}: unknown parameter; searchable: {', '.join(PARAMETERS)}"
            )
            continue
        dim = _dimension(short, field_name, spec, problems)
        if dim is not None:
            dimensions.append(dim)
    kinds = {d.kind for d in dimensions}
    if algorithm == "grid" and kinds - {"grid"}:
        problems.append(
            f"search.algorithm: grid needs every dimension as grid, got {sorted(kinds)}"
        )
    if algorithm == "optuna" and "grid" in kinds:
        problems.append("search.algorithm: optuna samples every dimension; use choice, not grid")
    if algorithm == "optuna":
        try:
            import optuna  # noqa: F401
        except ImportError:
            problems.append("search.algorithm: optuna is not installed (pip install optuna)")

    metric = raw.get("metric", "loss/recon")
    mode = raw.get("mode", "min")
    if mode not in ("min", "max"):
        problems.append(f"mode: must be min or max, got {mode!r}")
    if base is not None and metric not in reported_metrics(base):
        known = ", ".join(sorted(reported_metrics(base)))
        problems.append(
            f"metric: {metric!r} is never reported by training with this config; reported: {known}"
        )

    scheduler = raw.get("scheduler", {"type": "asha"}) or {"type": "none"}
    if not isinstance(scheduler, dict):
        problems.append(f"scheduler: expected a mapping, got {scheduler!r}")
        scheduler = {}
    problems += _unknown_keys("scheduler.", scheduler, SCHEDULER_KEYS)
    scheduler_type = scheduler.get("type", "asha")
    if scheduler_type not in SCHEDULERS:
        problems.append(f"scheduler.type: {scheduler_type!r} is not one of {list(SCHEDULERS)}")
    grace = scheduler.get("grace_period", base.train.log_every if base else 1)
    reduction = scheduler.get("reduction_factor", 2)
    if not isinstance(grace, int) or grace < 1:
        problems.append(f"scheduler.grace_period: must be an integer >= 1 (steps), got {grace!r}")
    elif base is not None and grace > base.train.num_steps:
        problems.append(
            f"scheduler.grace_period: {grace} is beyond train.num_steps {base.train.num_steps}"
        )
    if not isinstance(reduction, (int, float)) or reduction <= 1:
        problems.append(f"scheduler.reduction_factor: must be > 1, got {reduction!r}")
    max_failures = raw.get("max_trial_failures", 0)
    if not isinstance(max_failures, int) or max_failures < 0:
        problems.append(f"max_trial_failures: must be an integer >= 0, got {max_failures!r}")
    storage = raw.get("storage_path", "runs/sweeps")
    if not isinstance(storage, str) or not storage:
        problems.append(f"storage_path: must be a non-empty path, got {storage!r}")

    # Every trial config the space can produce at its extremes must be valid.
    if base is not None and dimensions and not problems:
        for combo in itertools.product(*[d.extremes() for d in dimensions]):
            overrides = {d.field: v for d, v in zip(dimensions, combo, strict=True)}
            try:
                trial_config(base_raw, overrides, source="trial")
            except ConfigError as err:
                shown = {d.name: v for d, v in zip(dimensions, combo, strict=True)}
                problems.extend(f"trial {shown}: {p}" for p in err.problems)
                break

    if problems:
        raise ConfigError(problems, source=str(path))
    assert base is not None
    return SweepConfig(
        name=name,
        base_raw=base_raw,
        base=base,
        dimensions=dimensions,
        algorithm=algorithm,
        num_samples=num_samples,
        max_concurrent_trials=max_concurrent,
        metric=metric,
        mode=mode,
        scheduler=scheduler_type,
        grace_period=grace,
        reduction_factor=float(reduction),
        storage_path=storage,
        max_trial_failures=max_failures,
        source=str(path),
    )


def _dimension(short: str, field_name: str, spec: Any, problems: list[str]) -> Dimension | None:
    where = f"search.space.{short}"
    if not isinstance(spec, dict) or len(spec) != 1:
        problems.append(f"{where}: expected one of {{{' | '.join(DOMAINS)}: ...}}, got {spec!r}")
        return None
    ((kind, values),) = spec.items()
    if kind not in DOMAINS:
        problems.append(f"{where}: unknown domain {kind!r}; use one of {list(DOMAINS)}")
        return None
    if not isinstance(values, list) or not values:
        problems.append(f"{where}.{kind}: expected a non-empty list, got {values!r}")
        return None
    if any(isinstance(v, float) and not math.isfinite(v) for v in values):
        problems.append(f"{where}.{kind}: values must be finite numbers, got {values!r}")
        return None
    if kind in ("uniform", "loguniform", "randint"):
        if len(values) != 2 or not all(isinstance(v, (int, float)) for v in values):
            problems.append(f"{where}.{kind}: expected [low, high], got {values!r}")
            return None
        low, high = values
        if not low < high:
            problems.append(f"{where}.{kind}: low must be < high, got {values!r}")
            return None
        if kind == "loguniform" and low <= 0:
            problems.append(f"{where}.loguniform: low must be > 0, got {low!r}")
            return None
        if kind == "randint" and not all(isinstance(v, int) for v in values):
            problems.append(f"{where}.randint: bounds must be integers, got {values!r}")
            return None
    elif len(set(map(repr, values))) != len(values):
        problems.append(f"{where}.{kind}: repeated values in {values!r}")
        return None
    return Dimension(name=short, field=field_name, kind=kind, values=list(values))
