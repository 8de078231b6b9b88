"""Tests of trainer.eval.inference: the model adapter gives the model's own posterior means,
deviations and codes, with and without a discrete code.

Shape legend: N images, M continuous dims, V votes, P images per vote, K categories, S shapes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from eval_helpers import (
    FakeDSprites,
)

from trainer.core.model import CascadeVAE
from trainer.core.unary import unary_matrix
from trainer.eval import (
    ModelRepresenter,
)


@pytest.fixture(scope="module")
def data() -> FakeDSprites:
    return FakeDSprites()


@pytest.fixture(scope="module")
def tiny_model() -> CascadeVAE:
    torch.manual_seed(0)
    return CascadeVAE(num_continuous=4, num_categories=3)


def test_model_representer_matches_the_model(data, tiny_model):
    indices_N = np.array([5, 69, 5, 1000, 11519, 64])  # a repeat; 5 and 69 share an image
    represent = ModelRepresenter(tiny_model, data, batch_size=4)
    rep = represent(indices_N)
    assert rep.mu_NM.shape == (6, 4) and rep.sigma_NM.shape == (6, 4)
    assert rep.codes_N.shape == (6,)
    assert rep.mu_NM.dtype == np.float64 and rep.codes_N.dtype == np.int64
    x_N1HW = torch.from_numpy(data.images(indices_N)).float().unsqueeze(1)
    with torch.no_grad():
        mu_NM, sigma_NM = tiny_model.encode(x_N1HW)
        codes_N = unary_matrix(tiny_model, mu_NM, x_N1HW).argmin(dim=1)
    np.testing.assert_allclose(rep.mu_NM, mu_NM.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rep.sigma_NM, sigma_NM.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(rep.codes_N, codes_N.numpy())
    # The codes-from-known-mu path agrees, and codes=False skips the decoder.
    np.testing.assert_array_equal(represent.codes(indices_N, rep.mu_NM), rep.codes_N)
    assert represent(indices_N, codes=False).codes_N is None
    # The caller's model is untouched (mode and layout).
    assert tiny_model.training
    assert tiny_model.encoder[0].weight.is_contiguous()


def test_model_representer_without_discrete_code(data):
    torch.manual_seed(0)
    model = CascadeVAE(num_continuous=3, num_categories=0)
    represent = ModelRepresenter(model, data)
    rep = represent(np.arange(10))
    assert rep.mu_NM.shape == (10, 3) and rep.codes_N is None and not represent.has_codes
