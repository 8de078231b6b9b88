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

Everything is checked before any trial starts (`load_sweep`, through the `SweepFile` schema):
unknown keys, an empty or malformed space, an unknown parameter, a metric training never reports,
and every trial config the space can produce at its extreme values. No Ray here except building
Tune's search-space objects on request.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, PrivateAttr, ValidationInfo, model_validator

from trainer.config import Config, ConfigError, apply_overrides, read_yaml
from trainer.reported import reported_keys
from trainer.schema import Float, RuleError, Schema, plain_name, rules_apply, validate

PARAMETERS = {
    "beta_h": "cascade.beta_high",
    "beta_l": "cascade.beta_low",
    "lambda": "solver.lam",
    "seed": "seed",
    "lr": "optim.lr",
    "stage_length": "cascade.stage_length",
    "discrete_start": "cascade.discrete_start_stage",
    "gamma": "factorvae.gamma",
}
"""Searchable names -> config fields (the dotted field names are accepted too)."""

DOMAINS = ("grid", "choice", "uniform", "loguniform", "randint")
RUN_DIMENSION = "run"
"""The one dimension of a study's grid (launch.study): the name of the run of each trial."""


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
    """Every scalar name a training run with `config` reports to Ray (and so to Tune): the
    list the reporting code declares (trainer.reported.reported_keys)."""
    return reported_keys(config)


class SearchSpec(Schema):
    algorithm: Literal["grid", "random", "optuna"] = "grid"
    """grid | random | optuna (model-based, needs `optuna`)."""
    num_samples: int = Field(1, ge=1)
    """Repeats of the grid (random: grid dims are crossed and the others sampled anew)."""
    max_concurrent_trials: int = Field(1, ge=1)
    space: dict[str, Any] = Field(default_factory=dict)
    """Parameter (a name of PARAMETERS or its dotted field) -> {domain: values}."""


class SchedulerSpec(Schema):
    type: Literal["asha", "none"] = "asha"
    grace_period: int | None = Field(None, ge=1)
    """Steps before ASHA may stop a trial; default train.log_every of the base config."""
    reduction_factor: Float = Field(2.0, gt=1)


class SweepFile(Schema):
    """A sweep file. Validating it (context `folder`: where `base` is relative to) also reads
    the base config and checks everything that depends on it."""

    name: Annotated[str, AfterValidator(plain_name)] | None = None
    """Default: the file's stem."""
    base: str
    """The training config, relative to the sweep file."""
    set: dict[str, Any] = Field(default_factory=dict)
    """Fixed overrides of the base (`field: value`), applied to every trial."""
    search: SearchSpec
    metric: str = "loss/recon"
    """Any scalar training reports (see `reported_metrics`)."""
    mode: Literal["min", "max"] = "min"
    scheduler: SchedulerSpec | None = Field(default_factory=SchedulerSpec)
    """Empty: no scheduler (type none)."""
    storage_path: str = Field("runs/sweeps", min_length=1)
    max_trial_failures: int = Field(0, ge=0)

    _base_raw: dict[str, Any] = PrivateAttr(default_factory=dict)
    _base: Config | None = PrivateAttr(default=None)
    _dimensions: list[Dimension] = PrivateAttr(default_factory=list)

    @model_validator(mode="after")
    def _with_base(self, info: ValidationInfo) -> SweepFile:
        if not rules_apply(info, self, "base", "set", "search", "metric", "scheduler"):
            return self
        problems: list[str] = []
        folder = Path((info.context or {}).get("folder", "."))
        self._base_raw, self._base = resolve_base(folder / self.base, self.set, problems)
        self._dimensions = _dimensions(self.search, problems)
        base = self._base
        if base is not None and self.metric not in reported_metrics(base):
            known = ", ".join(sorted(reported_metrics(base)))
            problems.append(
                f"metric: {self.metric!r} is never reported by training with this config; "
                f"reported: {known}"
            )
        scheduler = self.scheduler or SchedulerSpec(type="none")
        grace = scheduler.grace_period
        if base is not None and grace is not None and grace > base.train.num_steps:
            problems.append(
                f"scheduler.grace_period: {grace} is beyond train.num_steps {base.train.num_steps}"
            )
        # Every trial config the space can produce at its extremes must be valid.
        if base is not None and self._dimensions and not problems:
            problems += _extreme_trial_problems(self._base_raw, self._dimensions)
        if problems:
            raise RuleError(problems)
        return self


def resolve_base(
    path: Path, fixed: dict[str, Any], problems: list[str], check: bool = True
) -> tuple[dict[str, Any], Config | None]:
    """The base training config at `path` with the `fixed` overrides: its raw mapping and, when
    `check`, its validated Config (None when invalid or not checked); problems are appended,
    prefixed `base:`, `set:` or `base config:`."""
    base_raw: dict[str, Any] = {}
    try:
        base_raw = read_yaml(path.resolve())
    except ConfigError as err:
        problems.extend(f"base: {p}" for p in err.problems)
    try:
        base_raw = apply_overrides(base_raw, [f"{k}={_yaml_scalar(v)}" for k, v in fixed.items()])
    except ConfigError as err:
        problems.extend(f"set: {p}" for p in err.problems)
    if not base_raw or not check:
        return base_raw, None
    try:
        return base_raw, trial_config(base_raw, {}, source="base")
    except ConfigError as err:
        problems.extend(f"base config: {p}" for p in err.problems)
        return base_raw, None


def _dimensions(search: SearchSpec, problems: list[str]) -> list[Dimension]:
    """The search space as dimensions, with the searcher's rules over them."""
    if not search.space:
        problems.append(
            "search.space: empty or missing; give at least one parameter, e.g. "
            "beta_h: {grid: [4, 10]}"
        )
    short_of = {v: k for k, v in PARAMETERS.items()}
    dimensions = []
    for key, spec in search.space.items():
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
    if search.algorithm == "grid" and kinds - {"grid"}:
        problems.append(
            f"search.algorithm: grid needs every dimension as grid, got {sorted(kinds)}"
        )
    if search.algorithm == "optuna" and "grid" in kinds:
        problems.append("search.algorithm: optuna samples every dimension; use choice, not grid")
    if search.algorithm == "optuna":
        try:
            import optuna  # noqa: F401
        except ImportError:
            problems.append("search.algorithm: optuna is not installed (pip install optuna)")
    return dimensions


def _extreme_trial_problems(base_raw: dict[str, Any], dimensions: list[Dimension]) -> list[str]:
    """The problems of the first invalid trial config among the space's extreme values."""
    for combo in itertools.product(*[d.extremes() for d in dimensions]):
        overrides = {d.field: v for d, v in zip(dimensions, combo, strict=True)}
        try:
            trial_config(base_raw, overrides, source="trial")
        except ConfigError as err:
            shown = {d.name: v for d, v in zip(dimensions, combo, strict=True)}
            return [f"trial {shown}: {p}" for p in err.problems]
    return []


def load_sweep(path: str | Path) -> SweepConfig:
    """Read and check a sweep file; raises ConfigError listing every problem."""
    path = Path(path)
    spec: SweepFile = validate(SweepFile, read_yaml(path), str(path), {"folder": path.parent})
    assert spec._base is not None
    scheduler = spec.scheduler or SchedulerSpec(type="none")
    return SweepConfig(
        name=spec.name or path.stem,
        base_raw=spec._base_raw,
        base=spec._base,
        dimensions=spec._dimensions,
        algorithm=spec.search.algorithm,
        num_samples=spec.search.num_samples,
        max_concurrent_trials=spec.search.max_concurrent_trials,
        metric=spec.metric,
        mode=spec.mode,
        scheduler=scheduler.type,
        grace_period=scheduler.grace_period or spec._base.train.log_every,
        reduction_factor=scheduler.reduction_factor,
        storage_path=spec.storage_path,
        max_trial_failures=spec.max_trial_failures,
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
