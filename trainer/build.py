"""Config -> the parts of a run: dataset, model, optimizer, KL schedule, the variant's extras,
evaluation options (the variant's parts come from its entry in trainer.variants.registry).
Pure builders with no Ray, shared by the Train worker, the evaluate CLI and the benchmarks.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trainer.config import Config, TrainConfig
from trainer.core.model import CascadeVAE
from trainer.core.schedule import CascadeSchedule, make_optimizer
from trainer.core.step import CapacitySchedule
from trainer.data.dsprites import DSprites, open_dsprites
from trainer.variants.registry import variant_of
from trainer.variants.types import Extras


def open_data(config: Config, progress: bool = False) -> DSprites:
    data = config.data
    return open_dsprites(
        source=data.source,
        npz_path=data.npz_path,
        num_scales=data.num_scales,
        num_orientations=data.num_orientations,
        num_positions=data.num_positions,
        cache_dir=data.cache_dir,
        progress=progress,
    )


def build_model(config: Config) -> CascadeVAE:
    """The variant's model (trainer.variants.registry), on the CPU."""
    return variant_of(config).build_model(config)


def build_schedule(config: Config) -> CascadeSchedule:
    """The variant's KL weights over training."""
    return variant_of(config).build_schedule(config)


def build_extras(config: Config, device: torch.device | str = "cpu") -> Extras:
    """The variant's extra trained modules with their optimizers, and its step settings, on
    `device` (empty for a variant without any)."""
    return variant_of(config).build_extras(config, torch.device(device))


def build_capacities(config: Config) -> CapacitySchedule | None:
    """JointVAE's capacity ramp: the step settings of a variant with one (None otherwise)."""
    settings = build_extras(config).settings
    return settings if isinstance(settings, CapacitySchedule) else None


def device_switch(value: bool | str, device: torch.device) -> bool:
    """A train-section device switch (true, false or `auto`) on `device`: `auto` is on with
    CUDA, off elsewhere."""
    if value == "auto":
        return device.type == "cuda"
    return bool(value)


BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
"""CPU features whose bfloat16 kernels oneDNN runs natively (AMX tiles, AVX512-BF16 dot
products); without them a bfloat16 convolution is emulated and slower than float32."""


def _cpu_flags() -> set[str]:
    """The CPU's feature flags: torch's own detection (torch.cpu.get_capabilities, oneDNN's
    cpuinfo) where this torch has it, else the `flags` line of /proc/cpuinfo (Linux)."""
    get_capabilities = getattr(torch.cpu, "get_capabilities", None)
    if get_capabilities is not None:
        try:
            return {name for name, value in get_capabilities().items() if value is True}
        except Exception:  # an unexpected answer: fall back to the kernel's list
            pass
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


@functools.cache
def cpu_bf16_feature() -> str | None:
    """The CPU feature that gives this process fast bfloat16 convolutions (`amx_bf16` or
    `avx512_bf16`, the first of BF16_CPU_FLAGS present), or None: no such feature, or a torch
    built without oneDNN (mkldnn)."""
    if not torch.backends.mkldnn.is_available():
        return None
    flags = _cpu_flags()
    return next((flag for flag in BF16_CPU_FLAGS if flag in flags), None)


@dataclass(frozen=True)
class Precision:
    """What the networks of a run compute in, as resolved from `train.autocast` and
    `train.channels_last` on the run's device: bfloat16 autocast or float32, and the memory
    format of the convolution weights and activations (NCHW or channels_last, NHWC)."""

    autocast_bf16: bool
    channels_last: bool

    @property
    def dtype_name(self) -> str:
        return "bf16" if self.autocast_bf16 else "fp32"

    @property
    def memory_format_name(self) -> str:
        return "channels_last" if self.channels_last else "contiguous"

    def describe(self) -> str:
        """`bf16 autocast, channels_last` or `fp32, contiguous`, for the progress output."""
        dtype = "bf16 autocast" if self.autocast_bf16 else "fp32"
        return f"{dtype}, {self.memory_format_name}"


def resolve_precision(train: TrainConfig, device: torch.device) -> Precision:
    """The precision a run with `train` uses on `device`. `autocast: auto` is bf16 on a CPU
    with a bfloat16 feature (cpu_bf16_feature) and fp32 elsewhere, CUDA included;
    `channels_last: auto` follows it on CPU (oneDNN's bf16 kernels are fastest in NHWC, its
    fp32 ones in NCHW for these layers) and is off on CUDA. `none` / false force fp32 / NCHW."""
    device = torch.device(device)
    on_cpu = device.type == "cpu"
    if train.autocast == "auto":
        bf16 = on_cpu and cpu_bf16_feature() is not None
    else:
        bf16 = train.autocast == "bf16"
    if train.channels_last == "auto":
        channels_last = on_cpu and bf16
    else:
        channels_last = bool(train.channels_last)
    return Precision(autocast_bf16=bf16, channels_last=channels_last)


def apply_memory_format(model: torch.nn.Module, precision: Precision) -> None:
    """Convert the 4-D parameters (convolution kernels) of `model` to channels_last in place
    when `precision` asks for it; a no-op otherwise and on a model already converted. Call it
    before DDP wraps the model (DDP lays its gradient buckets out after the parameters). The
    parameter objects stay the same, so an optimizer built before keeps working, and a
    checkpoint's tensors load into a model of either format."""
    if precision.channels_last:
        model.to(memory_format=torch.channels_last)


def compile_networks(model: CascadeVAE, mode: str) -> None:
    """torch.compile the forward of the encoder and of the decoder in place: the modules and
    their parameter names, and so checkpoints and DDP, stay those of the eager model. (With
    torch 2.13, nn.Module.compile leaves these Sequential modules uncompiled: Dynamo skips
    the frame of Module._call_impl.) mode: a torch.compile mode; `default` is torch's default."""
    options = {} if mode == "default" else {"mode": mode}
    for network in (model.encoder, model.decoder):
        network.forward = torch.compile(network.forward, **options)  # type: ignore[method-assign]


def build_optimizer(config: Config, model: torch.nn.Module):
    return make_optimizer(model, config.optim)


def evaluation_kwargs(config: Config) -> dict[str, Any]:
    """Keywords of trainer.eval.evaluate_model: the run's seed and every eval setting."""
    return {"seed": config.seed, **config.eval.model_dump()}
