"""The batched unary matrix against the K-pass reference, and its known values.

Shape legend: B batch, M continuous dims, K categories, N = B * K rows.
"""

from __future__ import annotations

import pytest
import torch

from trainer.core.losses import reconstruction_per_sample
from trainer.core.model import CascadeVAE
from trainer.core.unary import unary_matrix, unary_matrix_k_passes


def _inputs(batch: int, num_continuous: int, dtype: torch.dtype, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x_B1HW = (torch.rand(batch, 1, 64, 64, generator=gen) > 0.6).to(dtype)
    z_BM = torch.randn(batch, num_continuous, generator=gen).to(dtype)
    return z_BM, x_B1HW


@pytest.mark.parametrize(
    "dtype, rtol, atol", [(torch.float32, 1e-5, 1e-3), (torch.float64, 1e-12, 1e-9)]
)
@pytest.mark.parametrize("num_categories", [1, 3, 5])
def test_batched_equals_k_passes(dtype, rtol, atol, num_categories):
    torch.manual_seed(num_categories)
    vae = CascadeVAE(num_continuous=6, num_categories=num_categories).to(dtype)
    z_BM, x_B1HW = _inputs(7, 6, dtype)
    batched_BK = unary_matrix(vae, z_BM, x_B1HW)
    reference_BK = unary_matrix_k_passes(vae, z_BM, x_B1HW)
    assert batched_BK.shape == (7, num_categories) and batched_BK.dtype == dtype
    torch.testing.assert_close(batched_BK, reference_BK, rtol=rtol, atol=atol)
    # Categories must actually matter, or the equality above would be vacuous.
    if num_categories > 1:
        assert (reference_BK[:, 0] - reference_BK[:, 1]).abs().max() > 1e-3


def test_entry_is_reconstruction_with_that_category():
    torch.manual_seed(0)
    vae = CascadeVAE(num_continuous=4, num_categories=3).double()
    z_BM, x_B1HW = _inputs(3, 4, torch.float64)
    unary_BK = unary_matrix(vae, z_BM, x_B1HW)
    e1_K = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    # Sample 2 alone, category 1.
    rec = reconstruction_per_sample(vae.decode(z_BM[2:3], e1_K[None]), x_B1HW[2:3])
    assert unary_BK[2, 1].item() == pytest.approx(rec.item(), rel=1e-12)


def test_zero_logits_give_pixels_times_ln2():
    vae = CascadeVAE(num_continuous=2, num_categories=3)
    with torch.no_grad():
        vae.decoder[-1].weight.zero_()
        vae.decoder[-1].bias.zero_()
    z_BM, x_B1HW = _inputs(4, 2, torch.float32)
    # 64 * 64 * ln 2 = 2839.1308516 for every sample and category.
    torch.testing.assert_close(unary_matrix(vae, z_BM, x_B1HW), torch.full((4, 3), 2839.1308516))


def test_one_batched_decoder_pass_without_grad():
    vae = CascadeVAE(num_continuous=6, num_categories=3)
    z_BM, x_B1HW = _inputs(5, 6, torch.float32)
    z_BM.requires_grad_()
    calls = []
    hook = vae.decoder.register_forward_hook(
        lambda _m, inputs, _o: calls.append((inputs[0].shape, torch.is_grad_enabled()))
    )
    try:
        unary_BK = unary_matrix(vae, z_BM, x_B1HW)
    finally:
        hook.remove()
    assert calls == [(torch.Size([15, 9]), False)]
    assert not unary_BK.requires_grad


def test_needs_categories():
    vae = CascadeVAE(num_continuous=6, num_categories=0)
    z_BM, x_B1HW = _inputs(2, 6, torch.float32)
    with pytest.raises(ValueError, match="num_categories"):
        unary_matrix(vae, z_BM, x_B1HW)
    with pytest.raises(ValueError, match="num_categories"):
        unary_matrix_k_passes(vae, z_BM, x_B1HW)
