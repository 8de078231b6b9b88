"""The CascadeVAE objective: per-sample reconstruction, per-dimension KL, weighted total.

Shape legend:
    B  batch size
    M  continuous latent dims
    K  discrete categories
    H, W  image height and width
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from trainer.core.types import JointVAEOutput, VAEOutput

# Inside the log of the KL term, as the authors (keeps log finite if sigma underflows to 0).
KL_LOG_EPS = 1e-8


def reconstruction_per_sample(logits_B1HW: Tensor, x_B1HW: Tensor) -> Tensor:
    """(B,) sigmoid cross-entropy of x under Bernoulli(sigmoid(logits)), summed over pixels."""
    ce_B1HW = F.binary_cross_entropy_with_logits(logits_B1HW, x_B1HW, reduction="none")
    return ce_B1HW.flatten(start_dim=1).sum(dim=1)


def kl_per_dim(mu_BM: Tensor, sigma_BM: Tensor) -> Tensor:
    """(M,) batch mean of KL(N(mu, sigma^2) || N(0, 1)) per latent dimension:
    0.5 * (mu^2 + sigma^2 - 2 log(sigma + 1e-8) - 1)."""
    kl_BM = 0.5 * (mu_BM.pow(2) + sigma_BM.pow(2) - 2.0 * torch.log(sigma_BM + KL_LOG_EPS) - 1.0)
    return kl_BM.mean(dim=0)


def cascade_loss(
    out: VAEOutput,
    x_B1HW: Tensor,
    betas_M: Tensor,
    weight_penalty: Tensor | None,
    num_categories: int,
) -> tuple[Tensor, dict[str, float]]:
    """loss = mean_i rec_i + sum_j beta_j KL_j + weight_penalty (already scaled; None = off).

    Returns the scalar loss and one flat dict of python floats: `loss/total`, `loss/recon`,
    `loss/kl` (the beta-weighted KL sum), `loss/weight_penalty`, `kl/z{j}` (unweighted KL_j),
    `beta/z{j}`, and `codes/count_{k}` for k < num_categories when out.codes_B is not None.
    """
    betas_M = torch.as_tensor(betas_M, dtype=out.mu_BM.dtype, device=out.mu_BM.device)
    if betas_M.shape != out.mu_BM.shape[1:]:
        raise ValueError(f"betas_M must have shape {tuple(out.mu_BM.shape[1:])}")

    recon = reconstruction_per_sample(out.logits_B1HW, x_B1HW).mean()
    kl_M = kl_per_dim(out.mu_BM, out.sigma_BM)
    weighted_kl = (betas_M * kl_M).sum()
    penalty = weight_penalty if weight_penalty is not None else recon.new_zeros(())
    loss = recon + weighted_kl + penalty

    # One device -> host copy for every logged number.
    values = torch.cat([torch.stack([loss, recon, weighted_kl, penalty]), kl_M, betas_M])
    names = _cascade_names(kl_M.shape[0])
    metrics = dict(zip(names, values.detach().cpu().tolist(), strict=True))
    if out.codes_B is not None and num_categories > 0:
        counts_K = torch.bincount(out.codes_B.detach().cpu(), minlength=num_categories)
        metrics.update({f"codes/count_{k}": float(counts_K[k]) for k in range(num_categories)})
    return loss, metrics


def _cascade_names(num_continuous: int) -> list[str]:
    names = ["loss/total", "loss/recon", "loss/kl", "loss/weight_penalty"]
    return (
        names
        + [f"kl/z{j}" for j in range(num_continuous)]
        + [f"beta/z{j}" for j in range(num_continuous)]
    )


def _jointvae_names(num_continuous: int) -> list[str]:
    names = ["loss/total", "loss/recon", "loss/kl", "loss/weight_penalty", "kl/c"]
    return names + [f"kl/z{j}" for j in range(num_continuous)]


def count_keys(num_categories: int) -> list[str]:
    return [f"codes/count_{k}" for k in range(num_categories)]


def loss_keys(num_continuous: int, num_categories: int, jointvae: bool) -> set[str]:
    """Every key `cascade_loss` (or, with `jointvae`, `jointvae_loss`) can return."""
    if jointvae:
        names = _jointvae_names(num_continuous) + ["capacity/z", "capacity/c"]
    else:
        names = _cascade_names(num_continuous)
    return set(names) | set(count_keys(num_categories))


def categorical_kl_uniform(alpha_BK: Tensor) -> Tensor:
    """Batch mean of KL(q(c|x) || uniform over K) = sum_k q log q + log K, a scalar (nats)."""
    log_q_BK = torch.log_softmax(alpha_BK, dim=1)
    kl_B = (log_q_BK.exp() * log_q_BK).sum(dim=1) + math.log(alpha_BK.shape[1])
    return kl_B.mean()


def capacity(max_nats: float, iteration: int, ramp_steps: int) -> float:
    """JointVAE's controlled capacity: 0 at iteration 0 rising linearly to max_nats at
    ramp_steps, then held."""
    return max_nats * min(1.0, iteration / max(ramp_steps, 1))


def jointvae_loss(
    out: JointVAEOutput,
    x_B1HW: Tensor,
    *,
    iteration: int,
    gamma: float,
    continuous_capacity: float,
    discrete_capacity: float,
    capacity_steps: int,
    weight_penalty: Tensor | None,
) -> tuple[Tensor, dict[str, float]]:
    """JointVAE objective (Dupont 2018, eq. 7):
    mean_i rec_i + gamma |KL_z - C_z(t)| + gamma |KL_c - C_c(t)| (+ weight penalty), with KL_z
    the sum over dims of the batch-mean Gaussian KL, KL_c the categorical KL to the uniform
    prior, and C_c capped at log K (the most a K-way code can carry), as Dupont does.

    Metrics: loss/total, loss/recon, loss/kl (the two capacity terms), loss/weight_penalty,
    kl/z{j}, kl/c, capacity/z, capacity/c, and codes/count_{k} of argmax q(c|x).
    """
    num_categories = out.alpha_BK.shape[1]
    c_z = capacity(continuous_capacity, iteration, capacity_steps)
    c_c = min(capacity(discrete_capacity, iteration, capacity_steps), math.log(num_categories))
    recon = reconstruction_per_sample(out.logits_B1HW, x_B1HW).mean()
    kl_M = kl_per_dim(out.mu_BM, out.sigma_BM)
    kl_c = categorical_kl_uniform(out.alpha_BK)
    capacity_terms = gamma * ((kl_M.sum() - c_z).abs() + (kl_c - c_c).abs())
    penalty = weight_penalty if weight_penalty is not None else recon.new_zeros(())
    loss = recon + capacity_terms + penalty

    values = torch.cat([torch.stack([loss, recon, capacity_terms, penalty, kl_c]), kl_M])
    names = _jointvae_names(kl_M.shape[0])
    metrics = dict(zip(names, values.detach().cpu().tolist(), strict=True))
    metrics["capacity/z"], metrics["capacity/c"] = c_z, c_c
    counts_K = torch.bincount(out.alpha_BK.detach().argmax(dim=1).cpu(), minlength=num_categories)
    metrics.update({f"codes/count_{k}": float(counts_K[k]) for k in range(num_categories)})
    return loss, metrics
