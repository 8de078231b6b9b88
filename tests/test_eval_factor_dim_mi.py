"""Tests of trainer.eval.factor_dim_mi: the factor x dim table of identity, shape-code and
constant representations, and the ordering of dims by the noise added to a factor.

Shape legend: N images, M continuous dims, V votes, P images per vote, K categories, S shapes.
"""

from __future__ import annotations

import numpy as np
import pytest
from eval_helpers import (
    ALL_FACTORS,
    FakeDSprites,
    TableRepresenter,
)

from trainer.eval import (
    FactorRepresenter,
    compute_factor_dim_mi,
    factor_dim_mi,
)


@pytest.fixture(scope="module")
def data() -> FakeDSprites:
    return FakeDSprites()


def test_factor_dim_table_of_the_identity_representation_is_the_identity(data):
    # Every factor's class as one dim (<= 10 classes, each in its own one of 20 bins): a dim
    # determines its own factor (exactly 1) and is independent of the others (plug-in bias only,
    # about (20 - 1)(10 - 1) / (2 x 10,000) nats = 0.004 of log 10).
    rep = FactorRepresenter(data, continuous=ALL_FACTORS, discrete=None)
    result = compute_factor_dim_mi(rep, data, np.random.default_rng(0))
    nmi_FC = result.details["nmi_FC"]
    assert result.details["factor_names"] == list(ALL_FACTORS)
    assert result.details["columns"] == ["z0", "z1", "z2", "z3", "z4"]
    np.testing.assert_allclose(np.diag(nmi_FC), 1.0, rtol=1e-12)
    off_diagonal = nmi_FC[~np.eye(5, dtype=bool)]
    assert off_diagonal.max() < 0.01 and off_diagonal.min() >= 0.0
    assert result.score == pytest.approx(1.0)  # z0 holds the shape
    assert result.details["confusion_KS"] is None
    table = result.details["table"]
    assert table["mi/posX/z3"] == pytest.approx(1.0) and table["mi/posX/z4"] < 0.01
    assert not any(key.startswith("confusion/") or key.endswith("/code") for key in table)


def test_factor_dim_table_reads_the_shape_code_and_its_confusion(data):
    rep = FactorRepresenter(data)  # scale, orientation, posX, posY continuous; shape discrete
    result = compute_factor_dim_mi(rep, data, np.random.default_rng(0), num_samples=3000)
    table = result.details["table"]
    assert table["mi/shape/code"] == pytest.approx(1.0)
    assert max(table[f"mi/{f}/code"] for f in ALL_FACTORS[1:]) < 0.01
    assert table["mi/scale/z0"] == pytest.approx(1.0) and table["mi/posY/z3"] == pytest.approx(1.0)
    assert result.score < 0.01  # no continuous dim holds the shape
    confusion_KS = result.details["confusion_KS"]
    assert confusion_KS.sum() == 3000
    np.testing.assert_array_equal(confusion_KS, np.diag(np.diag(confusion_KS)))
    assert table["confusion/code1/ellipse"] == confusion_KS[1, 1] > 800
    assert table["confusion/code1/square"] == 0.0


def test_factor_dim_table_of_a_constant_representation_is_zero(data):
    n = len(data)
    rep = TableRepresenter(np.full((n, 3), 0.7), None, np.zeros(n, dtype=np.int64))
    rep.num_categories = 3
    result = compute_factor_dim_mi(rep, data, np.random.default_rng(0), num_samples=2000)
    assert result.details["nmi_FC"].shape == (5, 4)
    assert (result.details["nmi_FC"] == 0.0).all() and result.score == 0.0
    confusion_KS = result.details["confusion_KS"]
    assert confusion_KS.shape == (3, 3)  # the unused categories are rows of zeros
    assert confusion_KS[0].sum() == 2000 and confusion_KS[1:].sum() == 0
    assert result.details["table"]["confusion/code2/heart"] == 0.0


def test_factor_dim_table_orders_dims_by_the_noise_added_to_a_factor():
    # posX (16 classes) copied, with small noise, with large noise, and pure noise; another
    # factor copied once. I(dim; posX) falls as the noise grows; the pure-noise dim and every
    # dim's MI with the other factor stay near 0 (plug-in bias).
    rng = np.random.default_rng(4)
    n = 20_000
    pos_N, other_N = rng.integers(0, 16, size=n), rng.integers(0, 5, size=n)
    mu_NM = np.stack(
        [
            pos_N,
            pos_N + rng.normal(0.0, 1.0, size=n),
            pos_N + rng.normal(0.0, 4.0, size=n),
            rng.normal(0.0, 1.0, size=n),
            other_N,
        ],
        axis=1,
    ).astype(float)
    factors_NF = np.stack([pos_N, other_N], axis=1)
    result = factor_dim_mi._factor_dim_mi_core(mu_NM, None, factors_NF, ["posX", "scale"])
    pos_C, other_C = result.details["nmi_FC"]
    assert pos_C[0] == pytest.approx(1.0)
    assert 1.0 > pos_C[1] > pos_C[2] > pos_C[3] + 0.05
    assert pos_C[3] < 0.01 and pos_C[4] < 0.01
    assert other_C[4] == pytest.approx(1.0) and other_C[:4].max() < 0.01
    assert result.score == 0.0  # no shape factor in this table
