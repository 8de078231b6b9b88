"""Tests of trainer.eval.authors_factorvae (the authors' variant of the FactorVAE metric):
1 on the true factors, near chance for a random representation, defined for constant ones, the
KL activity test, and lazily computed codes that give the same votes.

Shape legend: N images, M continuous dims, V votes, P images per vote, K categories, S shapes.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from eval_helpers import (
    FakeDSprites,
    TableRepresenter,
    random_representer,
)

from trainer.eval import (
    FactorRepresenter,
    authors_factorvae,
    compute_authors_factorvae,
    compute_factorvae,
    compute_mig,
    draw_global_sample,
)


@pytest.fixture(scope="module")
def data() -> FakeDSprites:
    return FakeDSprites()


@pytest.mark.parametrize("num_global", [10_000, None])  # None: every image of the grid
def test_authors_variant_scores_one_on_the_true_factors(data, num_global):
    result = compute_authors_factorvae(
        FactorRepresenter(data), data, np.random.default_rng(0), num_global=num_global
    )
    assert result.protocol == "authors_factorvae"
    assert result.settings["num_global"] == (num_global or len(data))
    assert result.score == 1.0
    assert result.details["discrete_used"]
    # 800 votes, 160 per factor; dims: scale, orientation, posX, posY, then the shape code.
    votes_DF = result.details["votes_DF"]
    assert votes_DF.sum() == 800
    np.testing.assert_array_equal(votes_DF.sum(axis=0), [160] * 5)
    expected = np.zeros((5, 5), dtype=np.int64)
    for dim, factor in enumerate([1, 2, 3, 4, 0]):  # factor order: shape, scale, ...
        expected[dim, factor] = 160
    np.testing.assert_array_equal(votes_DF, expected)


def test_authors_variant_is_near_chance_for_a_random_representation(data):
    # Measured over seeds 0..9: 0.2362 .. 0.2600, mean 0.2436 (seeds 10..39: 0.2362 .. 0.2587).
    # Chance is 1/5; the majority classifier scored on the votes it was fit on (7 dims, about
    # 114 votes each) adds a small optimistic bias.
    scores = [
        compute_authors_factorvae(
            random_representer(data, seed), data, np.random.default_rng(seed)
        ).score
        for seed in range(10)
    ]
    assert 0.21 < min(scores) and max(scores) < 0.29
    assert 0.225 < np.mean(scores) < 0.265


def test_constant_representations_are_defined(data):
    n = len(data)
    rng = np.random.default_rng(0)
    # mu = 0, sigma = 1: every KL is 0, no dim kept; constant code: Gini 0, dropped too.
    silent = TableRepresenter(np.zeros((n, 4)), np.ones((n, 4)), np.zeros(n, dtype=np.int64))
    result = compute_authors_factorvae(silent, data, rng)
    assert result.score == pytest.approx(1 / 5)  # the authors' value with no kept dim
    assert result.details["kept_dims"] == () and not result.details["discrete_used"]
    # mu = 5 everywhere: KL-active but no variance at all: dropped, not divided by 0.
    stuck = TableRepresenter(np.full((n, 4), 5.0), np.ones((n, 4)))
    assert compute_authors_factorvae(stuck, data, rng).score == pytest.approx(1 / 5)
    # disentanglement_lib: no active dim -> 0 train and eval accuracy.
    result = compute_factorvae(stuck, data, rng, num_train=50, num_eval=50)
    assert result.score == 0.0 and result.details["train_accuracy"] == 0.0
    # MIG: a constant code carries no information.
    assert compute_mig(stuck, data, rng, num_samples=500).score == 0.0


def test_kl_activity_test_drops_inactive_dims(data):
    n = len(data)
    classes = data.latent_classes
    # dim 0 = posX with a tight posterior (active); dim 1 = posY but sigma = 1 and tiny mu:
    # KL = 0.5 * mu^2 <= 0.1 -> inactive, so posY votes cannot go to it.
    mu_NM = np.stack([classes[:, 4], classes[:, 5] * 0.01], axis=1).astype(float)
    sigma_NM = np.stack([np.full(n, 0.1), np.ones(n)], axis=1)
    result = compute_authors_factorvae(
        TableRepresenter(mu_NM, sigma_NM), data, np.random.default_rng(0)
    )
    assert result.details["kept_dims"] == (0,)
    assert result.details["votes_DF"].shape == (1, 5)
    assert result.score == pytest.approx(1 / 5)  # one dim: every vote goes to it


@pytest.mark.parametrize("kind", ["true", "random", "blend"])
def test_lazy_vote_codes_change_nothing(data, kind):
    n = len(data)
    rng = np.random.default_rng(7)
    classes = data.latent_classes
    if kind == "true":
        represent = FactorRepresenter(data)
    elif kind == "random":
        represent = random_representer(data, 7)
    else:  # informative but noisy dims and a noisy shape code: many votes are close calls
        mu_NM = classes[:, 2:].astype(float) + rng.normal(scale=2.0, size=(n, 4))
        codes_N = np.where(rng.random(n) < 0.7, classes[:, 1], rng.integers(0, 3, size=n))
        represent = TableRepresenter(mu_NM, np.full((n, 4), 0.1), codes_N)
    lazy = compute_authors_factorvae(represent, data, np.random.default_rng(1))
    full = compute_authors_factorvae(represent, data, np.random.default_rng(1), lazy_codes=False)
    np.testing.assert_array_equal(lazy.details["votes_DF"], full.details["votes_DF"])
    assert lazy.score == full.score
    assert full.details["vote_codes_computed"] == 800 * 100
    if kind == "true":  # every vote has a zero-variance dim: decided with no codes at all
        assert lazy.details["vote_codes_computed"] == 160 * 100  # only the shape votes
    assert lazy.details["vote_codes_computed"] <= full.details["vote_codes_computed"]


def test_fewest_unequal_pairs_is_the_minimum_over_all_completions():
    # Brute force over every completion of partially known codes (P = 6, K = 3).
    rng = np.random.default_rng(5)
    codes_VP = rng.integers(0, 3, size=(60, 6))
    codes_VP[rng.random(codes_VP.shape) < 0.5] = -1
    codes_VP[0] = -1  # nothing known: bound 0
    codes_VP[1] = [0, 1, 2, 0, 1, 2]  # everything known: exact 36 - 12 = 24
    bound_V = authors_factorvae._fewest_unequal_pairs(codes_VP)
    for codes_P, bound in zip(codes_VP, bound_V, strict=True):
        unknown = np.flatnonzero(codes_P < 0)
        fewest = 36
        for fill in itertools.product(range(3), repeat=len(unknown)):
            filled = codes_P.copy()
            filled[unknown] = fill
            fewest = min(fewest, 36 - int((np.bincount(filled) ** 2).sum()))
        assert bound == fewest
    assert bound_V[0] == 0 and bound_V[1] == 24


def test_core_refuses_votes_missing_needed_codes(data):
    represent = random_representer(data, 0)
    rng = np.random.default_rng(0)
    sample = draw_global_sample(represent, data, rng, 1000)
    vote_mu_VPM = rng.normal(size=(10, 100, 6))
    with pytest.raises(ValueError, match="missing"):
        authors_factorvae._authors_factorvae_core(
            sample.rep, vote_mu_VPM, np.full((10, 100), -1), np.zeros(10, dtype=int), 5
        )
