"""Typed run configuration: pydantic models, one per section, loaded from YAML.

A config file mirrors the models below section by section::

    name: quick
    seed: 0
    data:    {source: render, num_positions: 16, ...}
    model:   {variant: cascade, num_continuous: 6, num_categories: 3, ...}
    cascade: {stage_length: 400, discrete_start_stage: 4, beta_high: 10.0, beta_low: 0.1}
    solver:  {lam: 0.001, ...}
    optim:   {lr: 1.0e-4, ...}
    train:   {num_steps: 4000, global_batch: 64, num_workers: 2, ...}
    eval:    {protocols: [authors_factorvae, discrete_accuracy], ...}   (trainer.eval.options)

`load_config(path, overrides)` reads a file, applies `section.field=value` overrides and checks
everything (unknown keys, wrong types, NaN or infinite floats, impossible values, cross-field
rules; see trainer.schema). Every problem found is listed in ONE `ConfigError`, so a bad config
never starts a run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    Field,
    PositiveInt,
    ValidationInfo,
    field_validator,
    model_validator,
)

from trainer.core.schedule import CascadeConfig, OptimConfig
from trainer.data.render import MAX_POSITIONS  # distinct pixel positions in the frame
from trainer.eval.options import EvalConfig
from trainer.eval.registry import METRICS, score_keys
from trainer.schema import (
    ConfigError,
    Float,
    RuleError,
    Schema,
    apply_overrides,
    parse_override,
    plain_name,
    rules_apply,
    validate,
)
from trainer.variants.factorvae import FactorVAEConfig
from trainer.variants.jointvae import JointVAEConfig
from trainer.variants.registry import VARIANTS

__all__ = [
    "CascadeConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "FactorVAEConfig",
    "JointVAEConfig",
    "ModelConfig",
    "OptimConfig",
    "SolverConfig",
    "TrainConfig",
    "apply_overrides",
    "load_config",
    "parse_override",
    "read_yaml",
]

MAX_NUM_STEPS = 10**9
"""Bound of train.num_steps: 3,300x the paper's 300,000; a larger value is a typo."""
if TYPE_CHECKING:  # a Literal built at run time is no static type; mypy sees the str it is
    Variant = str
else:
    Variant = Literal[tuple(VARIANTS)]
"""`model.variant`: a name of the variant registry (trainer.variants.registry.VARIANTS)."""
DataSource = Literal["render", "npz"]
OnOrAuto = bool | Literal["auto"]
"""A device switch: true, false, or `auto` (on when the run's device is CUDA, off on CPU)."""
CompileMode = Literal["none", "default", "reduce-overhead", "max-autotune"]
Autocast = Literal["auto", "none", "bf16"]
PlacementStrategy = Literal["PACK", "SPREAD", "STRICT_SPREAD"]
SolverPlacement = Literal["head", "rank0"]


def _folder_name(value: str) -> str:
    if "/" in value:
        raise ValueError(f"must be a plain folder name, got {value!r}")
    return value


class DataConfig(Schema):
    source: DataSource = "render"
    """`render` (the built-in dSprites renderer) or `npz` (the official file at `npz_path`)."""
    npz_path: str | None = None
    """Path of dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz when `source: npz`."""
    num_scales: int = Field(6, ge=1)
    """Rendered grid only: scale values in [0.5, 1] (official: 6)."""
    num_orientations: int = Field(40, ge=1)
    """Rendered grid only: orientation values in [0, 2*pi] (official: 40)."""
    num_positions: int = Field(32, ge=1, le=MAX_POSITIONS)
    """Rendered grid only: positions per axis in [0, 1] (official: 32; at most the 32 distinct
    pixel positions of the 64x64 frame)."""
    cache_dir: str | None = None
    """Arrow cache folder; default `$CASCADEVAE_CACHE` or `~/.cache/cascadevae`."""

    @model_validator(mode="after")
    def _npz_file(self, info: ValidationInfo) -> DataConfig:
        if self.source != "npz" or not rules_apply(info, self, "data.source", "data.npz_path"):
            return self
        if not self.npz_path:
            raise RuleError(["data.npz_path: required when data.source is 'npz'"])
        if not Path(self.npz_path).expanduser().is_file():
            raise RuleError([f"data.npz_path: file not found: {self.npz_path}"])
        return self

    def file_problems(self) -> list[str]:
        """Problems found by reading the .npz (keys, dtypes, shapes, metadata, a zero-byte or
        non-zip file: trainer.data.npz.inspect_npz). Not part of validation, which runs in
        every worker and must stay cheap; a missing file is already refused there."""
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


class ModelConfig(Schema):
    variant: Variant = "cascade"
    """A variant of the registry (trainer.variants.registry.VARIANTS): `cascade` (CascadeVAE:
    continuous + discrete), `cascade_c` (CascadeVAE-C, continuous only), `beta_vae` (one KL
    weight `beta` on every dim, no discrete code), `jointvae` (Dupont 2018: Gumbel-softmax code
    and controlled capacities, see the `jointvae` section), `oracle` (CascadeVAE whose
    discrete stage decodes with the TRUE shape: a supervised known answer) or `factorvae` (Kim
    & Mnih 2018: the ELBO plus gamma times a discriminator's total-correlation estimate, no
    discrete code, see the `factorvae` section)."""
    num_continuous: int = Field(6, ge=1)
    """m, the number of continuous latent dims."""
    num_categories: int = 3
    """S, the number of discrete categories (ignored, forced to 0, for a variant without a
    discrete code: cascade_c, beta_vae, factorvae)."""
    weight_penalty: Float = Field(4e-5, ge=0)
    """Coefficient of the authors' L2 penalty coef * sum(w^2) / 2; 0 switches it off."""
    beta: Float = Field(4.0, ge=0)
    """beta_vae only: the KL weight of every continuous dim."""

    @model_validator(mode="after")
    def _categories(self, info: ValidationInfo) -> ModelConfig:
        reads = ("model.variant", "model.num_categories")
        if not rules_apply(info, self, *reads):
            return self
        if VARIANTS[self.variant].has_code and self.num_categories < 2:
            raise RuleError(
                [
                    f"model.num_categories: variant {self.variant} needs >= 2 categories, "
                    f"got {self.num_categories}"
                ]
            )
        return self

    @property
    def effective_categories(self) -> int:
        return self.num_categories if VARIANTS[self.variant].has_code else 0


class SolverConfig(Schema):
    lam: Float = Field(0.001, ge=0)
    """lambda, the pairwise penalty spreading items over categories (authors: 0.001 per 64)."""
    timeout_s: Float = Field(120.0, gt=0)
    """How long a worker waits for its codes before failing with a clear error."""
    actor_name: str = "cascadevae-solver"
    """Name of the central solver actor (suffixed with the run name)."""
    placement: SolverPlacement = "head"
    """Where the solver actor runs: `head`, the head node (created by the driver; a lost worker
    node never takes it); `rank0`, the node of rank 0 (created by rank 0, which owns it: it
    ends and comes back with the worker group)."""
    transport: Literal["auto", "compiled", "ordinary"] = "auto"
    """How rank 0 calls the solver actor: `ordinary` actor calls, or `compiled`, a Ray Compiled
    Graph (shared-memory channels; built in the background at the start of a run; ordinary calls
    answer until it is ready, and instead of it when it cannot be built, which the worker's log says
    once and the run's hparams record as `ordinary (reason)`). Either way a killed actor is
    restarted by Ray and the call in flight answered; with `compiled` the loss is noticed within ~50
    ms, the graph torn down, the call sent again as an ordinary call, and a new graph built on the
    restarted actor (trainer.distributed.solver_actor.CompiledSolve). A restarted worker group
    restarts an actor on which an earlier group's graph ran (its loop would hold the actor).
    The graph's reader on the actor spins while it waits (Ray 2.60): the actor keeps one CPU
    core busy for the whole run. `auto` (the default) is `compiled` with `train.use_gpu`, where
    a step takes milliseconds and the call's cost matters, and `ordinary` on CPU, where a step
    takes tens of milliseconds and a busy core would slow it. Any of them can be changed when a
    run resumes."""

    def transport_for(self, use_gpu: bool) -> Literal["compiled", "ordinary"]:
        """The transport a run uses: `auto` resolved for a run on GPUs or on CPUs."""
        if self.transport == "auto":
            return "compiled" if use_gpu else "ordinary"
        return self.transport


class TrainConfig(Schema):
    num_steps: int = Field(300_000, ge=1, le=MAX_NUM_STEPS)
    """Total iterations (authors: 300,000); at most 10^9."""
    global_batch: int = Field(64, ge=1)
    """Images per step summed over all workers (authors: 64)."""
    num_workers: int = Field(1, ge=1)
    """Ray Train workers (DDP ranks); each takes global_batch / num_workers images per step."""
    use_gpu: bool = False
    """A GPU (or the share `gpus_per_worker` of one) per worker and NCCL; otherwise CPU and
    gloo. Nothing else changes."""
    gpus_per_worker: Float = Field(1.0, gt=0, le=1)
    """With use_gpu: the share of one GPU each worker asks Ray for. 0.1 lets Tune place ten
    single-worker trials on one GPU (Ray divides the count, not the memory)."""
    cpus_per_worker: Float = Field(1.0, ge=0)
    """CPUs each worker asks Ray for (its torch threads follow it)."""
    placement_strategy: PlacementStrategy = "PACK"
    """How Ray places the workers on nodes: `PACK` as few nodes as they fit on (collectives stay
    inside a node when they can), `SPREAD` over as many nodes as it can (falls back to fewer),
    `STRICT_SPREAD` one worker per node (the run waits until there are num_workers nodes)."""
    # --- the device data path and step speed (trainer.loop, trainer.core.step) ---
    data_on_device: OnOrAuto = "auto"
    """Keep the bit-packed images and latent classes on the device and unpack each batch there
    (trainer.data.device); false: unpack on the host and copy each batch. `auto`: on CUDA."""
    metrics_on_device: OnOrAuto = "auto"
    """Keep each step's metrics on the device, summed there and read once per log interval; the
    non-finite-loss check then runs at the interval end, before any report or checkpoint.
    false: read every step, and a non-finite loss stops the step before its update. `auto`:
    on CUDA."""
    compile: CompileMode = "none"
    """torch.compile mode of the encoder and decoder (`none`: eager)."""
    autocast: Autocast = "auto"
    """`bf16`: the encoder and decoder run under bfloat16 autocast; losses and the unary
    matrix stay float32. `none`: float32 throughout. `auto`: bf16 on a CPU with AMX or
    AVX512-BF16 (trainer.build.cpu_bf16_feature), float32 on other CPUs and on CUDA."""
    channels_last: OnOrAuto = "auto"
    """The convolution kernels and images in channels_last (NHWC) memory format. `auto`: on
    where the run uses bf16 autocast on CPU (oneDNN's bf16 kernels are fastest there), off
    with float32 and on CUDA."""
    log_every: int = Field(100, ge=1)
    """Steps per log interval: TensorBoard scalars, metrics table row, ray.train.report."""
    checkpoint_every: int = Field(5_000, ge=1)
    """Steps between checkpoints: one after every multiple of it and one at the end (a log
    interval ends there, and its report carries the checkpoint); with `keep_best_by`, also one
    after every evaluation."""
    eval_every: int = Field(20_000, ge=0)
    """Steps between evaluations of the disentanglement metrics (0: only at the end)."""
    eval_at_discrete_start: bool = False
    """Also evaluate after cascade.stage_length x cascade.discrete_start_stage steps: the model the
    discrete stage starts from (for a variant without a discrete stage, the same step, so runs
    can be compared there); it must fall within the run. Diagnostic: off the eval_every cadence
    it ranks no checkpoint (`keep_best_by`) and no best-by-metric reading of a study."""
    image_every: int = Field(20_000, ge=0)
    """Steps between reconstruction / traversal images in TensorBoard (0: only at the end)."""
    max_failures: int = Field(3, ge=0)
    """Worker-group restarts from the last checkpoint before the run fails."""
    storage_path: str = Field("runs", min_length=1)
    """Root folder of runs (absolute, or relative to the launch directory)."""
    run_name: Annotated[str, AfterValidator(_folder_name)] = ""
    """Run folder under storage_path; empty: the config's name. Same name = resume."""
    num_checkpoints_kept: int = Field(2, ge=1)
    """Checkpoints kept: the newest ones, or the best ones by `keep_best_by` (plus the latest)."""
    keep_best_by: str = ""
    """A score of the eval protocols such as `eval/authors_factorvae` (higher is better, see
    trainer.eval.registry): every evaluation also writes a checkpoint and the best by this
    metric are kept besides the latest, the authors' protocol (they select on the test metric).
    Empty: keep the newest checkpoints."""
    collective_timeout_s: Float = Field(600.0, gt=0)
    """gloo/NCCL timeout: a rank that is alive but never joins a collective fails the step
    after this long instead of hanging."""
    stall_timeout_s: Float = Field(20.0, gt=0)
    """A worker process that answers none of Ray Train's health checks for this long (stopped,
    frozen, swapped out) is marked dead and the group restarts from the last checkpoint. The
    checks are answered by the worker's main thread while training runs in another, so a slow
    step or a long evaluation does not trip it; too short a value restarts a worker that is
    only paused, for example by heavy swapping."""
    record_codes_steps: int = Field(0, ge=0)
    """Debug: save each rank's unary shard and codes for the first N discrete steps."""
    fail_at_step: int = Field(0, ge=0)
    """Fault drill: every worker crashes once at this step (0: never); the run must resume."""
    hold_at_step: list[PositiveInt] = Field(default_factory=list)
    """Fault drill: rank 0 waits before each of these steps (a step or a list; 0 or []:
    never), once per run folder, until the file `.release_hold_<step>` appears in the run
    folder, so that a test can inject a fault at a known step. It writes `.held_at_step_<step>`
    when it starts waiting."""

    @field_validator("hold_at_step", mode="before")
    @classmethod
    def _one_step_or_a_list(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            return [value] if value else []
        return value

    @model_validator(mode="after")
    def _batch_split(self, info: ValidationInfo) -> TrainConfig:
        if not rules_apply(info, self, "train.global_batch", "train.num_workers"):
            return self
        if self.global_batch % self.num_workers:
            raise RuleError(
                [
                    f"train.global_batch: {self.global_batch} is not divisible by "
                    f"train.num_workers={self.num_workers}"
                ]
            )
        return self


class Config(Schema):
    name: Annotated[str, AfterValidator(plain_name)] = "run"
    """Human name of the config; the default run folder name."""
    seed: int = 0
    """Seeds data order, noise and initialisation: a run is reproducible given seed and workers."""
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    cascade: CascadeConfig = Field(default_factory=CascadeConfig)
    solver: SolverConfig = Field(default_factory=SolverConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    jointvae: JointVAEConfig = Field(default_factory=JointVAEConfig)
    factorvae: FactorVAEConfig = Field(default_factory=FactorVAEConfig)

    @model_validator(mode="after")
    def _across_sections(self, info: ValidationInfo) -> Config:
        problems = []
        cascade, train, model, protocols = self.cascade, self.train, self.model, self.eval.protocols
        reads: tuple[str, ...] = (
            "model.variant",
            "cascade.stage_length",
            "cascade.discrete_start_stage",
            "train.num_steps",
        )
        discrete_stage = VARIANTS[model.variant].has_discrete_stage
        if rules_apply(info, self, *reads) and discrete_stage:
            start = cascade.discrete_start_step
            if start >= train.num_steps:
                last_stage = (train.num_steps - 1) // cascade.stage_length
                problems.append(
                    f"cascade.discrete_start_stage: the discrete stage starts at iteration {start} "
                    f"(stage {cascade.discrete_start_stage}), after the last stage {last_stage} of "
                    f"train.num_steps={train.num_steps}"
                )
        reads = (
            "train.eval_at_discrete_start",
            "cascade.stage_length",
            "cascade.discrete_start_stage",
            "train.num_steps",
        )
        if rules_apply(info, self, *reads) and train.eval_at_discrete_start:
            start = cascade.discrete_start_step
            if not 0 < start < train.num_steps:
                problems.append(
                    f"train.eval_at_discrete_start: the discrete start, step {start} "
                    f"(cascade.stage_length x cascade.discrete_start_stage), is not within the "
                    f"run's steps 1..{train.num_steps - 1}"
                )
        reads = ("train.keep_best_by", "eval.protocols")
        if rules_apply(info, self, *reads) and train.keep_best_by:
            if train.keep_best_by not in score_keys(protocols):
                problems.append(
                    f"train.keep_best_by: {train.keep_best_by!r} is not a score of "
                    f"eval.protocols {protocols}; choose from {score_keys(protocols)}"
                )
        if rules_apply(info, self, "eval.protocols", "model.variant", "model.num_categories"):
            for name in protocols:
                if METRICS[name].needs_codes and model.effective_categories == 0:
                    problems.append(
                        f"eval.protocols: {name} needs a discrete code (variant "
                        f"{model.variant} has none)"
                    )
        if problems:
            raise RuleError(problems)
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
        return self.model_dump()

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def flat(self) -> dict[str, Any]:
        """`{"section.field": value}` for hparams and tables (lists joined with commas)."""
        out: dict[str, Any] = {}
        for key, value in self.to_dict().items():
            if isinstance(value, dict):
                for sub, v in value.items():
                    out[f"{key}.{sub}"] = ",".join(map(str, v)) if isinstance(v, list) else v
            else:
                out[key] = value
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config") -> Config:
        """Build and validate; raises ConfigError listing every problem (trainer.schema)."""
        return validate(cls, raw, source)


SECTIONS = (
    "data", "model", "cascade", "solver", "optim", "train", "eval", "jointvae", "factorvae",
)  # fmt: skip


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
