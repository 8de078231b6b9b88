"""One training step as a plain function (no Ray, no torch.distributed): the single-process
baseline and the body of every distributed worker.

A CascadeVAE step: encode and sample z (one encoder pass); in the discrete stage, compute the
unary matrix of that z and ask the injected chooser for the codes; decode through the (possibly
DDP-wrapped) model, which is the step's one DDP forward; loss, backward, optimizer.

The step's metrics are read on the host (a dict of floats, the loss checked before the update)
or, with `metrics_on_device`, left on the device as a StepMetrics (trainer.core.scalars) for the
interval meter to sum; host tensors reach a CUDA device through pinned, non-blocking copies.

Shape legend:
    B  batch size (per process)
    M  continuous latent dims
    K  discrete categories
    S  true shapes (dSprites: 3)
    H, W  image height and width
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainer.core.agreement import joint_counts, joint_key
from trainer.core.losses import (
    cascade_loss,
    cascade_terms,
    code_counts,
    count_keys,
    jointvae_loss,
    jointvae_terms,
)
from trainer.core.model import CascadeVAE, JointVAE
from trainer.core.scalars import StepMetrics
from trainer.core.schedule import CascadeSchedule
from trainer.core.types import JointVAEOutput, VAEOutput
from trainer.core.unary import unary_matrix
from trainer.errors import PicklableError

NUM_SHAPES = 3  # dSprites: square, ellipse, heart


class NonFiniteLossError(PicklableError, FloatingPointError):
    """The loss of a step is NaN or inf. With the metrics read every step it is raised before
    the backward pass, so the weights are still those of the previous step and no checkpoint of
    a NaN model can follow.

    With the metrics on the device (train.metrics_on_device) the check runs where the log
    interval is read; `stopped_at` is then the step count of that interval end, which comes
    before its report and checkpoint, so a model updated with that loss is never saved."""

    def __init__(self, step: int, metrics: dict[str, float], stopped_at: int | None = None):
        self.step = step
        self.metrics = dict(metrics)
        self.stopped_at = stopped_at
        self.non_finite = {k: v for k, v in metrics.items() if not math.isfinite(v)}
        terms = ", ".join(f"{k}={v}" for k, v in self.non_finite.items())
        if stopped_at is None:
            where = "training stopped before the weights were updated"
        else:
            where = (
                f"training stopped at the end of the log interval ({stopped_at} steps done), "
                "before any report or checkpoint of it"
            )
        super().__init__(f"iteration {step}: the loss is not finite ({terms}); {where}")


def check_finite_loss(step: int, metrics: dict[str, float]) -> None:
    """Raise NonFiniteLossError when `metrics["loss/total"]` is NaN or inf."""
    if not math.isfinite(metrics["loss/total"]):
        raise NonFiniteLossError(step, metrics)


def sample_eps(
    generator: torch.Generator, batch_size: int, num_continuous: int, device: torch.device | str
) -> Tensor:
    """(B, M) float32 standard normal noise, drawn on CPU from `generator` (so a seed gives the
    same eps on any device) and then moved to `device`."""
    eps_BM = torch.randn(batch_size, num_continuous, generator=generator, dtype=torch.float32)
    return host_to_device(eps_BM, device)


def host_to_device(tensor: Tensor, device: torch.device | str) -> Tensor:
    """A host tensor on `device` without waiting for the device: to CUDA through pinned memory
    with a non-blocking copy (a plain copy from pageable memory synchronises the stream)."""
    device = torch.device(device)
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def bf16_autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on `device` when enabled (convolutions and matrix products in bf16)."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def joint_table(codes_B: Tensor, shapes_B: Tensor, num_categories: int, num_shapes: int) -> Tensor:
    """(K * S,) float32 counts of (code, shape) pairs, row-major over (k, s), computed on the
    codes' device without a host read."""
    codes_BK = (codes_B.unsqueeze(1) == torch.arange(num_categories, device=codes_B.device)).float()
    shapes_BS = (shapes_B.unsqueeze(1) == torch.arange(num_shapes, device=codes_B.device)).float()
    return (codes_BK.T @ shapes_BS).flatten()


def joint_names(num_categories: int, num_shapes: int) -> list[str]:
    """The keys of joint_table's entries, in its order."""
    return [joint_key(k, s) for k in range(num_categories) for s in range(num_shapes)]


Shapes = np.ndarray | Tensor
"""The true shape of each image of a batch, (B,) int64, on the host or on the device."""


def _on_host(shapes_B: Shapes) -> np.ndarray:
    return shapes_B.cpu().numpy() if isinstance(shapes_B, Tensor) else np.asarray(shapes_B)


def _device_metrics(
    names: list[str],
    values: Tensor,
    host: dict[str, float],
    codes_B: Tensor | None,
    shapes_B: Shapes | None,
    num_categories: int,
) -> StepMetrics:
    """The step's StepMetrics with its device vector: the loss terms, then the code counts and
    the (code, shape) table when there are codes (and shapes)."""
    parts, all_names = [values], list(names)
    if codes_B is not None and num_categories > 0:
        parts.append(code_counts(codes_B, num_categories))
        all_names += count_keys(num_categories)
        if shapes_B is not None:
            shapes_dev_B = torch.as_tensor(shapes_B)
            shapes_dev_B = host_to_device(shapes_dev_B, codes_B.device)
            parts.append(joint_table(codes_B, shapes_dev_B, num_categories, NUM_SHAPES))
            all_names += joint_names(num_categories, NUM_SHAPES)
    return StepMetrics(host, tuple(all_names), torch.cat(parts))


STEP_KEYS = ("lr", "discrete/active")
"""Keys train_step adds to its loss's metrics (besides the codes/joint_* counts with shapes)."""


def check_codes(codes_B: Tensor, x_B1HW: Tensor, num_categories: int) -> Tensor:
    """A chooser's answer validated and moved to x's device as int64: shape (B,), integer, in
    [0, K). Adds no host read: host codes are checked before they move, device codes on the
    device."""
    batch = x_B1HW.shape[0]
    if not isinstance(codes_B, Tensor) or codes_B.shape != (batch,):
        raise ValueError(f"choose_codes must return a tensor of shape ({batch},)")
    if codes_B.is_floating_point() or codes_B.is_complex() or codes_B.dtype == torch.bool:
        raise ValueError(f"choose_codes must return integer codes, got {codes_B.dtype}")
    in_range = f"codes must lie in [0, {num_categories})"
    if codes_B.device.type == "cpu":  # checked on the host, before the copy
        if batch and (codes_B.min() < 0 or codes_B.max() >= num_categories):
            raise ValueError(in_range)
        return host_to_device(codes_B.to(torch.int64), x_B1HW.device)
    # Codes already on an accelerator are checked there by an asynchronous device assertion:
    # no host read (a failure surfaces at the next synchronisation as a device-side assert).
    codes_B = codes_B.to(device=x_B1HW.device, dtype=torch.int64)
    if batch:
        torch._assert_async(((codes_B >= 0) & (codes_B < num_categories)).all(), in_range)
    return codes_B


def unwrap(model: nn.Module) -> CascadeVAE:
    """The CascadeVAE inside a DistributedDataParallel wrapper (or the model itself)."""
    inner = model.module if hasattr(model, "module") else model
    if not isinstance(inner, CascadeVAE):
        raise TypeError(f"expected a CascadeVAE or a wrapper of one, got {type(inner).__name__}")
    return inner


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    images_B1HW: Tensor,
    *,
    iteration: int,
    schedule: CascadeSchedule,
    eps_generator: torch.Generator,
    choose_codes: Callable[[Tensor], Tensor] | None = None,
    weight_penalty_coef: float = 4e-5,
    shapes_B: Shapes | None = None,
    capacities: CapacitySchedule | None = None,
    metrics_on_device: bool = False,
    autocast_bf16: bool = False,
) -> MutableMapping[str, float]:
    """One gradient step at `iteration`; returns cascade_loss's flat metrics plus `lr` (the lr
    this step used) and `discrete/active` (0.0 or 1.0): a dict of floats, or with
    `metrics_on_device` a StepMetrics whose loss terms and counts stay unread on the device
    (trainer.core.scalars; the same numbers once read).

    model is a CascadeVAE or a DistributedDataParallel around one. One encoder pass gives z;
    when the schedule's discrete stage is on and the model has categories, choose_codes maps the
    unary matrix of that z (B, K, no grad) to the codes (B,); then the wrapped model's one
    forward decodes (z, one-hot codes). weight_penalty_coef = 0 switches the L2 penalty
    off. A JointVAE model trains its own objective instead (`capacities` needed; the schedule
    then only checks the latent size). shapes_B (optional, the true shape of each image) adds
    the (code, shape) contingency counts `codes/joint_k{k}_s{s}` of this step's codes
    (trainer.core.agreement).

    `autocast_bf16` runs the encoder, the unary matrix's decoder pass and the decoder under
    bfloat16 autocast; the reconstruction and KL terms, the loss and the unary matrix are
    computed in float32 (trainer.core.losses).

    Metrics read on the host: a NaN or infinite loss raises NonFiniteLossError (naming the
    iteration and the non-finite terms) before the backward pass, leaving model and optimizer
    untouched. Metrics on the device: nothing is read here (the loss is checked where the
    interval is read, trainer.observe.progress.IntervalMeter); the one host round trip of the
    step is choose_codes' (the unary matrix out, the codes back).
    """
    vae = unwrap(model)
    if weight_penalty_coef < 0:
        raise ValueError(f"weight_penalty_coef must be >= 0, got {weight_penalty_coef}")
    if schedule.num_continuous != vae.num_continuous:
        raise ValueError(
            f"schedule.num_continuous ({schedule.num_continuous}) != the model's "
            f"num_continuous ({vae.num_continuous})"
        )
    discrete = schedule.discrete_active(iteration) and vae.num_categories > 0
    if discrete and choose_codes is None:
        # Silently decoding with zeros here would train the wrong objective.
        raise ValueError(f"iteration {iteration} is in the discrete stage: choose_codes needed")

    if isinstance(vae, JointVAE):
        return _jointvae_step(
            model, vae, optimizer, scheduler, images_B1HW, iteration, eps_generator,
            weight_penalty_coef, shapes_B, capacities, metrics_on_device, autocast_bf16,
        )  # fmt: skip
    device = images_B1HW.device
    eps_BM = sample_eps(eps_generator, images_B1HW.shape[0], vae.num_continuous, device)
    betas_host_M = torch.as_tensor(schedule.betas(iteration), dtype=eps_BM.dtype)
    betas_M = host_to_device(betas_host_M, device)
    lr = optimizer.param_groups[0]["lr"]

    model.train()
    with bf16_autocast(device, autocast_bf16):
        mu_BM, sigma_BM, z_BM = vae.encode_sample(images_B1HW, eps_BM)
        codes_B = unary_BK = d_BK = None  # d = zeros: the discrete code is not learned yet
        if discrete:
            assert choose_codes is not None
            unary_BK = unary_matrix(vae, z_BM.detach(), images_B1HW)  # float32 (B, K)
            codes_B = check_codes(choose_codes(unary_BK), images_B1HW, vae.num_categories)
            d_BK = F.one_hot(codes_B, vae.num_categories).to(z_BM.dtype)
        logits_B1HW = model(z_BM, d_BK)
    out = VAEOutput(mu_BM, sigma_BM, z_BM, logits_B1HW, codes_B, unary_BK)
    penalty = weight_penalty_coef * vae.weight_penalty() if weight_penalty_coef > 0 else None
    host_metrics: dict[str, float] = {}
    if metrics_on_device:
        loss, names, values = cascade_terms(out, images_B1HW, betas_M, penalty)
    else:
        loss, host_metrics = cascade_loss(out, images_B1HW, betas_M, penalty, vae.num_categories)
        check_finite_loss(iteration, host_metrics)  # the loss is a float already: no extra sync

    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()

    step_keys = {"lr": float(lr), "discrete/active": 1.0 if discrete else 0.0}
    if metrics_on_device:
        return _device_metrics(names, values, step_keys, codes_B, shapes_B, vae.num_categories)
    if shapes_B is not None and out.codes_B is not None:
        host_metrics.update(
            joint_counts(
                out.codes_B.cpu().numpy(), _on_host(shapes_B), vae.num_categories, NUM_SHAPES
            )
        )
    host_metrics.update(step_keys)
    return host_metrics


@dataclass(frozen=True)
class CapacitySchedule:
    """JointVAE's controlled capacities (Dupont 2018): both rise linearly from 0 to their
    maximum over `steps` iterations; gamma weighs both |KL - C| terms."""

    gamma: float = 150.0
    continuous: float = 40.0
    discrete: float = 1.1
    steps: int = 300_000


def _jointvae_step(
    model: nn.Module,
    vae: JointVAE,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    images_B1HW: Tensor,
    iteration: int,
    eps_generator: torch.Generator,
    weight_penalty_coef: float,
    shapes_B: Shapes | None,
    capacities: CapacitySchedule | None,
    metrics_on_device: bool,
    autocast_bf16: bool,
) -> MutableMapping[str, float]:
    """One JointVAE gradient step; metrics as jointvae_loss plus lr and discrete/active (1),
    read or left on the device as in train_step."""
    if capacities is None:
        raise ValueError("a JointVAE step needs its capacities (CapacitySchedule)")
    device = images_B1HW.device
    batch = images_B1HW.shape[0]
    eps_BM = sample_eps(eps_generator, batch, vae.num_continuous, device)
    uniform_host_BK = torch.rand(batch, vae.num_categories, generator=eps_generator)
    uniform_BK = host_to_device(uniform_host_BK, device)
    lr = optimizer.param_groups[0]["lr"]

    model.train()
    with bf16_autocast(device, autocast_bf16):
        mu_BM, sigma_BM, alpha_BK = vae.encode_all(images_B1HW)
        z_BM = mu_BM + sigma_BM * eps_BM
        c_BK = vae.relaxed_code(alpha_BK, uniform_BK)
        out = JointVAEOutput(mu_BM, sigma_BM, z_BM, alpha_BK, c_BK, model(z_BM, c_BK))
    penalty = weight_penalty_coef * vae.weight_penalty() if weight_penalty_coef > 0 else None
    objective: dict[str, Any] = {
        "iteration": iteration,
        "gamma": capacities.gamma,
        "continuous_capacity": capacities.continuous,
        "discrete_capacity": capacities.discrete,
        "capacity_steps": capacities.steps,
        "weight_penalty": penalty,
    }
    if metrics_on_device:
        loss, names, values, capacity_now = jointvae_terms(out, images_B1HW, **objective)
    else:
        loss, metrics = jointvae_loss(out, images_B1HW, **objective)
        check_finite_loss(iteration, metrics)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()

    if metrics_on_device:
        host = {**capacity_now, "lr": float(lr), "discrete/active": 1.0}
        codes_dev_B = out.alpha_BK.detach().argmax(dim=1)
        return _device_metrics(names, values, host, codes_dev_B, shapes_B, vae.num_categories)
    if shapes_B is not None:
        codes_B = out.alpha_BK.detach().argmax(dim=1).cpu().numpy()
        metrics.update(joint_counts(codes_B, _on_host(shapes_B), vae.num_categories, NUM_SHAPES))
    metrics["lr"] = float(lr)
    metrics["discrete/active"] = 1.0
    return metrics
