"""Known-answer tests of trainer.eval: the true factors as a representation score (near) 1,
an independent random one near chance, hand-computed small cases, and the model adapter.

A fake dataset with the data layer's interface (small grid, no rendering) keeps this fast.

Shape legend: N images, M continuous dims, V votes, P images per vote, K categories, S shapes.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from trainer.core.model import CascadeVAE
from trainer.core.unary import unary_matrix
from trainer.data.dsprites import mixed_radix_bases
from trainer.eval import (
    METRICS,
    FactorRepresenter,
    ModelRepresenter,
    Representation,
    Representer,
    authors_factorvae,
    compute_authors_factorvae,
    compute_discrete_accuracy,
    compute_factor_dim_mi,
    compute_factorvae,
    compute_mig,
    discrete_entropy,
    discrete_mutual_information,
    draw_global_sample,
    evaluate_model,
    factor_dim_mi,
    gini_variance,
    histogram_discretize,
    majority_vote_accuracy,
    mig,
    table_keys,
)
from trainer.eval.discrete_accuracy import _discrete_accuracy_core as accuracy_core
from trainer.eval.discrete_accuracy import confusion_matrix

SMALL_SIZES = (1, 3, 6, 10, 8, 8)  # color, shape, scale, orientation, posX, posY
ALL_FACTORS = ("shape", "scale", "orientation", "posX", "posY")


class FakeDSprites:
    """The data layer's DSprites interface over a small grid; images are fixed random bits
    (a table of 64 images indexed by index mod 64) since only the model adapter looks at them."""

    def __init__(self, latent_sizes: tuple[int, ...] = SMALL_SIZES) -> None:
        self.latent_sizes = tuple(latent_sizes)
        n = math.prod(latent_sizes)
        self.latent_classes = np.stack(np.unravel_index(np.arange(n), latent_sizes), axis=1)
        self.latent_classes = self.latent_classes.astype(np.int64)
        self.latent_values = self.latent_classes.astype(np.float64)
        self._table = np.random.default_rng(123).integers(0, 2, (64, 64, 64), dtype=np.uint8)

    def __len__(self) -> int:
        return int(self.latent_classes.shape[0])

    def images(self, indices: np.ndarray) -> np.ndarray:
        return self._table[np.asarray(indices) % 64]

    def index_of(self, classes_B6: np.ndarray) -> np.ndarray:
        return np.asarray(classes_B6) @ mixed_radix_bases(self.latent_sizes)


class TableRepresenter(Representer):
    """A fixed table lookup: image i -> (mu_NM[i], sigma_NM[i], codes_N[i])."""

    def __init__(self, mu_NM, sigma_NM=None, codes_N=None) -> None:
        self.mu_NM, self.sigma_NM, self.codes_N = mu_NM, sigma_NM, codes_N
        self.has_codes = codes_N is not None
        self.code_requests = 0

    def __call__(self, indices_N, *, codes=True):
        idx = np.asarray(indices_N)
        sigma = None if self.sigma_NM is None else self.sigma_NM[idx]
        with_codes = codes and self.has_codes
        if with_codes:
            self.code_requests += len(idx)
        return Representation(self.mu_NM[idx], sigma, self.codes_N[idx] if with_codes else None)


@pytest.fixture(scope="module")
def data() -> FakeDSprites:
    return FakeDSprites()


def random_representer(data: FakeDSprites, seed: int, num_dims: int = 6) -> TableRepresenter:
    """Continuous dims and a 3-category code drawn independently of the factors."""
    rng = np.random.default_rng(seed)
    n = len(data)
    return TableRepresenter(
        rng.normal(size=(n, num_dims)), np.full((n, num_dims), 0.1), rng.integers(0, 3, size=n)
    )


# --- hand-checked small cases -------------------------------------------------------------------


def test_gini_variance_hand_computed():
    # n = 4, counts (2, 1, 1): (16 - 6) / (2 * 4 * 3) = 10 / 24.
    assert gini_variance(np.array([0, 0, 1, 2])) == pytest.approx(10 / 24)
    # Labels only matter through their counts.
    assert gini_variance(np.array([7, 7, 3, 9])) == pytest.approx(10 / 24)
    assert gini_variance(np.array([5, 5, 5])) == 0.0
    # Two items that differ: (4 - 2) / (2 * 2 * 1) = 1/2, the sample variance of {0, 1}.
    assert gini_variance(np.array([0, 1])) == pytest.approx(np.var([0, 1], ddof=1))


def test_gini_variance_is_half_the_summed_one_hot_sample_variances():
    codes_N = np.random.default_rng(0).integers(0, 4, size=37)
    one_hot_NK = np.eye(4)[codes_N]
    assert gini_variance(codes_N) == pytest.approx(0.5 * one_hot_NK.var(axis=0, ddof=1).sum())


def test_majority_vote_accuracy_hand_computed():
    votes_DF = np.array([[5, 1, 0], [2, 2, 6], [0, 0, 0]])
    assert majority_vote_accuracy(votes_DF) == pytest.approx((5 + 6) / 16)


def test_discrete_accuracy_of_a_permuted_labelling_is_one():
    shapes_N = np.random.default_rng(0).integers(0, 3, size=500)
    codes_N = np.array([2, 0, 1])[shapes_N]  # a relabelling of the shapes
    result = accuracy_core(codes_N, shapes_N)
    assert result.score == 1.0
    assert result.details["category_to_shape"] == {0: 1, 1: 2, 2: 0}


def test_discrete_accuracy_of_a_known_confusion_matrix():
    # confusion (K=3 rows, S=3 cols):  [[10, 2, 0], [1, 3, 8], [4, 5, 1]]
    # best matching: cat0->shape0 (10), cat1->shape2 (8), cat2->shape1 (5): 23 of 34.
    confusion = np.array([[10, 2, 0], [1, 3, 8], [4, 5, 1]])
    codes, shapes = np.nonzero(confusion)
    reps = confusion[codes, shapes]
    result = accuracy_core(np.repeat(codes, reps), np.repeat(shapes, reps))
    np.testing.assert_array_equal(result.details["confusion_KS"], confusion)
    assert result.score == pytest.approx(23 / 34)


def test_discrete_accuracy_with_more_or_fewer_categories_than_shapes():
    shapes_N = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 2])
    # K = 4: shape 2 split over categories 2 and 3; only one of them can be matched (3 of 5).
    codes_N = np.array([0, 0, 0, 1, 1, 2, 2, 2, 3, 3])
    assert accuracy_core(codes_N, shapes_N).score == pytest.approx(8 / 10)
    # K = 2: shapes 0 and 1 merged in category 0; best: cat0->shape0 (3), cat1->shape2 (5).
    codes_N = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    assert accuracy_core(codes_N, shapes_N).score == pytest.approx(8 / 10)


def test_mutual_information_of_identical_variables_is_their_entropy():
    a_N = np.random.default_rng(1).integers(0, 5, size=1000)
    counts = np.bincount(a_N)
    p = counts / counts.sum()
    assert discrete_entropy(a_N) == pytest.approx(-np.sum(p * np.log(p)))
    assert discrete_mutual_information(a_N, a_N) == pytest.approx(discrete_entropy(a_N))
    # A relabelling carries the same information.
    assert discrete_mutual_information(a_N, 10 - 3 * a_N) == pytest.approx(discrete_entropy(a_N))


def test_mutual_information_hand_computed():
    # Uniform x in {0, 1}, y = x on half the items and 0 otherwise: joint p(0,0) = 1/2,
    # p(1,0) = 1/4, p(1,1) = 1/4. I = H(y) + H(x) - H(x, y) = H(1/4,3/4) + log 2 - 1.5 log 2.
    x_N = np.array([0, 0, 1, 1])
    y_N = np.array([0, 0, 0, 1])
    h_y = -(0.25 * np.log(0.25) + 0.75 * np.log(0.75))
    assert discrete_mutual_information(x_N, y_N) == pytest.approx(h_y - 0.5 * np.log(2))
    # Independent variables: exactly 0.
    assert discrete_mutual_information(np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1])) == 0.0


def test_histogram_discretize_matches_numpy_histogram_bins():
    x_NM = np.random.default_rng(2).normal(size=(1000, 3))
    x_NM[:, 2] = 4.0  # constant column: one bin
    bins_NM = histogram_discretize(x_NM, 20)
    for j in range(2):
        edges = np.histogram(x_NM[:, j], 20)[1]
        # np.digitize against the 20 left edges gives 1..20 (the max lands in bin 20).
        np.testing.assert_array_equal(bins_NM[:, j], np.digitize(x_NM[:, j], edges[:-1]) - 1)
    assert bins_NM[:, :2].min() == 0 and bins_NM[:, :2].max() == 19
    assert (bins_NM[:, 2] == 0).all()


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


def test_metric_options_are_config_overrides_of_the_eval_section():
    from trainer.config import Config, apply_overrides
    from trainer.eval import metric_option_overrides
    from trainer.schema import ConfigError

    items = ["factorvae_num_train=100", "num_global=null", "kl_threshold=0.2", "mig_num_bins=10"]
    overrides = metric_option_overrides([*items, "factorvae_include_discrete=true"])
    assert overrides == [f"eval.{item}" for item in [*items, "factorvae_include_discrete=true"]]
    settings = Config.from_dict(apply_overrides({}, overrides)).eval
    assert (settings.factorvae_num_train, settings.num_global) == (100, None)
    assert (settings.kl_threshold, settings.mig_num_bins) == (0.2, 10)
    assert settings.factorvae_include_discrete is True
    with pytest.raises(ConfigError, match="expected key=value"):
        metric_option_overrides(["num_votes"])
    with pytest.raises(ConfigError) as info:
        metric_option_overrides(["no_such_key=1", "num_votes=5"])
    (problem,) = info.value.problems
    assert problem.startswith("--metric-option 'no_such_key=1': unknown option 'no_such_key'; ")
    assert "valid: num_global, batch_size, num_votes, vote_size, kl_threshold, " in problem
    # A declared option with a bad value is refused by the schema, naming the field and value.
    with pytest.raises(ConfigError, match=r"eval\.mig_num_bins: must be >= 1, got 0"):
        Config.from_dict(apply_overrides({}, metric_option_overrides(["mig_num_bins=0"])))


# --- the true factors as the representation -----------------------------------------------------


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


def test_discrete_accuracy_of_the_true_shapes_is_one(data):
    result = compute_discrete_accuracy(
        FactorRepresenter(data), data, np.random.default_rng(0), num_samples=2000
    )
    assert result.score == 1.0


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


# --- random and constant representations --------------------------------------------------------


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


# --- lazy discrete codes give the exact same votes -------------------------------------------


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


# --- the model adapter ----------------------------------------------------------------------


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


def test_evaluate_model_keys_and_determinism(data, tiny_model):
    kwargs = dict(num_global=300, num_votes=50, vote_size=20, factorvae_num_train=20)
    all_protocols = ("authors_factorvae", "factorvae", "discrete_accuracy", "mig")
    out = evaluate_model(
        tiny_model, data, seed=3, protocols=all_protocols, factorvae_num_eval=20, **kwargs
    )
    assert set(out) == {
        "eval/authors_factorvae",
        "eval/active_dims",
        "eval/factorvae",
        "eval/factorvae_train",
        "eval/discrete_accuracy",
        "eval/mig",
    }
    assert all(isinstance(v, float) and 0.0 <= v <= 4.0 for v in out.values())
    # Deterministic given the seed, and a protocol does not depend on the others asked.
    alone = evaluate_model(tiny_model, data, seed=3, protocols=("authors_factorvae",), **kwargs)
    assert alone == {k: out[k] for k in ("eval/authors_factorvae", "eval/active_dims")}
    with pytest.raises(TypeError, match="unknown overrides"):
        evaluate_model(tiny_model, data, num_vote=3)
    with pytest.raises(ValueError, match=r"protocols: unknown \['beta_vae'\]; choose from"):
        evaluate_model(tiny_model, data, protocols=("beta_vae",))
    with pytest.raises(ValueError, match="vote_size: must be >= 2, got 1"):
        evaluate_model(tiny_model, data, vote_size=1)
    no_code = CascadeVAE(num_continuous=3, num_categories=0)
    with pytest.raises(ValueError, match="discrete code"):
        evaluate_model(no_code, data, protocols=("discrete_accuracy",))


def test_protocols_describe_every_metric():
    assert list(METRICS) == [
        "authors_factorvae",
        "factorvae",
        "discrete_accuracy",
        "mig",
        "factor_dim_mi",
    ]
    assert "800 votes" in METRICS["authors_factorvae"].description
    assert "0.05" in METRICS["factorvae"].description
    assert "20 equal-width bins" in METRICS["mig"].description


def test_the_registry_declares_exactly_the_eval_settings():
    from trainer.eval import EvalConfig
    from trainer.eval.registry import option_names

    assert sorted(option_names()) == sorted(set(EvalConfig.model_fields) - {"protocols"})
    assert [m.keys for m in METRICS.values()] == [
        ("eval/authors_factorvae", "eval/active_dims"),
        ("eval/factorvae", "eval/factorvae_train"),
        ("eval/discrete_accuracy",),
        ("eval/mig",),
        ("eval/mi_shape_z",),
    ]
    assert [m.higher_is_better for m in METRICS.values()] == [True] * 4 + [None]


# --- factor x dim table and confusion matrix ----------------------------------------------------


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


def test_confusion_matrix_of_a_known_assignment():
    codes_N = np.array([0, 0, 1, 2, 2, 2, 1])
    shapes_N = np.array([0, 1, 1, 2, 2, 0, 1])
    expected_KS = np.array([[1, 1, 0], [0, 2, 0], [1, 0, 2]])
    np.testing.assert_array_equal(confusion_matrix(codes_N, shapes_N), expected_KS)
    padded_KS = confusion_matrix(codes_N, shapes_N, num_categories=4, num_shapes=3)
    np.testing.assert_array_equal(padded_KS, np.vstack([expected_KS, np.zeros((1, 3))]))
    result = factor_dim_mi._factor_dim_mi_core(
        np.zeros((7, 1)),
        codes_N,
        shapes_N[:, None],
        ["shape"],
        shapes_N=shapes_N,
        num_categories=4,
        num_shapes=3,
    )
    table = result.details["table"]
    assert table["confusion/code2/square"] == 1.0 and table["confusion/code2/heart"] == 2.0
    assert table["confusion/code1/ellipse"] == 2.0 and table["confusion/code3/square"] == 0.0
    assert sum(v for k, v in table.items() if k.startswith("confusion/")) == 7


@pytest.mark.parametrize("num_categories", [3, 0])
def test_evaluate_model_reports_exactly_the_declared_table_keys(data, num_categories):
    torch.manual_seed(0)
    model = CascadeVAE(num_continuous=4, num_categories=num_categories)
    out = evaluate_model(model, data, seed=1, protocols=("factor_dim_mi",), num_global=300)
    declared = table_keys(["factor_dim_mi"], 4, num_categories)
    assert set(out) == {"eval/mi_shape_z", *declared}
    assert len(declared) == 5 * (4 + (1 if num_categories else 0)) + 3 * num_categories
    assert all(0.0 <= out[k] <= 1.0 for k in declared if k.startswith("mi/"))
    if num_categories:
        counts = [out[k] for k in declared if k.startswith("confusion/")]
        assert sum(counts) == 300 and all(c == int(c) for c in counts)
    assert "factor_dim_mi" not in [m.name for m in METRICS.values() if m.higher_is_better]
