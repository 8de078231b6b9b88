"""Typed run configuration: dataclasses that validate themselves, loaded from YAML.

A config file mirrors the dataclasses below section by section::

    name: quick
    seed: 0
    data:    {source: render, num_positions: 16, ...}
    model:   {variant: cascade, num_continuous: 6, num_categories: 3, ...}
    cascade: {stage_length: 400, discrete_start_stage: 4, beta_high: 10.0, beta_low: 0.1}
    solver:  {lam: 0.001, ...}
    optim:   {lr: 1.0e-4, ...}
    train:   {num_steps: 4000, global_batch: 64, num_workers: 2, ...}
    eval:    {protocols: [authors_factorvae, discrete_accuracy], ...}

`load_config(path, overrides)` reads a file, applies `section.field=value` overrides and checks
everything (unknown keys, wrong types, impossible values, cross-field rules). Every problem found
is listed in ONE `ConfigError`, so a bad config never starts a run.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from trainer.data.render import MAX_POSITIONS  # distinct pixel positions in the frame

VARIANTS = ("cascade", "cascade_c", "beta_vae", "jointvae", "oracle")
DISCRETE_VARIANTS = ("cascade", "jointvae", "oracle")  # variants with a discrete code
CASCADE_SCHEDULE_VARIANTS = ("cascade", "oracle")  # a discrete stage of the cascade
DATA_SOURCES = ("render", "npz")
EVAL_PROTOCOLS = ("authors_factorvae", "factorvae", "discrete_accuracy", "mig")


EVAL_KEYS = {
    "authors_factorvae": ("eval/authors_factorvae", "eval/active_dims"),
    "factorvae": ("eval/factorvae", "eval/factorvae_train"),
    "discrete_accuracy": ("eval/discrete_accuracy",),
    "mig": ("eval/mig",),
}
"""Keys each protocol reports: its score (higher is better) and, for authors_factorvae, the
number of KL-active continuous dims it kept."""


def eval_keys(protocols: list[str]) -> set[str]:
    return {key for p in protocols for key in EVAL_KEYS.get(p, ())}


class ConfigError(ValueError):
    """A config that must not start a run; `problems` lists every issue found."""

    def __init__(self, problems: list[str], source: str = "config"):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{source}: {len(self.problems)} problem(s):\n{lines}")


@dataclass
class DataConfig:
    source: str = "render"
    """`render` (the built-in dSprites renderer) or `npz` (the official file at `npz_path`)."""
    npz_path: str | None = None
    """Path of dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz when `source: npz`."""
    num_scales: int = 6
    """Rendered grid only: scale values in [0.5, 1] (official: 6)."""
    num_orientations: int = 40
    """Rendered grid only: orientation values in [0, 2*pi] (official: 40)."""
    num_positions: int = 32
    """Rendered grid only: positions per axis in [0, 1] (official: 32)."""
    cache_dir: str | None = None
    """Arrow cache folder; default `$CASCADEVAE_CACHE` or `~/.cache/cascadevae`."""

    def problems(self) -> list[str]:
        out = []
        if self.source not in DATA_SOURCES:
            out.append(f"data.source: {self.source!r} is not one of {list(DATA_SOURCES)}")
        if self.source == "npz":
            if not self.npz_path:
                out.append("data.npz_path: required when data.source is 'npz'")
            elif not Path(self.npz_path).expanduser().is_file():
                out.append(f"data.npz_path: file not found: {self.npz_path}")
        for name in ("num_scales", "num_orientations", "num_positions"):
            if getattr(self, name) < 1:
                out.append(f"data.{name}: must be >= 1, got {getattr(self, name)}")
        if self.num_positions > MAX_POSITIONS:
            out.append(
                f"data.num_positions: at most {MAX_POSITIONS} distinct pixel positions fit the "
                f"64x64 frame, got {self.num_positions}"
            )
        return out

    def file_problems(self) -> list[str]:
        """Problems found by reading the .npz (keys, dtypes, shapes, metadata, a zero-byte or
        non-zip file: trainer.data.npz.inspect_npz). Not part of `problems`, which runs in
        every worker and must stay cheap; a missing file is already one of `problems`."""
        if self.source != "npz" or not self.npz_path:
            return []
        if not Path(self.npz_path).expanduser().is_file():
            return []
        from trainer.data.cache import DatasetError
        from trainer.data.npz import inspect_npz

        try:
            inspect_npz(self.npz_path)
        except DatasetError as err:
            return [f"data.npz_path: {err}"]
        return []


@dataclass
class ModelConfig:
    variant: str = "cascade"
    """`cascade` (CascadeVAE: continuous + discrete), `cascade_c` (CascadeVAE-C, continuous
    only), `beta_vae` (one KL weight `beta` on every dim, no discrete code), `jointvae` (Dupont
    2018: Gumbel-softmax code and controlled capacities, see the `jointvae` section) or `oracle`
    (CascadeVAE whose discrete stage decodes with the TRUE shape: a supervised known answer)."""
    num_continuous: int = 6
    """m, the number of continuous latent dims."""
    num_categories: int = 3
    """S, the number of discrete categories (ignored, forced to 0, for cascade_c and beta_vae)."""
    weight_penalty: float = 4e-5
    """Coefficient of the authors' L2 penalty coef * sum(w^2) / 2; 0 switches it off."""
    beta: float = 4.0
    """beta_vae only: the KL weight of every continuous dim."""

    def problems(self) -> list[str]:
        out = []
        if self.variant not in VARIANTS:
            out.append(f"model.variant: {self.variant!r} is not one of {list(VARIANTS)}")
        if self.num_continuous < 1:
            out.append(f"model.num_continuous: must be >= 1, got {self.num_continuous}")
        if self.variant in DISCRETE_VARIANTS and self.num_categories < 2:
            out.append(
                f"model.num_categories: variant {self.variant} needs >= 2 categories, "
                f"got {self.num_categories}"
            )
        if self.weight_penalty < 0:
            out.append(f"model.weight_penalty: must be >= 0, got {self.weight_penalty}")
        if self.beta < 0:
            out.append(f"model.beta: must be >= 0, got {self.beta}")
        return out

    @property
    def effective_categories(self) -> int:
        return self.num_categories if self.variant in DISCRETE_VARIANTS else 0


@dataclass
class JointVAEConfig:
    """Settings of `model.variant: jointvae` (Dupont 2018; his dSprites values as defaults)."""

    temperature: float = 0.67
    """Gumbel-softmax temperature."""
    gamma: float = 150.0
    """Weight of both capacity terms gamma * |KL - C|."""
    continuous_capacity: float = 40.0
    """C_z at the end of the ramp, nats (sum over continuous dims)."""
    discrete_capacity: float = 1.1
    """C_c at the end of the ramp, nats (capped at log K)."""
    capacity_steps: int = 0
    """Iterations over which both capacities rise linearly from 0; 0 = train.num_steps."""

    def problems(self) -> list[str]:
        out = []
        if not self.temperature > 0:
            out.append(f"jointvae.temperature: must be > 0, got {self.temperature}")
        for name in ("gamma", "continuous_capacity", "discrete_capacity"):
            if getattr(self, name) < 0:
                out.append(f"jointvae.{name}: must be >= 0, got {getattr(self, name)}")
        if self.capacity_steps < 0:
            out.append(f"jointvae.capacity_steps: must be >= 0, got {self.capacity_steps}")
        return out


@dataclass
class CascadeConfig:
    stage_length: int = 20_000
    """P, iterations per stage of the cascade (authors: 20,000)."""
    discrete_start_stage: int = 4
    """T, the first stage in which the discrete code is learned (authors: 4)."""
    beta_high: float = 10.0
    """beta_h, the KL weight of dims not yet relieved (authors: 10)."""
    beta_low: float = 0.1
    """beta_l, the KL weight of relieved dims (authors: 0.1)."""

    def problems(self) -> list[str]:
        out = []
        if self.stage_length < 1:
            out.append(f"cascade.stage_length: must be >= 1, got {self.stage_length}")
        if self.discrete_start_stage < 0:
            out.append(
                f"cascade.discrete_start_stage: must be >= 0, got {self.discrete_start_stage}"
            )
        for name in ("beta_high", "beta_low"):
            if getattr(self, name) < 0:
                out.append(f"cascade.{name}: must be >= 0, got {getattr(self, name)}")
        return out


@dataclass
class SolverConfig:
    lam: float = 0.001
    """lambda, the pairwise penalty spreading items over categories (authors: 0.001 per 64)."""
    timeout_s: float = 120.0
    """How long a worker waits for its codes before failing with a clear error."""
    actor_name: str = "cascadevae-solver"
    """Name of the central solver actor (suffixed with the run name)."""

    def problems(self) -> list[str]:
        out = []
        if self.lam < 0:
            out.append(f"solver.lam: must be >= 0, got {self.lam}")
        if self.timeout_s <= 0:
            out.append(f"solver.timeout_s: must be > 0, got {self.timeout_s}")
        return out


@dataclass
class OptimConfig:
    lr: float = 1e-4
    """Adam learning rate (authors: 1e-4)."""
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    decay_every: int = 50_000
    """Staircase decay period in iterations (authors: 50,000)."""
    decay_rate: float = 0.3
    """Learning-rate factor applied every `decay_every` iterations (authors: 0.3)."""

    def problems(self) -> list[str]:
        out = []
        if self.lr <= 0:
            out.append(f"optim.lr: must be > 0, got {self.lr}")
        for name in ("adam_beta1", "adam_beta2"):
            if not 0 <= getattr(self, name) < 1:
                out.append(f"optim.{name}: must be in [0, 1), got {getattr(self, name)}")
        if self.decay_every < 1:
            out.append(f"optim.decay_every: must be >= 1, got {self.decay_every}")
        if not 0 < self.decay_rate <= 1:
            out.append(f"optim.decay_rate: must be in (0, 1], got {self.decay_rate}")
        return out


@dataclass
class TrainConfig:
    num_steps: int = 300_000
    """Total iterations (authors: 300,000)."""
    global_batch: int = 64
    """Images per step summed over all workers (authors: 64)."""
    num_workers: int = 1
    """Ray Train workers (DDP ranks); each takes global_batch / num_workers images per step."""
    use_gpu: bool = False
    """One GPU per worker and NCCL; otherwise CPU and gloo. Nothing else changes."""
    cpus_per_worker: float = 1.0
    log_every: int = 100
    """Steps per log interval: TensorBoard scalars, metrics table row, ray.train.report."""
    checkpoint_every: int = 5_000
    """Steps between checkpoints (rounded to log boundaries: a checkpoint rides on a report)."""
    eval_every: int = 20_000
    """Steps between evaluations of the disentanglement metrics (0: only at the end)."""
    image_every: int = 20_000
    """Steps between reconstruction / traversal images in TensorBoard (0: only at the end)."""
    max_failures: int = 3
    """Worker-group restarts from the last checkpoint before the run fails."""
    storage_path: str = "runs"
    """Root folder of runs (absolute, or relative to the launch directory)."""
    run_name: str = ""
    """Run folder under storage_path; empty: the config's name. Same name = resume."""
    num_checkpoints_kept: int = 2
    """Checkpoints kept: the newest ones, or the best ones by `keep_best_by` (plus the latest)."""
    keep_best_by: str = ""
    """An eval metric such as `eval/authors_factorvae` (higher is better): every evaluation also
    writes a checkpoint and the best by this metric are kept besides the latest, the authors'
    protocol (they select on the test metric). Empty: keep the newest checkpoints."""
    collective_timeout_s: float = 600.0
    """gloo/NCCL timeout: a missing rank fails the step after this long instead of hanging."""
    record_codes_steps: int = 0
    """Debug: save each rank's unary shard and codes for the first N discrete steps."""
    fail_at_step: int = 0
    """Fault drill: every worker crashes once at this step (0: never); the run must resume."""

    def problems(self) -> list[str]:
        out = []
        positive = (
            "num_steps",
            "global_batch",
            "num_workers",
            "log_every",
            "checkpoint_every",
            "num_checkpoints_kept",
        )
        for name in positive:
            if getattr(self, name) < 1:
                out.append(f"train.{name}: must be >= 1, got {getattr(self, name)}")
        for name in (
            "eval_every",
            "image_every",
            "max_failures",
            "record_codes_steps",
            "fail_at_step",
        ):
            if getattr(self, name) < 0:
                out.append(f"train.{name}: must be >= 0, got {getattr(self, name)}")
        if self.cpus_per_worker < 0:
            out.append(f"train.cpus_per_worker: must be >= 0, got {self.cpus_per_worker}")
        if self.collective_timeout_s <= 0:
            out.append(f"train.collective_timeout_s: must be > 0, got {self.collective_timeout_s}")
        if self.num_workers >= 1 and self.global_batch % self.num_workers:
            out.append(
                f"train.global_batch: {self.global_batch} is not divisible by "
                f"train.num_workers={self.num_workers}"
            )
        if not self.storage_path:
            out.append("train.storage_path: must not be empty")
        if "/" in self.run_name:
            out.append(f"train.run_name: must be a plain folder name, got {self.run_name!r}")
        return out


@dataclass
class EvalConfig:
    protocols: list[str] = field(default_factory=lambda: ["authors_factorvae", "discrete_accuracy"])
    """Metrics computed every `train.eval_every` steps and at the end (see trainer.eval.metrics)."""
    num_global: int = 10_000
    """Images sampled for global statistics (variances, KL activity, discrete accuracy)."""
    num_votes: int = 800
    """Votes of the authors' FactorVAE variant (authors: 800)."""
    vote_size: int = 100
    """Images per vote of the authors' variant (authors: 100)."""
    batch_size: int = 256
    """Images per encoder batch (x K decoder rows for codes); as fast as 1024 here, less memory."""

    def problems(self) -> list[str]:
        out = []
        unknown = [p for p in self.protocols if p not in EVAL_PROTOCOLS]
        if unknown:
            out.append(f"eval.protocols: unknown {unknown}; choose from {list(EVAL_PROTOCOLS)}")
        for name in ("num_global", "num_votes", "vote_size", "batch_size"):
            if getattr(self, name) < 1:
                out.append(f"eval.{name}: must be >= 1, got {getattr(self, name)}")
        return out


@dataclass
class Config:
    name: str = "run"
    """Human name of the config; the default run folder name."""
    seed: int = 0
    """Seeds data order, noise and initialisation: a run is reproducible given seed and workers."""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    cascade: CascadeConfig = field(default_factory=CascadeConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    jointvae: JointVAEConfig = field(default_factory=JointVAEConfig)

    def problems(self) -> list[str]:
        out: list[str] = []
        if not self.name or "/" in self.name:
            out.append(f"name: must be a non-empty plain name, got {self.name!r}")
        for section in SECTIONS:
            out.extend(_section_problems(section, getattr(self, section)))
        # Cross-field rules.
        cascade, train = self.cascade, self.train
        if self.model.variant in CASCADE_SCHEDULE_VARIANTS and cascade.stage_length >= 1:
            start = cascade.discrete_start_stage * cascade.stage_length
            if start >= train.num_steps:
                last_stage = (train.num_steps - 1) // cascade.stage_length
                out.append(
                    f"cascade.discrete_start_stage: the discrete stage starts at iteration {start} "
                    f"(stage {cascade.discrete_start_stage}), after the last stage {last_stage} of "
                    f"train.num_steps={train.num_steps}"
                )
        keep_best_by = self.train.keep_best_by
        if keep_best_by and keep_best_by not in eval_keys(self.eval.protocols):
            out.append(
                f"train.keep_best_by: {keep_best_by!r} is not reported by eval.protocols "
                f"{self.eval.protocols}; choose from {sorted(eval_keys(self.eval.protocols))}"
            )
        if "discrete_accuracy" in self.eval.protocols and self.model.effective_categories == 0:
            out.append(
                f"eval.protocols: discrete_accuracy needs a discrete code (variant "
                f"{self.model.variant} has none)"
            )
        return out

    def validate(self, source: str = "config") -> Config:
        problems = self.problems()
        if problems:
            raise ConfigError(problems, source)
        return self

    def check_files(self, source: str = "config") -> Config:
        """Read the files the config names and raise ConfigError listing what is wrong with
        them; the launch commands call it once before Ray starts (see DataConfig.file_problems)."""
        problems = self.data.file_problems()
        if problems:
            raise ConfigError(problems, source)
        return self

    @property
    def run_name(self) -> str:
        return self.train.run_name or self.name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def flat(self) -> dict[str, Any]:
        """`{"section.field": value}` for hparams and tables (lists joined with commas)."""
        out: dict[str, Any] = {}
        for key, value in self.to_dict().items():
            if isinstance(value, dict):
                for sub, v in value.items():
                    out[f"{key}.{sub}"] = ",".join(v) if isinstance(v, list) else v
            else:
                out[key] = value
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config") -> Config:
        """Build and validate; unknown keys and wrong types are reported with all other problems."""
        problems: list[str] = []
        config = _build(cls, raw, "", problems)  # badly typed fields keep their defaults
        problems.extend(config.problems())
        if problems:
            raise ConfigError(problems, source)
        return config


SECTIONS = ("data", "model", "cascade", "solver", "optim", "train", "eval", "jointvae")


def _section_problems(section: str, values: Any) -> list[str]:
    """A section's problems: each NaN or infinite float field once as such, then the section's
    own checks of its other fields (range checks are false or misleading for NaN and inf)."""
    non_finite = [
        f.name
        for f in dataclasses.fields(values)
        if isinstance(getattr(values, f.name), float) and not math.isfinite(getattr(values, f.name))
    ]
    out = [
        f"{section}.{name}: must be a finite number, got {getattr(values, name)}"
        for name in non_finite
    ]
    skip = tuple(f"{section}.{name}:" for name in non_finite)
    out.extend(p for p in values.problems() if not (skip and p.startswith(skip)))
    return out


def _build(cls: type, raw: Any, prefix: str, problems: list[str]) -> Any:
    """Instantiate dataclass `cls` from `raw`, appending type and key problems to `problems`."""
    if not isinstance(raw, dict):
        problems.append(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {raw!r}")
        return cls()
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            problems.append(f"{prefix}{key}: unknown key (known: {', '.join(sorted(fields))})")
    kwargs = {}
    for name in fields:
        if name not in raw:
            continue
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, raw[name], f"{prefix}{name}.", problems)
            continue
        ok, value = _coerce(raw[name], hint)
        if ok:
            kwargs[name] = value
        else:
            problems.append(
                f"{prefix}{name}: expected {_type_name(hint)}, got {raw[name]!r} "
                f"({type(raw[name]).__name__})"
            )
    return cls(**kwargs)


def _coerce(value: Any, hint: Any) -> tuple[bool, Any]:
    """Check `value` against a simple type hint; ints are accepted where floats are expected."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            if arg is type(None) and value is None:
                return True, None
            if arg is not type(None):
                ok, coerced = _coerce(value, arg)
                if ok:
                    return True, coerced
        return False, None
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            return False, None
        items = [_coerce(v, item) for v in value]
        return (all(ok for ok, _ in items), [v for _, v in items])
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        if isinstance(value, bool):
            return False, None
        if isinstance(value, (int, float)):
            return True, float(value)
        if isinstance(value, str):  # YAML 1.1 reads `1e-4` (no dot) as a string
            try:
                return True, float(value)
            except ValueError:
                return False, None
        return False, None
    if hint is str:
        return isinstance(value, str), value
    return isinstance(value, hint), value


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if origin is list:
        return f"list of {_type_name(typing.get_args(hint)[0])}"
    return "null" if hint is type(None) else getattr(hint, "__name__", str(hint))


def parse_override(text: str) -> tuple[list[str], Any]:
    """`"train.num_steps=100"` -> (["train", "num_steps"], 100); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError([f"--set {text!r}: expected key=value, e.g. train.num_steps=100"])
    key, raw_value = text.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError([f"--set {text!r}: empty key"])
    return path, yaml.safe_load(raw_value) if raw_value.strip() else ""


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of `raw` with each `section.field=value` override set."""
    import copy

    merged = copy.deepcopy(raw)
    for text in overrides:
        path, value = parse_override(text)
        node = merged
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError([f"--set {text!r}: {part} is not a section"])
        node[path[-1]] = value
    return merged


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a non-empty YAML mapping, with errors that name the file.

    An empty file (or one of comments only) and an empty mapping are refused: a run built from
    nothing but the defaults is the paper-scale run, never what an empty file meant.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"file not found: {path}"], source=str(path))
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError([f"not valid YAML: {err}"], source=str(path)) from err
    if raw is None:
        raise ConfigError([f"{path} is empty; expected a mapping of settings"], str(path))
    if not isinstance(raw, dict):
        raise ConfigError(
            [f"{path}: expected a mapping at the top level, got {type(raw).__name__} {raw!r}"],
            str(path),
        )
    if not raw:
        raise ConfigError([f"{path} is an empty mapping; expected settings"], str(path))
    return raw


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> Config:
    """Read `path`, apply overrides, validate; raises ConfigError listing every problem."""
    raw = apply_overrides(read_yaml(path), overrides or [])
    return Config.from_dict(raw, source=str(path))
