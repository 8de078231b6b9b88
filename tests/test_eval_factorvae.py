"""Tests of trainer.eval.factorvae (the FactorVAE metric as disentanglement_lib computes it):
1 on the true factors, alone and joint, near chance for a random representation.

Shape legend: N images, M continuous dims, V votes, P images per vote, K categories, S shapes.
"""

from __future__ import annotations

import numpy as np
import pytest
from eval_helpers import (
    ALL_FACTORS,
    FakeDSprites,
    random_representer,
)

from trainer.eval import (
    FactorRepresenter,
    compute_factorvae,
)


@pytest.fixture(scope="module")
def data() -> FakeDSprites:
    return FakeDSprites()


def test_standard_factorvae_scores_one_on_the_true_factors(data):
    # disentanglement_lib's identity representation: every factor class as a continuous dim.
    rep = FactorRepresenter(data, continuous=ALL_FACTORS, discrete=None)
    result = compute_factorvae(rep, data, np.random.default_rng(0), num_train=500, num_eval=300)
    assert result.protocol == "factorvae"
    assert result.score == 1.0
    assert result.details["train_accuracy"] == 1.0


def test_standard_factorvae_on_the_joint_true_factors(data):
    rep = FactorRepresenter(data)  # scale, orientation, posX, posY continuous; shape discrete
    kwargs = dict(num_train=500, num_eval=500)
    # With the discrete code as a Gini dim the shape votes are read too: exactly 1.
    result = compute_factorvae(rep, data, np.random.default_rng(0), include_discrete=True, **kwargs)
    assert result.score == 1.0
    # On mu alone (the default) nothing can read shape: exactly the shape votes are lost.
    result = compute_factorvae(rep, data, np.random.default_rng(0), **kwargs)
    eval_DF = result.details["eval_votes_DF"]
    shape_votes = eval_DF[:, 0].sum()
    assert 60 < shape_votes < 140  # about 1/5 of 500
    assert result.score == pytest.approx(1 - shape_votes / 500)


def test_standard_factorvae_is_near_chance_for_a_random_representation(data):
    scores = []
    for seed in range(3):
        result = compute_factorvae(
            random_representer(data, seed),
            data,
            np.random.default_rng(seed),
            num_train=1000,
            num_eval=1000,
        )
        scores.append(result.score)
    # Measured over seeds 0..9 (1000 / 1000 votes): held-out 0.176 .. 0.221; chance is 1/5.
    assert 0.15 < min(scores) and max(scores) < 0.25
