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


def widen(tensor: Tensor) -> Tensor:
    """A 16-bit float tensor (from autocast) as float32; any other tensor as it is."""
    return tensor.float() if tensor.dtype in (torch.bfloat16, torch.float16) else tensor


def reconstruction_per_sample(logits_B1HW: Tensor, x_B1HW: Tensor) -> Tensor:
    """(B,) sigmoid cross-entropy of x under Bernoulli(sigmoid(logits)), summed over
    pixels. bfloat16 logits (autocast) are widened first: the sum of 4096 pixel terms, and the
    differences between categories the unary matrix compares, need float32's 24-bit mantissa
    (bfloat16 keeps 8 bits, under 3 significant digits)."""
    logits_B1HW = widen(logits_B1HW)
    ce_B1HW = F.binary_cross_entropy_with_logits(
        logits_B1HW, x_B1HW.to(logits_B1HW.dtype), reduction="none"
    )
    return ce_B1HW.flatten(start_dim=1).sum(dim=1)


def kl_per_dim(mu_BM: Tensor, sigma_BM: Tensor) -> Tensor:
    """(M,) batch mean of KL(N(mu, sigma^2) || N(0, 1)) per latent dimension:
    0.5 * (mu^2 + sigma^2 - 2 log(sigma + 1e-8) - 1)."""
    kl_BM = 0.5 * (mu_BM.pow(2) + sigma_BM.pow(2) - 2.0 * torch.log(sigma_BM + KL_LOG_EPS) - 1.0)
    return kl_BM.mean(dim=0)


def cascade_terms(
    out: VAEOutput, x_B1HW: Tensor, betas_M: Tensor, weight_penalty: Tensor | None
) -> tuple[Tensor, list[str], Tensor]:
    """loss = mean_i rec_i + sum_j beta_j KL_j + weight_penalty (already scaled; None = off),
    and its terms left on the device: (loss, names, values) with values a float32 vector
    (len(names),) of `loss/total`, `loss/recon`, `loss/kl` (the beta-weighted KL sum),
    `loss/weight_penalty`, `kl/z{j}` (unweighted KL_j) and `beta/z{j}`. mu and sigma enter in
    float32 (under autocast they arrive in bfloat16)."""
    mu_BM, sigma_BM = widen(out.mu_BM), widen(out.sigma_BM)
    betas_M = torch.as_tensor(betas_M, dtype=mu_BM.dtype, device=mu_BM.device)
    if betas_M.shape != mu_BM.shape[1:]:
        raise ValueError(f"betas_M must have shape {tuple(mu_BM.shape[1:])}")

    recon = reconstruction_per_sample(out.logits_B1HW, x_B1HW).mean()
    kl_M = kl_per_dim(mu_BM, sigma_BM)
    weighted_kl = (betas_M * kl_M).sum()
    penalty = weight_penalty if weight_penalty is not None else recon.new_zeros(())
    loss = recon + weighted_kl + penalty
    values = torch.cat([torch.stack([loss, recon, weighted_kl, penalty]), kl_M, betas_M])
    return loss, _cascade_names(kl_M.shape[0]), values.detach()


def cascade_loss(
    out: VAEOutput,
    x_B1HW: Tensor,
    betas_M: Tensor,
    weight_penalty: Tensor | None,
    num_categories: int,
) -> tuple[Tensor, dict[str, float]]:
    """cascade_terms' loss and its terms as one flat dict of python floats, plus
    `codes/count_{k}` for k < num_categories when out.codes_B is not None."""
    loss, names, values = cascade_terms(out, x_B1HW, betas_M, weight_penalty)
    # One device -> host copy for every logged number.
    metrics = dict(zip(names, values.cpu().tolist(), strict=True))
    if out.codes_B is not None and num_categories > 0:
        counts_K = torch.bincount(out.codes_B.detach().cpu(), minlength=num_categories)
        metrics.update({f"codes/count_{k}": float(counts_K[k]) for k in range(num_categories)})
    return loss, metrics


def code_counts(codes_B: Tensor, num_categories: int) -> Tensor:
    """(K,) float32 number of items with each code, computed where codes_B lies without a host
    read (torch.bincount on CUDA reads the maximum first)."""
    categories_K = torch.arange(num_categories, device=codes_B.device)
    return (codes_B.unsqueeze(1) == categories_K).sum(dim=0).to(torch.float32)


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


def jointvae_terms(
    out: JointVAEOutput,
    x_B1HW: Tensor,
    *,
    iteration: int,
    gamma: float,
    continuous_capacity: float,
    discrete_capacity: float,
    capacity_steps: int,
    weight_penalty: Tensor | None,
) -> tuple[Tensor, list[str], Tensor, dict[str, float]]:
    """JointVAE objective (Dupont 2018, eq. 7):
    mean_i rec_i + gamma |KL_z - C_z(t)| + gamma |KL_c - C_c(t)| (+ weight penalty), with KL_z
    the sum over dims of the batch-mean Gaussian KL, KL_c the categorical KL to the uniform
    prior, and C_c capped at log K (the most a K-way code can carry), as Dupont does.

    Returns (loss, names, values, capacities): values the float32 device vector of loss/total,
    loss/recon, loss/kl (the two capacity terms), loss/weight_penalty, kl/c and kl/z{j};
    capacities the host floats capacity/z and capacity/c.
    """
    num_categories = out.alpha_BK.shape[1]
    c_z = capacity(continuous_capacity, iteration, capacity_steps)
    c_c = min(capacity(discrete_capacity, iteration, capacity_steps), math.log(num_categories))
    recon = reconstruction_per_sample(out.logits_B1HW, x_B1HW).mean()
    kl_M = kl_per_dim(widen(out.mu_BM), widen(out.sigma_BM))
    kl_c = categorical_kl_uniform(widen(out.alpha_BK))
    capacity_terms = gamma * ((kl_M.sum() - c_z).abs() + (kl_c - c_c).abs())
    penalty = weight_penalty if weight_penalty is not None else recon.new_zeros(())
    loss = recon + capacity_terms + penalty

    values = torch.cat([torch.stack([loss, recon, capacity_terms, penalty, kl_c]), kl_M])
    capacities = {"capacity/z": c_z, "capacity/c": c_c}
    return loss, _jointvae_names(kl_M.shape[0]), values.detach(), capacities


def jointvae_loss(out: JointVAEOutput, x_B1HW: Tensor, **kwargs) -> tuple[Tensor, dict[str, float]]:
    """jointvae_terms' loss and metrics as python floats (keywords as jointvae_terms), plus
    codes/count_{k} of argmax q(c|x)."""
    loss, names, values, capacities = jointvae_terms(out, x_B1HW, **kwargs)
    num_categories = out.alpha_BK.shape[1]
    metrics = dict(zip(names, values.cpu().tolist(), strict=True))
    metrics.update(capacities)
    counts_K = torch.bincount(out.alpha_BK.detach().argmax(dim=1).cpu(), minlength=num_categories)
    metrics.update({f"codes/count_{k}": float(counts_K[k]) for k in range(num_categories)})
    return loss, metrics
