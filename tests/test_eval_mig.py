"""Tests of trainer.eval.mig: the MIG core on a hand-built case and on the true factors.

Shape legend: N images, M continuous dims, V votes, P images per vote, K categories, S shapes.
"""

from __future__ import annotations

import numpy as np
import pytest
from eval_helpers import (
    FakeDSprites,
    random_representer,
)

from trainer.eval import (
    FactorRepresenter,
    compute_mig,
    discrete_entropy,
    discrete_mutual_information,
    mig,
)


@pytest.fixture(scope="module")
def data() -> FakeDSprites:
    return FakeDSprites()


def test_mig_core_hand_built():
    # Factor a (4 values) copied in column 0, factor b (2 values) in column 1 and, masked by
    # noise, in column 2. Per factor: gap = (top MI - runner-up MI) / H(factor), where the top
    # MI of a copied factor is its entropy and runner-ups are the other columns' MI.
    rng = np.random.default_rng(3)
    a_N, b_N = rng.integers(0, 4, size=4000), rng.integers(0, 2, size=4000)
    masked_N = b_N * rng.integers(0, 2, size=4000)
    mu_NM = np.stack([a_N, b_N, masked_N], axis=1).astype(float)
    result = mig._mig_core(mu_NM, None, np.stack([a_N, b_N], axis=1), num_bins=20)
    mi = discrete_mutual_information
    h_a, h_b = discrete_entropy(a_N), discrete_entropy(b_N)
    expected_a = (h_a - max(mi(b_N, a_N), mi(masked_N, a_N))) / h_a  # plug-in bias only
    expected_b = (h_b - max(mi(a_N, b_N), mi(masked_N, b_N))) / h_b
    assert 0.999 < expected_a < 1.0
    # I(masked; b) = H(masked) - H(masked | b) = H(1/4, 3/4) - log(2) / 2 = 0.216 nats.
    h_quarter = -(0.25 * np.log(0.25) + 0.75 * np.log(0.75))
    assert mi(masked_N, b_N) == pytest.approx(h_quarter - 0.5 * np.log(2), abs=0.01)
    np.testing.assert_allclose(result.details["gap_F"], [expected_a, expected_b], rtol=1e-12)
    assert result.score == pytest.approx((expected_a + expected_b) / 2)
    # The discrete code is one more column, used as is: a copy of b makes gap_b = (H - H) = 0.
    with_code = mig._mig_core(mu_NM, b_N, np.stack([a_N, b_N], axis=1), num_bins=20)
    assert with_code.details["mi_CF"].shape == (4, 2)
    assert with_code.details["gap_F"][1] == pytest.approx(0.0, abs=1e-12)


def test_mig_of_the_true_factors(data):
    # Every factor has <= 20 values here, so each dim's 20 bins separate its classes: the top
    # MI of each factor is its entropy; the runner-up is a small plug-in bias. Measured 0.9985
    # (per factor 0.9980 .. 0.9993); an independent random representation gives 0.0002.
    result = compute_mig(FactorRepresenter(data), data, np.random.default_rng(0))
    assert 0.995 < result.score < 1.0
    np.testing.assert_allclose(
        result.details["mi_CF"].max(axis=0), result.details["entropy_F"], rtol=1e-12
    )
    assert compute_mig(random_representer(data, 0), data, np.random.default_rng(0)).score < 0.01
