"""Known answers for the objective: every expected number below was worked out by hand.

Shape legend: B batch, M continuous dims, K categories, H/W image sides.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trainer.core.losses import cascade_loss, kl_per_dim, reconstruction_per_sample
from trainer.core.types import VAEOutput

LN3 = math.log(3.0)


def _logits_and_images() -> tuple[torch.Tensor, torch.Tensor]:
    """Two 1x2x2 'images'. Sample 0: moderate logits; sample 1: saturated logits."""
    logits_B1HW = torch.tensor(
        [[[[0.0, LN3], [-LN3, 2.0]]], [[[100.0, -100.0], [100.0, -100.0]]]], dtype=torch.float64
    )
    x_B1HW = torch.tensor(
        [[[[1.0, 1.0], [0.0, 0.0]]], [[[1.0, 1.0], [0.0, 0.0]]]], dtype=torch.float64
    )
    return logits_B1HW, x_B1HW


def test_reconstruction_hand_values():
    # CE(x=1, l) = log(1 + e^-l), CE(x=0, l) = log(1 + e^l).
    # Sample 0: ln 2 + ln(4/3) + ln(4/3) + ln(1 + e^2)
    #         = 0.6931472 + 0.2876821 + 0.2876821 + 2.1269280 = 3.3954393
    # Sample 1: ~0 + 100 + 100 + ~0 = 200 (must not overflow at |logit| = 100).
    logits_B1HW, x_B1HW = _logits_and_images()
    rec_B = reconstruction_per_sample(logits_B1HW, x_B1HW)
    assert rec_B.shape == (2,)
    torch.testing.assert_close(rec_B, torch.tensor([3.3954393365, 200.0], dtype=torch.float64))


def test_reconstruction_of_zero_logits_is_pixels_times_ln2():
    # sigmoid(0) = 1/2 whatever the pixel: 64 * 64 * ln 2 = 2839.1308516 per image.
    x_B1HW = (torch.rand(3, 1, 64, 64, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    rec_B = reconstruction_per_sample(torch.zeros_like(x_B1HW), x_B1HW)
    torch.testing.assert_close(rec_B, torch.full((3,), 2839.1308516))


def _mu_sigma() -> tuple[torch.Tensor, torch.Tensor]:
    mu_BM = torch.tensor([[0.0, 1.0], [2.0, 0.0]], dtype=torch.float64)
    sigma_BM = torch.tensor([[1.0, 1.0], [0.5, 2.0]], dtype=torch.float64)
    return mu_BM, sigma_BM


def test_kl_per_dim_hand_values():
    # 0.5 * (mu^2 + sigma^2 - 2 ln sigma - 1):
    #   (0, 1) -> 0;  (1, 1) -> 0.5;  (2, 0.5) -> 0.5 * (4.25 + 1.3862944 - 1) = 2.3181472;
    #   (0, 2) -> 0.5 * (4 - 1.3862944 - 1) = 0.8068528.
    # Batch means: dim 0 = (0 + 2.3181472) / 2 = 1.1590736; dim 1 = (0.5 + 0.8068528) / 2.
    # (The 1e-8 inside the log moves these by about 1e-8 only.)
    mu_BM, sigma_BM = _mu_sigma()
    kl_M = kl_per_dim(mu_BM, sigma_BM)
    assert kl_M.shape == (2,)
    torch.testing.assert_close(
        kl_M, torch.tensor([1.1590735903, 0.6534264097], dtype=torch.float64), atol=1e-7, rtol=0
    )


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_the_evaluations_kl_is_the_training_kl_on_arrays(dtype):
    from trainer.eval.statistics import mean_kl_per_dim

    mu_BM, sigma_BM = _mu_sigma()
    kl_M = mean_kl_per_dim(mu_BM.numpy().astype(dtype), sigma_BM.numpy().astype(dtype))
    assert isinstance(kl_M, np.ndarray) and kl_M.dtype == dtype
    np.testing.assert_allclose(kl_M, [1.1590735903, 0.6534264097], atol=1e-6, rtol=0)
    zero = np.zeros((1, 1), dtype=dtype)  # the same 1e-8 inside the log: finite at sigma 0
    np.testing.assert_allclose(mean_kl_per_dim(zero, zero), [17.9206807440], rtol=1e-6)


def test_kl_uses_the_log_epsilon():
    # sigma = 0: 0.5 * (0 + 0 - 2 ln(1e-8) - 1) = 0.5 * (36.8413615 - 1) = 17.9206807, finite.
    kl_M = kl_per_dim(
        torch.zeros(1, 1, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64)
    )
    torch.testing.assert_close(kl_M, torch.tensor([17.9206807440], dtype=torch.float64))


def _output(codes_B: torch.Tensor | None) -> tuple[VAEOutput, torch.Tensor]:
    logits_B1HW, x_B1HW = _logits_and_images()
    mu_BM, sigma_BM = _mu_sigma()
    out = VAEOutput(
        mu_BM=mu_BM.requires_grad_(),
        sigma_BM=sigma_BM,
        z_BM=mu_BM.detach(),
        logits_B1HW=logits_B1HW.requires_grad_(),
        codes_B=codes_B,
        unary_BK=None,
    )
    return out, x_B1HW


def test_cascade_loss_total_and_metrics():
    # recon = (3.3954393 + 200) / 2 = 101.6977197
    # kl    = 10 * 1.1590736 + 0.1 * 0.6534264 = 11.6560785
    # total = 101.6977197 + 11.6560785 + 0.25 = 113.6037982
    out, x_B1HW = _output(codes_B=torch.tensor([2, 2]))
    betas_M = torch.tensor([10.0, 0.1], dtype=torch.float64)
    penalty = torch.tensor(0.25, dtype=torch.float64)
    loss, metrics = cascade_loss(out, x_B1HW, betas_M, penalty, num_categories=3)

    assert loss.requires_grad and loss.shape == ()
    assert loss.item() == pytest.approx(113.6037982, abs=1e-6)
    expected = {
        "loss/total": 113.6037982,
        "loss/recon": 101.6977197,
        "loss/kl": 11.6560785,
        "loss/weight_penalty": 0.25,
        "kl/z0": 1.1590736,
        "kl/z1": 0.6534264,
        "beta/z0": 10.0,
        "beta/z1": 0.1,
        "codes/count_0": 0.0,
        "codes/count_1": 0.0,
        "codes/count_2": 2.0,
    }
    assert set(metrics) == set(expected)
    for key, value in expected.items():
        assert isinstance(metrics[key], float), key
        assert metrics[key] == pytest.approx(value, abs=1e-6), key


def test_cascade_loss_without_codes_or_penalty():
    out, x_B1HW = _output(codes_B=None)
    loss, metrics = cascade_loss(out, x_B1HW, torch.tensor([10.0, 0.1]), None, num_categories=3)
    assert not any(key.startswith("codes/") for key in metrics)
    assert metrics["loss/weight_penalty"] == 0.0
    assert loss.item() == pytest.approx(101.6977197 + 11.6560785, abs=1e-6)


def test_cascade_loss_gradient_reaches_mu_with_beta_weights():
    # d loss / d mu[i, j] = beta_j * mu[i, j] / B: dim 0 has beta 10, dim 1 beta 0.1.
    out, x_B1HW = _output(codes_B=None)
    loss, _ = cascade_loss(out, x_B1HW, torch.tensor([10.0, 0.1]), None, num_categories=0)
    loss.backward()
    expected_BM = torch.tensor([[0.0, 0.05], [10.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(out.mu_BM.grad, expected_BM)


def test_cascade_loss_rejects_wrong_beta_shape():
    out, x_B1HW = _output(codes_B=None)
    with pytest.raises(ValueError, match="betas_M"):
        cascade_loss(out, x_B1HW, torch.ones(3), None, num_categories=0)


def test_jointvae_loss_known_values():
    """Uniform q(c|x) has KL 0 to the uniform prior; a one-hot q has KL log K. The capacity
    terms are gamma * |KL - C(t)| with C rising linearly and C_c capped at log K."""
    from trainer.core.losses import capacity, categorical_kl_uniform, jointvae_loss
    from trainer.core.types import JointVAEOutput

    assert categorical_kl_uniform(torch.zeros(4, 3)).item() == pytest.approx(0.0, abs=1e-7)
    confident = torch.tensor([[50.0, 0.0, 0.0]])
    assert categorical_kl_uniform(confident).item() == pytest.approx(math.log(3), abs=1e-6)
    assert capacity(40.0, 150, 300) == 20.0 and capacity(40.0, 900, 300) == 40.0

    x = torch.zeros(2, 1, 64, 64)
    out = JointVAEOutput(
        mu_BM=torch.zeros(2, 6), sigma_BM=torch.ones(2, 6), z_BM=torch.zeros(2, 6),
        alpha_BK=torch.zeros(2, 3), c_BK=torch.full((2, 3), 1 / 3),
        logits_B1HW=torch.full((2, 1, 64, 64), -100.0),
    )  # fmt: skip
    # KL_z = 0, KL_c = 0, recon ~ 0: at t = ramp the loss is gamma * (C_z + min(C_c, log 3)).
    loss, metrics = jointvae_loss(
        out, x, iteration=10, gamma=2.0, continuous_capacity=5.0, discrete_capacity=1.1,
        capacity_steps=10, weight_penalty=None,
    )  # fmt: skip
    assert loss.item() == pytest.approx(2.0 * (5.0 + math.log(3)), rel=1e-5)
    assert metrics["capacity/c"] == pytest.approx(math.log(3))
    assert metrics["codes/count_0"] == 2.0  # argmax of equal logits: the first category
