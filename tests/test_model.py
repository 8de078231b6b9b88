"""Architecture, initialisation, weight penalty, encoding and decoding of CascadeVAE and
JointVAE (the code choice inside a step is tested in test_step).

Shape legend: B batch, M continuous dims, K categories, H/W image sides.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainer.core.model import CascadeVAE
from trainer.core.unary import unary_matrix


def _images(batch: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, 1, 64, 64, generator=gen) > 0.7).float()


@pytest.fixture(scope="module")
def model() -> CascadeVAE:
    torch.manual_seed(0)
    return CascadeVAE(num_continuous=6, num_categories=3)


@pytest.mark.parametrize("num_continuous, num_categories", [(6, 3), (4, 0), (10, 5)])
def test_output_shapes(num_continuous, num_categories):
    vae = CascadeVAE(num_continuous, num_categories)
    x_B1HW = _images(5)
    mu_BM, sigma_BM = vae.encode(x_B1HW)
    assert mu_BM.shape == sigma_BM.shape == (5, num_continuous)
    assert bool((sigma_BM > 0).all())
    assert vae.decode(mu_BM, None).shape == (5, 1, 64, 64)
    # forward is the decoding: the part of a step that runs inside DDP
    d_BK = torch.zeros(5, num_categories)
    torch.testing.assert_close(vae(mu_BM, d_BK), vae.decode(mu_BM, d_BK))


def test_parameter_count_matches_the_architecture(model):
    # Worked out by hand (weights + biases) for M = 6, K = 3:
    # encoder: conv 1*32*16+32 = 544, 32*32*16+32 = 16416, 32*64*16+64 = 32832,
    #          64*64*16+64 = 65600, dense 1024*256+256 = 262400, 256*12+12 = 3084 -> 380876
    # decoder: dense 9*256+256 = 2560, 256*1024+1024 = 263168, deconv 64*64*16+64 = 65600,
    #          64*32*16+32 = 32800, 32*32*16+32 = 16416, 32*1*16+1 = 513 -> 381057
    assert sum(p.numel() for p in model.encoder.parameters()) == 380876
    assert sum(p.numel() for p in model.decoder.parameters()) == 381057


def test_spatial_sizes_halve_then_double(model):
    sides = []
    hooks = [
        layer.register_forward_hook(lambda _m, _i, out: sides.append(out.shape[-1]))
        for layer in model.modules()
        if isinstance(layer, nn.Conv2d | nn.ConvTranspose2d)
    ]
    try:
        _mu, _sigma, z_BM = model.encode_sample(_images(2), torch.zeros(2, 6))
        model(z_BM, None)
    finally:
        for hook in hooks:
            hook.remove()
    assert sides == [32, 16, 8, 4, 8, 16, 32, 64]


def test_sigma_is_softplus_of_the_second_half(model):
    x_B1HW = _images(3)
    h_B2M = model.encoder(x_B1HW)
    mu_BM, sigma_BM = model.encode(x_B1HW)
    torch.testing.assert_close(mu_BM, h_B2M[:, :6])
    torch.testing.assert_close(sigma_BM, torch.log1p(torch.exp(h_B2M[:, 6:])))


@pytest.mark.parametrize(
    "bad, match", [({"num_continuous": 0}, "num_continuous"), ({"num_categories": -1}, "num_cat")]
)
def test_constructor_validates_arguments(bad, match):
    with pytest.raises(ValueError, match=match):
        CascadeVAE(**bad)


def test_he_init_of_convolutions():
    torch.manual_seed(1)
    vae = CascadeVAE()
    convs = [m for m in vae.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]
    # fan_in by hand: conv in_ch * 4 * 4; transposed conv out_ch * 4 * 4 (TF's convention).
    fan_ins = [16, 512, 512, 1024, 1024, 512, 512, 16]
    assert len(convs) == len(fan_ins)
    for conv, fan_in in zip(convs, fan_ins, strict=True):
        w = conv.weight.detach()
        assert w.std().item() == pytest.approx(math.sqrt(2.0 / fan_in), rel=0.1)
        assert abs(w.mean().item()) < 0.2 * math.sqrt(2.0 / fan_in)
        assert bool((conv.bias == 0).all())
    for dense in [m for m in vae.modules() if isinstance(m, nn.Linear)]:
        fan_out, fan_in = dense.weight.shape
        bound = math.sqrt(6.0 / (fan_in + fan_out))  # Glorot uniform, TF-slim's default
        assert dense.weight.abs().max().item() <= bound
        assert dense.weight.std().item() == pytest.approx(bound / math.sqrt(3.0), rel=0.1)
        assert bool((dense.bias == 0).all())


def test_weight_penalty_is_half_sum_of_squared_weights_without_biases(model):
    weights = model.penalised_weights()
    assert len(weights) == 12  # 4 convs + 2 dense (encoder), 2 dense + 4 deconvs (decoder)
    expected = 0.0
    for name, param in model.named_parameters():
        assert name.endswith((".weight", ".bias"))
        if name.endswith(".weight"):
            expected += 0.5 * float((param.detach().double() ** 2).sum())
    assert model.weight_penalty().item() == pytest.approx(expected, rel=1e-5)

    vae = CascadeVAE()
    before = vae.weight_penalty().item()
    with torch.no_grad():
        vae.decoder[-1].bias.fill_(5.0)  # biases are not penalised
    assert vae.weight_penalty().item() == before
    last_w = vae.decoder[-1].weight
    old_term = 0.5 * float((last_w.detach().double() ** 2).sum())
    with torch.no_grad():
        last_w.fill_(1.0)  # 32 * 1 * 4 * 4 = 512 ones -> 0.5 * 512 = 256
    assert vae.weight_penalty().item() == pytest.approx(before - old_term + 256.0, rel=1e-5)


def test_encode_sample_is_mu_plus_sigma_eps_and_none_decodes_with_zero_code(model):
    x_B1HW = _images(4)
    eps_BM = torch.randn(4, 6, generator=torch.Generator().manual_seed(3))
    mu_BM, sigma_BM, z_BM = model.encode_sample(x_B1HW, eps_BM)
    torch.testing.assert_close((mu_BM, sigma_BM), model.encode(x_B1HW))
    torch.testing.assert_close(z_BM, mu_BM + sigma_BM * eps_BM)
    torch.testing.assert_close(model(z_BM, None), model.decode(z_BM, torch.zeros(4, 3)))


def test_infer_codes_is_the_argmin_of_the_unary_matrix(model):
    x_B1HW = _images(6, seed=5)
    z_BM = model.encode(x_B1HW)[0]
    unary_BK = unary_matrix(model, z_BM, x_B1HW)
    assert torch.equal(model.infer_codes(z_BM, x_B1HW), unary_BK.argmin(dim=1))
    # The unary entry of the chosen code is that code's reconstruction loss.
    codes_B = unary_BK.argmin(dim=1)
    logits = model.decode(z_BM, F.one_hot(codes_B, 3).float())
    rec_B = F.binary_cross_entropy_with_logits(logits, x_B1HW, reduction="none").sum(dim=(1, 2, 3))
    torch.testing.assert_close(rec_B, unary_BK.min(dim=1).values)


def test_decode_checks_the_code_shape(model):
    with pytest.raises(ValueError, match="d_BK must have shape"):
        model.decode(torch.zeros(2, 6), torch.zeros(2, 4))


def test_cascade_c_has_no_codes():
    vae = CascadeVAE(num_continuous=6, num_categories=0)
    assert vae.decoder[0].in_features == 6
    with pytest.raises(ValueError, match="num_categories"):
        unary_matrix(vae, torch.zeros(2, 6), _images(2))


def test_jointvae_decodes_a_relaxed_one_hot_and_infers_argmax_codes():
    from trainer.core.model import JointVAE

    torch.manual_seed(0)
    model = JointVAE(num_continuous=6, num_categories=3, temperature=0.67)
    x = (torch.rand(5, 1, 64, 64) > 0.5).float()
    mu_BM, sigma_BM, alpha_BK = model.encode_all(x)
    c_BK = model.relaxed_code(alpha_BK, torch.full((5, 3), 0.5))
    assert c_BK.shape == (5, 3)
    torch.testing.assert_close(c_BK.sum(dim=1), torch.ones(5))
    # With equal Gumbel noise the relaxed sample is softmax(log q / temperature).
    expected = torch.softmax(torch.log_softmax(alpha_BK, dim=1) / 0.67, dim=1)
    torch.testing.assert_close(c_BK, expected)
    assert torch.equal(model.infer_codes(mu_BM, x), alpha_BK.argmax(dim=1))
    torch.testing.assert_close((mu_BM, sigma_BM), model.encode(x))
    with pytest.raises(ValueError, match="temperature"):
        JointVAE(temperature=0.0)
