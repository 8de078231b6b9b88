"""FactorVAE (Kim & Mnih, "Disentangling by Factorising", ICML 2018) on the CascadeVAE networks:
the VAE's ELBO (KL weight 1 on every continuous dim, no discrete code) plus gamma times an
estimate of the total correlation TC(z) = KL(q(z) || prod_j q(z_j)), read from a discriminator
D trained to tell samples of q(z) from samples of prod_j q(z_j).

The samples of prod_j q(z_j) are the batch's z with every dim permuted independently across the
batch (`permute_dims`). D gives two logits per sample, class 0 = "from q(z)"; with a softmax
over them, log D / (1 - D) is logit_0 - logit_1, so TC ~= mean over the batch of
logit_0 - logit_1 (`tc_estimate`). D minimises the cross-entropy of joint samples as class 0
and permuted samples as class 1 (`discriminator_loss`).

One batch per step: Kim & Mnih draw a second, independent batch for the permuted samples; this
implementation permutes the z of the step's own batch. Every variant then sees the same images
per step (the global batch and its order are a pure function of seed and step), and the
encoder runs once; the permuted rows still mix dims of different images, so they are samples of
the product of the batch's marginals. Under DDP each rank permutes its own shard.

The step: encode and sample z; decode; VAE loss = recon + KL + gamma * TC estimate, with D's
weights held fixed in that term (its gradient moves the encoder, not D); VAE update; then one D
update on the same z, detached, and its permutation.

Shape legend: B batch (per process), M continuous latent dims, L D's hidden units,
H, W image sides.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn
from torch.func import functional_call

from trainer.core.losses import cascade_terms, widen
from trainer.core.losses import loss_keys as _loss_keys
from trainer.core.model import CascadeVAE
from trainer.core.scalars import StepMetrics
from trainer.core.schedule import CascadeConfig, CascadeSchedule
from trainer.core.step import bf16_autocast, check_finite_loss, host_to_device, sample_eps, unwrap
from trainer.core.types import VAEOutput
from trainer.schema import Float, Schema
from trainer.variants.types import Extras, ModelSettings

DISCRIMINATOR = "discriminator"
"""The name of D and of its optimizer in the variant's Extras (and so in checkpoints)."""
TC_KEYS = ("loss/tc", "tc/estimate", "loss/discriminator", "discriminator/accuracy")
"""The step's keys besides the VAE's: gamma * TC estimate (the term in loss/total), the TC
estimate in nats, D's cross-entropy, and the share of joint and permuted samples D classes
right (before its update)."""


class FactorVAEConfig(Schema):
    """Settings of `model.variant: factorvae` (Kim & Mnih 2018; their dSprites values as
    defaults: Section 4 and Appendix A of the paper)."""

    gamma: Float = Field(35.0, ge=0)
    """Weight of the TC estimate (Kim & Mnih: 35 in their dSprites figures)."""
    discriminator_layers: int = Field(6, ge=1)
    """Hidden layers of D, an MLP (Kim & Mnih: 6)."""
    discriminator_units: int = Field(1000, ge=1)
    """Units per hidden layer (Kim & Mnih: 1000)."""
    leaky_slope: Float = Field(0.2, ge=0)
    """Negative slope of D's leaky ReLUs (Kim & Mnih: 0.2)."""
    discriminator_lr: Float = Field(1e-4, gt=0)
    """D's Adam learning rate, constant (Kim & Mnih: 1e-4)."""
    discriminator_beta1: Float = Field(0.5, ge=0, lt=1)
    """D's Adam beta1 (Kim & Mnih: 0.5)."""
    discriminator_beta2: Float = Field(0.9, ge=0, lt=1)
    """D's Adam beta2 (Kim & Mnih: 0.9)."""


class Discriminator(nn.Module):
    """D: z (B, M) -> two logits (B, 2), class 0 = a sample of q(z), class 1 = a sample of
    prod_j q(z_j). An MLP of `layers` hidden layers of `units` with leaky ReLUs; torch's default
    initialisation."""

    def __init__(
        self, num_continuous: int, layers: int = 6, units: int = 1000, leaky_slope: float = 0.2
    ) -> None:
        super().__init__()
        widths = [num_continuous] + [units] * layers
        hidden: list[nn.Module] = []
        for width_in, width_out in zip(widths[:-1], widths[1:], strict=True):
            hidden += [nn.Linear(width_in, width_out), nn.LeakyReLU(leaky_slope)]
        self.net = nn.Sequential(*hidden, nn.Linear(widths[-1], 2))

    def forward(self, z_BM: Tensor) -> Tensor:
        return self.net(z_BM)


def permutation_indices(generator: torch.Generator, batch: int, num_continuous: int) -> Tensor:
    """(B, M) int64 on the CPU: column j is a random permutation of 0..B-1, drawn from
    `generator`, independently for every column."""
    return torch.rand(batch, num_continuous, generator=generator).argsort(dim=0)


def permute_dims(z_BM: Tensor, order_BM: Tensor) -> Tensor:
    """z with column j reordered by order_BM[:, j]: every column keeps its values (the
    marginals), and rows mix dims of different samples (the joint is broken)."""
    return z_BM.gather(0, order_BM.to(z_BM.device))


def tc_estimate(logits_B2: Tensor) -> Tensor:
    """The density-ratio estimate of TC from D's logits on samples of q(z): the mean of
    logit_0 - logit_1 = log D(z) / (1 - D(z)), a scalar (nats)."""
    return (logits_B2[:, 0] - logits_B2[:, 1]).mean()


def discriminator_loss(joint_logits_B2: Tensor, permuted_logits_B2: Tensor) -> Tensor:
    """D's cross-entropy: joint samples are class 0, permuted ones class 1, each half weighing
    1/2 (Kim & Mnih, Algorithm 2)."""
    zeros = joint_logits_B2.new_zeros(joint_logits_B2.shape[0], dtype=torch.int64)
    ones = permuted_logits_B2.new_ones(permuted_logits_B2.shape[0], dtype=torch.int64)
    return 0.5 * (
        F.cross_entropy(joint_logits_B2, zeros) + F.cross_entropy(permuted_logits_B2, ones)
    )


class FactorVAERun(Protocol):
    """What these builders read of a run config (trainer.config.Config)."""

    @property
    def model(self) -> ModelSettings: ...
    @property
    def cascade(self) -> CascadeConfig: ...
    @property
    def factorvae(self) -> FactorVAEConfig: ...


def build_model(config: FactorVAERun) -> CascadeVAE:
    """The CascadeVAE encoder and decoder without a discrete code."""
    return CascadeVAE(num_continuous=config.model.num_continuous, num_categories=0)


def schedule(config: FactorVAERun) -> CascadeSchedule:
    """KL weight 1 on every continuous dim (the ELBO's), never a discrete stage."""
    cascade = config.cascade.model_copy(update={"beta_high": 1.0, "beta_low": 1.0})
    return CascadeSchedule(cascade, config.model.num_continuous, discrete_stage=False)


def build_extras(config: FactorVAERun, device: torch.device) -> Extras:
    """D on `device`, its Adam (constant learning rate), and gamma."""
    f = config.factorvae
    discriminator = Discriminator(
        config.model.num_continuous, f.discriminator_layers, f.discriminator_units, f.leaky_slope
    ).to(device)
    optimizer = torch.optim.Adam(
        discriminator.parameters(),
        lr=f.discriminator_lr,
        betas=(f.discriminator_beta1, f.discriminator_beta2),
    )
    return Extras(
        modules={DISCRIMINATOR: discriminator},
        optimizers={DISCRIMINATOR: optimizer},
        settings=f.gamma,
    )


def step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    images_B1HW: Tensor,
    *,
    iteration: int,
    schedule: CascadeSchedule,
    eps_generator: torch.Generator,
    extras: Extras,
    weight_penalty_coef: float = 0.0,
    metrics_on_device: bool = False,
    autocast_bf16: bool = False,
    choose_codes: Any = None,
    shapes_B: Any = None,
) -> MutableMapping[str, float]:
    """One FactorVAE step (VAE update, then D update); metrics as cascade_loss plus TC_KEYS,
    `lr` and `discrete/active` (0), read on the host or left on the device as in
    trainer.core.step.train_step. A NaN or infinite VAE loss read on the host raises
    NonFiniteLossError before either update. The noise eps and then the permutation are drawn
    from `eps_generator` (a resumed run redraws both). choose_codes and shapes_B are unused (no
    discrete code)."""
    vae = unwrap(model)
    d_model = extras.modules[DISCRIMINATOR]  # DDP-wrapped in a multi-worker run
    d_inner = extras.module(DISCRIMINATOR)
    d_optimizer = extras.optimizers[DISCRIMINATOR]
    gamma = float(extras.settings)
    device = images_B1HW.device
    batch = images_B1HW.shape[0]
    eps_BM = sample_eps(eps_generator, batch, vae.num_continuous, device)
    order_BM = permutation_indices(eps_generator, batch, vae.num_continuous)
    betas_M = host_to_device(torch.as_tensor(schedule.betas(iteration), dtype=eps_BM.dtype), device)
    lr = optimizer.param_groups[0]["lr"]

    model.train()
    d_model.train()
    with bf16_autocast(device, autocast_bf16):
        mu_BM, sigma_BM, z_BM = vae.encode_sample(images_B1HW, eps_BM)
        logits_B1HW = model(z_BM, None)
    z_BM = widen(z_BM)
    out = VAEOutput(mu_BM, sigma_BM, z_BM, logits_B1HW, None, None)
    penalty = weight_penalty_coef * vae.weight_penalty() if weight_penalty_coef > 0 else None
    vae_loss, names, values = cascade_terms(out, images_B1HW, betas_M, penalty)
    # D's weights enter the VAE's term as constants: its gradient reaches z, not D.
    frozen = {name: p.detach() for name, p in d_inner.named_parameters()}
    tc = tc_estimate(functional_call(d_inner, frozen, (z_BM,)))
    loss = vae_loss + gamma * tc
    values = torch.cat([loss.detach().reshape(1), values[1:], torch.stack([gamma * tc, tc])])
    host: dict[str, float] = {}
    if not metrics_on_device:
        host = dict(zip(names + list(TC_KEYS[:2]), values.cpu().tolist(), strict=True))
        check_finite_loss(iteration, host)

    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()

    joint_BM = z_BM.detach()
    permuted_BM = permute_dims(joint_BM, order_BM)
    logits_2B2 = d_model(torch.cat([joint_BM, permuted_BM]))  # one (DDP) forward for both
    d_loss = discriminator_loss(logits_2B2[:batch], logits_2B2[batch:])
    labels_2B = torch.cat([logits_2B2.new_zeros(batch), logits_2B2.new_ones(batch)])
    accuracy = (logits_2B2.detach().argmax(dim=1).to(labels_2B.dtype) == labels_2B).float().mean()
    d_optimizer.zero_grad(set_to_none=True)
    d_loss.backward()
    d_optimizer.step()

    d_values = torch.stack([d_loss.detach(), accuracy])
    step_keys = {"lr": float(lr), "discrete/active": 0.0}
    if metrics_on_device:
        all_names = tuple(names) + TC_KEYS
        return StepMetrics(step_keys, all_names, torch.cat([values, d_values]))
    host.update(zip(TC_KEYS[2:], d_values.cpu().tolist(), strict=True))
    host.update(step_keys)
    return host


def loss_keys(num_continuous: int, num_categories: int) -> set[str]:
    return _loss_keys(num_continuous, 0, jointvae=False) | set(TC_KEYS)
