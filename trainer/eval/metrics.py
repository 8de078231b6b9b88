"""Disentanglement metrics: pure cores over arrays, and samplers that represent only what they need.

Every metric follows the disentanglement_lib layout: a public `compute_x(represent, dataset, rng,
...)` samples image indices, asks `represent` for their representations (in batches, never the
whole grid unless asked), then calls a pure `_x_core(arrays)`. The cores see plain arrays, so they
can be fed the TRUE factor classes as a representation (`FactorRepresenter`) for known answers.

Protocols (see `PROTOCOLS` for the settings of each):
  authors_factorvae  the authors' variant of the FactorVAE metric (Jeong & Song 2019, their
                     `DisentanglemetricFactorJointMask`): KL-active dims, discrete code as one
                     more dim with its Gini variance, 800 votes of 100 images, accuracy on the
                     same votes.
  factorvae          the FactorVAE metric as disentanglement_lib defines it (Kim & Mnih 2018):
                     std-pruned dims, 64 images per vote, 10,000 train / 5,000 held-out votes.
  discrete_accuracy  best one-to-one match (Hungarian) of learned categories to true shapes.
  mig                mutual information gap (Chen et al. 2018) as disentanglement_lib computes it.

Representation of an image: mu(x) for the continuous dims; the discrete code is the category
with the lowest reconstruction loss at z = mu (argmin_k of `unary_matrix(model, mu, x)`); sigma(x)
only for the KL activity test.

Shape legend:
    N  images of a sample            M  continuous latent dims (all of them)
    V  votes                         P  images per vote
    D  dims that take part in a vote (kept continuous dims, plus 1 for the discrete code)
    F  factors that vary (size > 1; dSprites: shape, scale, orientation, posX, posY -> 5)
    L  all latent factors of the dataset (dSprites: 6, color first)
    K  learned categories            S  true shapes
    C  code columns of MIG (continuous dims, plus the discrete code)
    B  batch of the encoder          U  unique indices of a request
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from trainer.data.dsprites import (
    LATENT_NAMES,
    sample_indices_with_fixed_factor,
    sample_random_indices,
)

if TYPE_CHECKING:
    from trainer.core.model import CascadeVAE
    from trainer.data.dsprites import DSprites

SHAPE_FACTOR = LATENT_NAMES.index("shape")

# Defaults of each protocol, named as the settings they describe.
AUTHORS_NUM_GLOBAL = 10_000  # the authors use all 737,280 images; a sample keeps eval cheap
AUTHORS_NUM_VOTES = 800
AUTHORS_VOTE_SIZE = 100
AUTHORS_KL_THRESHOLD = 0.1
FACTORVAE_NUM_GLOBAL = 10_000
FACTORVAE_NUM_TRAIN = 10_000
FACTORVAE_NUM_EVAL = 5_000
FACTORVAE_VOTE_SIZE = 64
FACTORVAE_STD_THRESHOLD = 0.05
MIG_NUM_SAMPLES = 10_000
MIG_NUM_BINS = 20
DISCRETE_NUM_SAMPLES = 10_000
# Images per vote whose discrete code is computed before each re-check of the undecided votes
# (see `_vote_winners`). Measured share of the 80,000 vote codes computed: 20 % with the true
# factors (only the shape votes), 88 % for an untrained CascadeVAE (its ratios are all near 1).
LAZY_CODE_STAGES = (10, 20, 40)

PROTOCOLS: dict[str, str] = {
    "authors_factorvae": (
        "Authors' FactorVAE-metric variant (Jeong & Song 2019): continuous dims kept when their "
        f"mean KL over a global sample of {AUTHORS_NUM_GLOBAL} images is > {AUTHORS_KL_THRESHOLD}"
        "; global scale = sample variance (ddof 1) of each kept dim over that sample; the "
        "discrete code is one more dim with Gini variance (n^2 - sum_k c_k^2) / (2n(n-1)), "
        f"globally and per vote; {AUTHORS_NUM_VOTES} votes split evenly over the factors that "
        f"vary, each fixing one factor at a random value over {AUTHORS_VOTE_SIZE} images and "
        "voting (argmin of local variance / global scale, factor); score = majority-vote "
        "accuracy on the same votes; no kept dim -> 1 / number of factors (as the authors)."
    ),
    "factorvae": (
        "FactorVAE metric as disentanglement_lib defines it (Kim & Mnih 2018): global variance "
        f"(ddof 1) of mu over {FACTORVAE_NUM_GLOBAL} images, dims with std < "
        f"{FACTORVAE_STD_THRESHOLD} pruned, continuous mu only (discrete code only with "
        f"include_discrete); {FACTORVAE_VOTE_SIZE} images per vote with a uniformly drawn fixed "
        f"factor; majority-vote classifier fit on {FACTORVAE_NUM_TRAIN} votes, score = accuracy "
        f"on {FACTORVAE_NUM_EVAL} held-out votes (train accuracy reported too); no active dim "
        "-> 0."
    ),
    "discrete_accuracy": (
        "Unsupervised discrete accuracy: confusion matrix of learned categories vs true shapes "
        f"over {DISCRETE_NUM_SAMPLES} random images, best one-to-one match "
        "(scipy linear_sum_assignment), accuracy in [0, 1]; unmatched categories count as errors."
    ),
    "mig": (
        f"MIG as disentanglement_lib computes it: {MIG_NUM_SAMPLES} random images, every "
        f"continuous dim of mu discretised into {MIG_NUM_BINS} equal-width bins over its sample "
        "range (the discrete code used as is), plug-in mutual information (nats) with each "
        "factor that varies, divided by the factor's entropy; gap between the top two code "
        "columns per factor, mean over factors."
    ),
}

# Keyword overrides `evaluate_model` accepts on top of its named arguments, with their types
# (for CLIs: see `parse_overrides`).
OVERRIDES: dict[str, type] = {
    "num_global": int,  # global sample shared by every protocol (variances, KL, accuracy, MIG)
    "num_votes": int,  # authors_factorvae
    "vote_size": int,  # authors_factorvae
    "kl_threshold": float,  # authors_factorvae
    "factorvae_num_train": int,
    "factorvae_num_eval": int,
    "factorvae_vote_size": int,
    "factorvae_std_threshold": float,
    "factorvae_include_discrete": bool,
    "mig_num_bins": int,
}


# --- data types -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Representation:
    """Representations of N images.

    mu_NM: float64 continuous code (posterior means for a model).
    sigma_NM: float64 posterior standard deviations, or None when there is no posterior (e.g. the
        true factors): then every continuous dim counts as active in the KL test.
    codes_N: int64 discrete code, or None (no discrete code, or not asked for).
    """

    mu_NM: np.ndarray
    sigma_NM: np.ndarray | None
    codes_N: np.ndarray | None

    def __post_init__(self) -> None:
        if self.mu_NM.ndim != 2:
            raise ValueError(f"mu_NM must be 2-D, got shape {self.mu_NM.shape}")
        n = self.mu_NM.shape[0]
        if self.sigma_NM is not None and self.sigma_NM.shape != self.mu_NM.shape:
            raise ValueError(f"sigma_NM shape {self.sigma_NM.shape} != mu {self.mu_NM.shape}")
        if self.codes_N is not None and self.codes_N.shape != (n,):
            raise ValueError(f"codes_N must have shape ({n},), got {self.codes_N.shape}")

    def __len__(self) -> int:
        return int(self.mu_NM.shape[0])


class Representer:
    """Maps image indices to representations. Subclasses implement `__call__`.

    has_codes: whether the representation has a discrete code at all.
    """

    has_codes: bool = False

    def __call__(self, indices_N: np.ndarray, *, codes: bool = True) -> Representation:
        """Representation of the images `indices_N` (N,); codes_N only if `codes` and has_codes."""
        raise NotImplementedError

    def codes(self, indices_N: np.ndarray, mu_NM: np.ndarray) -> np.ndarray:
        """Discrete codes (N,) int64 of images whose mu_NM is already known (a model then skips
        the encoder). The default simply represents the images again."""
        rep = self(indices_N, codes=True)
        if rep.codes_N is None:
            raise ValueError("this representer has no discrete code")
        return rep.codes_N


class FactorRepresenter(Representer):
    """The TRUE factor classes as a representation: the oracle of every known-answer check.

    continuous: factor names whose class index (as float64) forms mu; discrete: the factor whose
    class is the discrete code, or None. sigma is None (no posterior: all dims are active).
    """

    def __init__(
        self,
        dataset: DSprites,
        continuous: Sequence[str] = ("scale", "orientation", "posX", "posY"),
        discrete: str | None = "shape",
    ) -> None:
        self.classes_NL = np.asarray(dataset.latent_classes)
        self.columns = [LATENT_NAMES.index(name) for name in continuous]
        self.discrete_column = None if discrete is None else LATENT_NAMES.index(discrete)
        self.has_codes = discrete is not None

    def __call__(self, indices_N: np.ndarray, *, codes: bool = True) -> Representation:
        classes_NL = self.classes_NL[np.asarray(indices_N, dtype=np.int64)]
        codes_N = None
        if codes and self.discrete_column is not None:
            codes_N = classes_NL[:, self.discrete_column].astype(np.int64)
        return Representation(classes_NL[:, self.columns].astype(np.float64), None, codes_N)


class ModelRepresenter(Representer):
    """Representations from a CascadeVAE, batch by batch, in eval mode under torch.no_grad.

    Works on a private copy of the model: the caller's model (often mid-training) keeps its mode,
    device and memory layout. The copy is tuned for inference without changing what it
    computes: channels_last layout on CPU (about 1.5x faster for these convolutions here) and
    in-place ReLUs. Repeated indices in a request are computed once.
    `code_images` counts the images whose discrete code was computed (the decoder runs K times
    for each), for cost reports.
    """

    def __init__(
        self,
        model: CascadeVAE,
        dataset: DSprites,
        device: str | torch.device = "cpu",
        batch_size: int = 1024,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.dataset = dataset
        self.batch_size = batch_size
        self.channels_last = self.device.type == "cpu"
        net = copy.deepcopy(model).to(self.device).eval().requires_grad_(False)
        if self.channels_last:
            net = net.to(memory_format=torch.channels_last)
        for layer in net.modules():
            if isinstance(layer, torch.nn.ReLU):
                layer.inplace = True  # same values, less memory traffic (15 % less CPU time)
        self.model = net
        self.num_continuous = int(model.num_continuous)
        self.has_codes = int(model.num_categories) > 0
        self.code_images = 0

    def _images(self, indices_B: np.ndarray) -> torch.Tensor:
        """float32 images (B, 1, 64, 64) in {0, 1} on the device."""
        x_B1HW = torch.from_numpy(self.dataset.images(indices_B)).unsqueeze(1)
        x_B1HW = x_B1HW.to(device=self.device, dtype=torch.float32)
        if self.channels_last:
            x_B1HW = x_B1HW.contiguous(memory_format=torch.channels_last)
        return x_B1HW

    def _codes(self, z_BM: torch.Tensor, x_B1HW: torch.Tensor) -> np.ndarray:
        self.code_images += int(z_BM.shape[0])
        # torch.argmin returns the first minimum on ties, as np.argmin.
        return self.model.infer_codes(z_BM, x_B1HW).cpu().numpy().astype(np.int64)

    @torch.no_grad()
    def __call__(self, indices_N: np.ndarray, *, codes: bool = True) -> Representation:
        unique_U, inverse_N = np.unique(np.asarray(indices_N, dtype=np.int64), return_inverse=True)
        with_codes = codes and self.has_codes
        mu_UM = np.empty((len(unique_U), self.num_continuous))
        sigma_UM = np.empty_like(mu_UM)
        codes_U = np.empty(len(unique_U), dtype=np.int64) if with_codes else None
        for start in range(0, len(unique_U), self.batch_size):
            rows = slice(start, start + self.batch_size)
            x_B1HW = self._images(unique_U[rows])
            mu_BM, sigma_BM = self.model.encode(x_B1HW)
            mu_UM[rows] = mu_BM.cpu().numpy()
            sigma_UM[rows] = sigma_BM.cpu().numpy()
            if codes_U is not None:
                codes_U[rows] = self._codes(mu_BM, x_B1HW)
        return Representation(
            mu_UM[inverse_N],
            sigma_UM[inverse_N],
            None if codes_U is None else codes_U[inverse_N],
        )

    @torch.no_grad()
    def codes(self, indices_N: np.ndarray, mu_NM: np.ndarray) -> np.ndarray:
        if not self.has_codes:
            raise ValueError("the model has no discrete code (num_categories == 0)")
        unique_U, first_U, inverse_N = np.unique(
            np.asarray(indices_N, dtype=np.int64), return_index=True, return_inverse=True
        )
        # mu came from this model's float32 encoder: the float64 -> float32 round trip is exact.
        mu_UM = np.asarray(mu_NM)[first_U]
        codes_U = np.empty(len(unique_U), dtype=np.int64)
        for start in range(0, len(unique_U), self.batch_size):
            rows = slice(start, start + self.batch_size)
            z_BM = torch.from_numpy(mu_UM[rows]).to(device=self.device, dtype=torch.float32)
            codes_U[rows] = self._codes(z_BM, self._images(unique_U[rows]))
        return codes_U[inverse_N]


@dataclass(frozen=True)
class GlobalSample:
    """A random sample of images with their factor classes and representations.

    indices_N: int64 image indices; classes_NL: their factor classes (all L factors).
    """

    indices_N: np.ndarray
    classes_NL: np.ndarray
    rep: Representation


@dataclass(frozen=True)
class MetricResult:
    """One metric's outcome, labelled by its protocol.

    score: the headline number. settings: the protocol's parameters as run. details: extra
    outputs (vote matrices, kept dims, train accuracy, ...).
    """

    protocol: str
    score: float
    settings: dict[str, Any]
    details: dict[str, Any] = field(default_factory=dict)


# --- small pure functions ---------------------------------------------------------------------


def varying_factors(latent_sizes: Iterable[int]) -> list[int]:
    """Indices of the factors with more than one value (dSprites: [1, 2, 3, 4, 5])."""
    return [i for i, size in enumerate(latent_sizes) if int(size) > 1]


def gini_variance(codes_N: np.ndarray) -> float:
    """(n^2 - sum_k c_k^2) / (2 n (n - 1)) of a categorical sample: the sample variance with
    (x_i - x_j)^2 replaced by [x_i != x_j] (half the summed sample variances of the one-hot)."""
    n = codes_N.shape[0]
    if n < 2:
        raise ValueError(f"the Gini variance needs at least 2 items, got {n}")
    counts_K = np.unique(codes_N, return_counts=True)[1].astype(np.float64)
    return float((n * n - np.sum(counts_K**2)) / (2.0 * n * (n - 1)))


def mean_kl_per_dim(mu_NM: np.ndarray, sigma_NM: np.ndarray) -> np.ndarray:
    """(M,) mean over N of KL(N(mu, sigma^2) || N(0, 1)) per dim, with the training loss's
    log(sigma + 1e-8)."""
    kl_NM = 0.5 * (mu_NM**2 + sigma_NM**2 - 2.0 * np.log(sigma_NM + 1e-8) - 1.0)
    return kl_NM.mean(axis=0)


def majority_vote_accuracy(votes_DF: np.ndarray) -> float:
    """Accuracy of the classifier dim -> its most-voted factor, on the votes it was fit on."""
    total = votes_DF.sum()
    if total == 0:
        raise ValueError("no votes")
    return float(votes_DF.max(axis=1).sum() / total)


def histogram_discretize(x_NM: np.ndarray, num_bins: int) -> np.ndarray:
    """(N, M) int64 bin of each value: `num_bins` equal-width bins over each column's own
    [min, max] (the max falls in the last bin; a constant column is all bin 0), the same bins
    as np.histogram + np.digitize in disentanglement_lib."""
    out_NM = np.zeros(x_NM.shape, dtype=np.int64)
    for j in range(x_NM.shape[1]):
        low, high = float(x_NM[:, j].min()), float(x_NM[:, j].max())
        if high > low:
            inner_edges = np.linspace(low, high, num_bins + 1)[1:-1]
            out_NM[:, j] = np.searchsorted(inner_edges, x_NM[:, j], side="right")
    return out_NM


def discrete_entropy(labels_N: np.ndarray) -> float:
    """Plug-in entropy (nats) of a discrete sample."""
    p_K = np.unique(labels_N, return_counts=True)[1] / labels_N.shape[0]
    return float(-np.sum(p_K * np.log(p_K)))


def discrete_mutual_information(a_N: np.ndarray, b_N: np.ndarray) -> float:
    """Plug-in mutual information (nats) of two discrete samples of equal length."""
    if a_N.shape != b_N.shape or a_N.ndim != 1:
        raise ValueError(f"need two 1-D samples of equal length, got {a_N.shape}, {b_N.shape}")
    _, a_N = np.unique(a_N, return_inverse=True)
    _, b_N = np.unique(b_N, return_inverse=True)
    num_a, num_b = int(a_N.max()) + 1, int(b_N.max()) + 1
    joint_AB = np.bincount(a_N * num_b + b_N, minlength=num_a * num_b).reshape(num_a, num_b)
    joint_AB = joint_AB / a_N.shape[0]
    outer_AB = np.outer(joint_AB.sum(axis=1), joint_AB.sum(axis=0))
    nonzero = joint_AB > 0
    mi = np.sum(joint_AB[nonzero] * np.log(joint_AB[nonzero] / outer_AB[nonzero]))
    return max(float(mi), 0.0)  # rounding can leave -1e-17 for independent samples


# --- authors' FactorVAE variant ---------------------------------------------------------------


def _kept_continuous_dims(rep: Representation, kl_threshold: float) -> np.ndarray:
    """Indices of the continuous dims the authors' variant keeps: mean KL > threshold (every dim
    when sigma is None), and a nonzero global variance (a constant dim has no scale to divide
    by; the authors' +1e-10 would instead let it win every vote)."""
    active_M = np.ones(rep.mu_NM.shape[1], dtype=bool)
    if rep.sigma_NM is not None:
        active_M = mean_kl_per_dim(rep.mu_NM, rep.sigma_NM) > kl_threshold
    return np.flatnonzero(active_M & (rep.mu_NM.var(axis=0, ddof=1) > 0))


def _continuous_vote_ratios(
    global_rep: Representation, vote_mu_VPM: np.ndarray, kl_threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(kept dims, their global scale (D,), local variance / global scale of every vote (V, D))."""
    kept = _kept_continuous_dims(global_rep, kl_threshold)
    scale_D = global_rep.mu_NM[:, kept].var(axis=0, ddof=1)
    return kept, scale_D, vote_mu_VPM[:, :, kept].var(axis=1, ddof=1) / scale_D


def _global_gini(global_rep: Representation) -> float:
    """Global Gini variance of the discrete code; 0 without one (a constant code is dropped)."""
    return 0.0 if global_rep.codes_N is None else gini_variance(global_rep.codes_N)


def _fewest_unequal_pairs(codes_VP: np.ndarray) -> np.ndarray:
    """(V,) the fewest unequal ordered pairs P^2 - sum_k c_k^2 any completion of each vote's
    codes can have (-1 = not computed): all unknown codes joining the largest category so far
    (sum_k c_k^2 is convex). With every code known, the vote's exact count."""
    num_k = max(int(codes_VP.max()) + 1, 1)
    counts_VK = np.stack([(codes_VP == k).sum(axis=1) for k in range(num_k)], axis=1)
    largest_V = counts_VK.max(axis=1)
    unknown_V = (codes_VP < 0).sum(axis=1)
    squares_V = (counts_VK**2).sum(axis=1) - largest_V**2 + (largest_V + unknown_V) ** 2
    return codes_VP.shape[1] ** 2 - squares_V


def _vote_winners(
    ratio_VD: np.ndarray, codes_VP: np.ndarray | None, gini_global: float
) -> tuple[np.ndarray, np.ndarray]:
    """Winning dim of each vote: argmin over [continuous ratios..., discrete ratio].

    ratio_VD: local variance / global scale of the continuous dims. codes_VP: the discrete code
    of each vote image, -1 where not computed (None: no discrete dim). The discrete ratio is
    gini(vote codes) / gini_global; it is the last column, so it wins only when strictly below
    every continuous ratio (np.argmin takes the first minimum).

    Codes not computed yet can lower the vote's Gini variance at most to what
    `_fewest_unequal_pairs` allows: that bounds the discrete ratio from below, and a vote whose
    bound already reaches its continuous minimum is decided without the rest of its codes.
    With every code known the bound is the exact ratio.

    Returns (winner_V, undecided_V): winner_V is valid where undecided_V is False.
    """
    num_votes, num_cont = ratio_VD.shape
    if codes_VP is None:
        return ratio_VD.argmin(axis=1), np.zeros(num_votes, dtype=bool)
    if num_cont == 0:  # the discrete code is the only dim: it wins every vote
        return np.zeros(num_votes, dtype=np.int64), np.zeros(num_votes, dtype=bool)
    vote_size = codes_VP.shape[1]
    discrete_bound_V = _fewest_unequal_pairs(codes_VP) / (2.0 * vote_size * (vote_size - 1))
    discrete_bound_V = discrete_bound_V / gini_global
    unknown_V = (codes_VP < 0).sum(axis=1)
    min_cont_V = ratio_VD.min(axis=1)
    complete_V = unknown_V == 0
    discrete_wins_V = complete_V & (discrete_bound_V < min_cont_V)
    winner_V = np.where(discrete_wins_V, num_cont, ratio_VD.argmin(axis=1))
    undecided_V = ~complete_V & (discrete_bound_V < min_cont_V)
    return winner_V, undecided_V


def _authors_factorvae_core(
    global_rep: Representation,
    vote_mu_VPM: np.ndarray,
    vote_codes_VP: np.ndarray | None,
    vote_factor_V: np.ndarray,
    num_factors: int,
    kl_threshold: float = AUTHORS_KL_THRESHOLD,
) -> MetricResult:
    """The authors' FactorVAE-metric variant over arrays.

    global_rep: the global sample (KL activity, global scales, global Gini variance).
    vote_mu_VPM / vote_codes_VP: the vote images' continuous code and discrete code (None: no
    discrete dim; -1 entries: codes not computed, allowed only where they cannot change the
    vote, see `_vote_winners`). vote_factor_V: the fixed factor of each vote, in [0, F).
    Dims: kept continuous dims in order, then the discrete code (if its global Gini variance is
    > 0). No dim at all -> score 1 / F (the authors' value for no kept dim).
    """
    num_votes, vote_size, _ = vote_mu_VPM.shape
    kept, scale_D, ratio_VD = _continuous_vote_ratios(global_rep, vote_mu_VPM, kl_threshold)
    gini_global = _global_gini(global_rep) if vote_codes_VP is not None else 0.0
    use_discrete = gini_global > 0
    settings = {"kl_threshold": kl_threshold, "num_votes": num_votes, "vote_size": vote_size}
    details: dict[str, Any] = {
        "kept_dims": tuple(int(j) for j in kept),
        "active_dims": int(len(kept)),
        "discrete_used": bool(use_discrete),
        "global_scale": scale_D,
        "global_gini": gini_global,
    }
    num_dims = len(kept) + int(use_discrete)
    if num_dims == 0:
        details["votes_DF"] = np.zeros((0, num_factors), dtype=np.int64)
        return MetricResult("authors_factorvae", 1.0 / num_factors, settings, details)

    winner_V, undecided_V = _vote_winners(
        ratio_VD, vote_codes_VP if use_discrete else None, gini_global
    )
    if undecided_V.any():
        raise ValueError(f"{int(undecided_V.sum())} votes need discrete codes that are missing")
    votes_DF = np.zeros((num_dims, num_factors), dtype=np.int64)
    np.add.at(votes_DF, (winner_V, vote_factor_V), 1)
    details["votes_DF"] = votes_DF
    return MetricResult("authors_factorvae", majority_vote_accuracy(votes_DF), settings, details)


def draw_global_sample(
    represent: Representer,
    dataset: DSprites,
    rng: np.random.Generator,
    num_images: int | None,
    *,
    codes: bool = True,
) -> GlobalSample:
    """`num_images` uniform random images (with replacement; None = every image, in order)."""
    if num_images is None:
        indices_N = np.arange(len(dataset), dtype=np.int64)
    else:
        if num_images < 2:
            raise ValueError(f"a global sample needs at least 2 images, got {num_images}")
        indices_N = sample_random_indices(dataset.latent_sizes, rng, num_images)
    classes_NL = np.asarray(dataset.latent_classes)[indices_N]
    return GlobalSample(indices_N, classes_NL, represent(indices_N, codes=codes))


def _with_codes(sample: GlobalSample, represent: Representer) -> GlobalSample:
    """`sample` with its discrete codes filled in when the representer has them."""
    if sample.rep.codes_N is not None or not represent.has_codes:
        return sample
    codes_N = represent.codes(sample.indices_N, sample.rep.mu_NM)
    rep = Representation(sample.rep.mu_NM, sample.rep.sigma_NM, codes_N)
    return GlobalSample(sample.indices_N, sample.classes_NL, rep)


def compute_authors_factorvae(
    represent: Representer,
    dataset: DSprites,
    rng: np.random.Generator,
    *,
    num_global: int | None = AUTHORS_NUM_GLOBAL,
    num_votes: int = AUTHORS_NUM_VOTES,
    vote_size: int = AUTHORS_VOTE_SIZE,
    kl_threshold: float = AUTHORS_KL_THRESHOLD,
    global_sample: GlobalSample | None = None,
    lazy_codes: bool = True,
) -> MetricResult:
    """The authors' FactorVAE-metric variant (see PROTOCOLS["authors_factorvae"]).

    Votes: num_votes // F per factor that varies (dSprites: 160 each), factor by factor. Only the
    global sample and the vote images are represented. lazy_codes: compute the vote images'
    discrete codes in stages (LAZY_CODE_STAGES) and only for votes the codes can still change;
    the score is identical to computing them all (tests check it), at a fraction of the
    decoder passes. `global_sample` (e.g. shared with other protocols) replaces drawing one.
    """
    factors = varying_factors(dataset.latent_sizes)
    per_factor = num_votes // len(factors)
    if per_factor < 1 or vote_size < 2:
        raise ValueError(
            f"need >= 1 vote per factor and vote_size >= 2, got {num_votes}, {vote_size}"
        )
    if global_sample is None:
        global_sample = draw_global_sample(represent, dataset, rng, num_global, codes=True)
    global_sample = _with_codes(global_sample, represent)

    vote_factor_V = np.repeat(np.arange(len(factors)), per_factor)
    vote_idx_VP = np.stack(
        [
            sample_indices_with_fixed_factor(
                dataset.latent_sizes,
                rng,
                factors[f],
                int(rng.integers(dataset.latent_sizes[factors[f]])),
                vote_size,
            )
            for f in vote_factor_V
        ]
    )
    num_v = len(vote_factor_V)
    vote_rep = represent(vote_idx_VP.ravel(), codes=False)
    vote_mu_VPM = vote_rep.mu_NM.reshape(num_v, vote_size, -1)

    vote_codes_VP = None
    gini_global = _global_gini(global_sample.rep)
    if gini_global > 0:
        # Codes of the vote images, stage by stage, only for votes they can still change.
        vote_codes_VP = np.full((num_v, vote_size), -1, dtype=np.int64)
        ratio_VD = _continuous_vote_ratios(global_sample.rep, vote_mu_VPM, kl_threshold)[2]
        stages = [s for s in LAZY_CODE_STAGES if s < vote_size] if lazy_codes else []
        done = 0
        for upto in [*stages, vote_size]:
            need_V = _vote_winners(ratio_VD, vote_codes_VP, gini_global)[1]
            if not lazy_codes:  # the reference path: every code of every vote
                need_V = np.ones(num_v, dtype=bool)
            if not need_V.any():
                break
            idx_BQ = vote_idx_VP[need_V, done:upto]
            mu_NM = vote_mu_VPM[need_V, done:upto].reshape(idx_BQ.size, -1)
            codes_N = represent.codes(idx_BQ.ravel(), mu_NM)
            vote_codes_VP[need_V, done:upto] = codes_N.reshape(idx_BQ.shape)
            done = upto

    result = _authors_factorvae_core(
        global_sample.rep, vote_mu_VPM, vote_codes_VP, vote_factor_V, len(factors), kl_threshold
    )
    result.settings.update(num_global=len(global_sample.rep), lazy_codes=lazy_codes)
    if vote_codes_VP is not None:
        result.details["vote_codes_computed"] = int((vote_codes_VP >= 0).sum())
    return result


# --- standard FactorVAE metric (disentanglement_lib) ------------------------------------------


def _factorvae_votes(
    global_var_D: np.ndarray,
    vote_mu_VPD: np.ndarray,
    vote_codes_VP: np.ndarray | None,
    vote_factor_V: np.ndarray,
    num_factors: int,
    gini_global: float,
) -> np.ndarray:
    """Vote matrix (D, F): each vote goes to (argmin_d local variance / global variance, factor).
    The discrete code, when given, is the last dim with Gini variances."""
    ratio_VD = vote_mu_VPD.var(axis=1, ddof=1) / global_var_D
    if vote_codes_VP is not None:
        gini_V = np.array([gini_variance(codes_P) for codes_P in vote_codes_VP])
        ratio_VD = np.concatenate([ratio_VD, (gini_V / gini_global)[:, None]], axis=1)
    votes_DF = np.zeros((ratio_VD.shape[1], num_factors), dtype=np.int64)
    np.add.at(votes_DF, (ratio_VD.argmin(axis=1), vote_factor_V), 1)
    return votes_DF


def _factorvae_core(
    global_mu_NM: np.ndarray,
    train_mu_VPM: np.ndarray,
    train_factor_V: np.ndarray,
    eval_mu_VPM: np.ndarray,
    eval_factor_V: np.ndarray,
    num_factors: int,
    std_threshold: float = FACTORVAE_STD_THRESHOLD,
    global_codes_N: np.ndarray | None = None,
    train_codes_VP: np.ndarray | None = None,
    eval_codes_VP: np.ndarray | None = None,
) -> MetricResult:
    """The FactorVAE metric as disentanglement_lib computes it, over arrays.

    Dims with global std < std_threshold are pruned; votes (train and eval) are argmin of local
    variance / global variance (both ddof 1); the classifier maps each dim to its most-voted
    factor on the train votes; score = its accuracy on the eval votes. With codes given, the
    discrete code is one more dim with Gini variances (pruned by the same threshold on
    sqrt(Gini)). No active dim -> train and eval accuracy 0 (as disentanglement_lib).
    """
    global_var_M = global_mu_NM.var(axis=0, ddof=1)
    active = np.flatnonzero(np.sqrt(global_var_M) >= std_threshold)
    with_codes = global_codes_N is not None and train_codes_VP is not None
    gini_global = gini_variance(global_codes_N) if with_codes else 0.0
    use_discrete = with_codes and np.sqrt(gini_global) >= std_threshold
    settings = {
        "std_threshold": std_threshold,
        "num_train": int(train_mu_VPM.shape[0]),
        "num_eval": int(eval_mu_VPM.shape[0]),
        "vote_size": int(train_mu_VPM.shape[1]),
        "include_discrete": bool(with_codes),
    }
    details: dict[str, Any] = {
        "active_dims": tuple(int(j) for j in active),
        "discrete_used": bool(use_discrete),
        "global_variance": global_var_M,
    }
    if len(active) + int(use_discrete) == 0:
        details.update(train_accuracy=0.0, eval_accuracy=0.0)
        return MetricResult("factorvae", 0.0, settings, details)

    def votes(mu_VPM: np.ndarray, codes_VP: np.ndarray | None, factor_V: np.ndarray) -> np.ndarray:
        codes = codes_VP if use_discrete else None
        return _factorvae_votes(
            global_var_M[active], mu_VPM[:, :, active], codes, factor_V, num_factors, gini_global
        )

    train_DF = votes(train_mu_VPM, train_codes_VP, train_factor_V)
    eval_DF = votes(eval_mu_VPM, eval_codes_VP, eval_factor_V)
    classifier_D = train_DF.argmax(axis=1)
    dims_D = np.arange(train_DF.shape[0])
    train_accuracy = float(train_DF[dims_D, classifier_D].sum() / train_DF.sum())
    eval_accuracy = float(eval_DF[dims_D, classifier_D].sum() / eval_DF.sum())
    details.update(
        train_accuracy=train_accuracy,
        eval_accuracy=eval_accuracy,
        train_votes_DF=train_DF,
        eval_votes_DF=eval_DF,
        classifier_D=classifier_D,
    )
    return MetricResult("factorvae", eval_accuracy, settings, details)


def _sample_uniform_factor_votes(
    dataset: DSprites, rng: np.random.Generator, num_votes: int, vote_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """disentanglement_lib's votes: a uniformly drawn factor (index into the varying factors,
    (V,)) fixed at a uniformly drawn value; image indices (V, P)."""
    factors = varying_factors(dataset.latent_sizes)
    factor_V = rng.integers(len(factors), size=num_votes)
    idx_VP = np.empty((num_votes, vote_size), dtype=np.int64)
    for v, f in enumerate(factor_V):
        size = dataset.latent_sizes[factors[f]]
        value = int(rng.integers(size))
        idx_VP[v] = sample_indices_with_fixed_factor(
            dataset.latent_sizes, rng, factors[f], value, vote_size
        )
    return factor_V, idx_VP


def compute_factorvae(
    represent: Representer,
    dataset: DSprites,
    rng: np.random.Generator,
    *,
    num_global: int | None = FACTORVAE_NUM_GLOBAL,
    num_train: int = FACTORVAE_NUM_TRAIN,
    num_eval: int = FACTORVAE_NUM_EVAL,
    vote_size: int = FACTORVAE_VOTE_SIZE,
    std_threshold: float = FACTORVAE_STD_THRESHOLD,
    include_discrete: bool = False,
    global_sample: GlobalSample | None = None,
) -> MetricResult:
    """The standard FactorVAE metric (see PROTOCOLS["factorvae"]). score = held-out accuracy;
    details["train_accuracy"] too. Represents num_global + (num_train + num_eval) * vote_size
    images (970,000 with the defaults: lower num_train / num_eval for quick evaluations).

    include_discrete=False (default) is disentanglement_lib's definition on mu. True adds the
    discrete code as one more dim with Gini variances, as the authors' variant does, so that a
    joint model's discrete factor can be read by the metric at all.
    """
    if num_train < 1 or num_eval < 1 or vote_size < 2:
        raise ValueError(
            f"need num_train, num_eval >= 1, vote_size >= 2; got {num_train}, "
            f"{num_eval}, {vote_size}"
        )
    codes = include_discrete and represent.has_codes
    if global_sample is None:
        global_sample = draw_global_sample(represent, dataset, rng, num_global, codes=codes)
    if codes:
        global_sample = _with_codes(global_sample, represent)
    train_factor_V, train_idx_VP = _sample_uniform_factor_votes(dataset, rng, num_train, vote_size)
    eval_factor_V, eval_idx_VP = _sample_uniform_factor_votes(dataset, rng, num_eval, vote_size)
    train_rep = represent(train_idx_VP.ravel(), codes=codes)
    eval_rep = represent(eval_idx_VP.ravel(), codes=codes)

    def as_votes(rep: Representation) -> tuple[np.ndarray, np.ndarray | None]:
        codes_VP = None if rep.codes_N is None else rep.codes_N.reshape(-1, vote_size)
        return rep.mu_NM.reshape(-1, vote_size, rep.mu_NM.shape[1]), codes_VP

    train_mu, train_codes = as_votes(train_rep)
    eval_mu, eval_codes = as_votes(eval_rep)
    result = _factorvae_core(
        global_sample.rep.mu_NM,
        train_mu,
        train_factor_V,
        eval_mu,
        eval_factor_V,
        len(varying_factors(dataset.latent_sizes)),
        std_threshold,
        global_sample.rep.codes_N if codes else None,
        train_codes,
        eval_codes,
    )
    result.settings.update(num_global=len(global_sample.rep))
    return result


# --- unsupervised discrete accuracy -----------------------------------------------------------


def _discrete_accuracy_core(codes_N: np.ndarray, shapes_N: np.ndarray) -> MetricResult:
    """Best one-to-one match of learned categories (K) to true shapes (S), any K and S:
    accuracy = matched counts of the confusion matrix (K, S) / N. With K > S the unmatched
    categories, with K < S the unmatched shapes, count as errors."""
    if codes_N.shape != shapes_N.shape or codes_N.ndim != 1 or codes_N.size == 0:
        raise ValueError(
            f"need two non-empty 1-D arrays of equal length, got {codes_N.shape}, {shapes_N.shape}"
        )
    if codes_N.min() < 0 or shapes_N.min() < 0:
        raise ValueError("codes and shapes must be >= 0")
    confusion_KS = np.zeros((int(codes_N.max()) + 1, int(shapes_N.max()) + 1), dtype=np.int64)
    np.add.at(confusion_KS, (codes_N, shapes_N), 1)
    rows, cols = linear_sum_assignment(confusion_KS, maximize=True)
    accuracy = float(confusion_KS[rows, cols].sum() / codes_N.size)
    details = {
        "confusion_KS": confusion_KS,
        "category_to_shape": {int(k): int(s) for k, s in zip(rows, cols, strict=True)},
    }
    return MetricResult("discrete_accuracy", accuracy, {"num_samples": int(codes_N.size)}, details)


def compute_discrete_accuracy(
    represent: Representer,
    dataset: DSprites,
    rng: np.random.Generator,
    *,
    num_samples: int | None = DISCRETE_NUM_SAMPLES,
    global_sample: GlobalSample | None = None,
) -> MetricResult:
    """Unsupervised discrete accuracy (see PROTOCOLS["discrete_accuracy"]) over a random sample
    (or `global_sample`). Raises ValueError for a representer without a discrete code."""
    if not represent.has_codes:
        raise ValueError("discrete_accuracy needs a discrete code (num_categories >= 1)")
    if global_sample is None:
        global_sample = draw_global_sample(represent, dataset, rng, num_samples, codes=True)
    global_sample = _with_codes(global_sample, represent)
    return _discrete_accuracy_core(
        global_sample.rep.codes_N, global_sample.classes_NL[:, SHAPE_FACTOR]
    )


# --- MIG ------------------------------------------------------------------------------------


def _mig_core(
    mu_NM: np.ndarray,
    codes_N: np.ndarray | None,
    factors_NF: np.ndarray,
    num_bins: int = MIG_NUM_BINS,
) -> MetricResult:
    """Mutual information gap over arrays.

    Code columns C: each dim of mu_NM histogram-discretised into num_bins bins, then the
    discrete code as is (already discrete). mi_CF[c, f] = I(code c; factor f) in nats; per
    factor, (largest - second largest) / H(factor) (second = 0 with a single column); score =
    mean over factors. factors_NF: classes of the factors that vary (each must vary here).
    """
    columns_NC = histogram_discretize(mu_NM, num_bins)
    if codes_N is not None:
        columns_NC = np.concatenate([columns_NC, codes_N[:, None].astype(np.int64)], axis=1)
    num_c, num_f = columns_NC.shape[1], factors_NF.shape[1]
    if num_c == 0:
        raise ValueError("MIG needs at least one code column")
    entropy_F = np.array([discrete_entropy(factors_NF[:, f]) for f in range(num_f)])
    if (entropy_F <= 0).any():
        raise ValueError(f"factors {np.flatnonzero(entropy_F <= 0).tolist()} are constant here")
    mi_CF = np.array(
        [
            [discrete_mutual_information(columns_NC[:, c], factors_NF[:, f]) for f in range(num_f)]
            for c in range(num_c)
        ]
    )
    top_2F = np.sort(np.vstack([mi_CF, np.zeros((1, num_f))]), axis=0)[::-1][:2]
    gap_F = (top_2F[0] - top_2F[1]) / entropy_F
    settings = {"num_samples": int(mu_NM.shape[0]), "num_bins": num_bins}
    details = {"mi_CF": mi_CF, "entropy_F": entropy_F, "gap_F": gap_F}
    return MetricResult("mig", float(gap_F.mean()), settings, details)


def compute_mig(
    represent: Representer,
    dataset: DSprites,
    rng: np.random.Generator,
    *,
    num_samples: int | None = MIG_NUM_SAMPLES,
    num_bins: int = MIG_NUM_BINS,
    global_sample: GlobalSample | None = None,
) -> MetricResult:
    """MIG (see PROTOCOLS["mig"]) over a random sample (or `global_sample`): every continuous
    dim, plus the discrete code when the representer has one."""
    if global_sample is None:
        global_sample = draw_global_sample(represent, dataset, rng, num_samples, codes=True)
    global_sample = _with_codes(global_sample, represent)
    factors = varying_factors(dataset.latent_sizes)
    return _mig_core(
        global_sample.rep.mu_NM,
        global_sample.rep.codes_N,
        global_sample.classes_NL[:, factors],
        num_bins,
    )


# --- the combined evaluator -------------------------------------------------------------------


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """["factorvae_num_train=1000", "num_global=none", ...] -> typed keyword overrides for
    `evaluate_model` (for CLIs). "none" sets num_global to None (every image)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key, text = key.strip(), text.strip()
        if not sep or key not in OVERRIDES:
            raise ValueError(f"bad override {item!r}: use KEY=VALUE with KEY in {list(OVERRIDES)}")
        kind = OVERRIDES[key]
        if key == "num_global" and text.lower() == "none":
            out[key] = None
        elif kind is bool:
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"bad override {item!r}: {key} takes true or false")
            out[key] = text.lower() in ("true", "1")
        else:
            try:
                out[key] = kind(text)
            except ValueError as err:
                raise ValueError(f"bad override {item!r}: {err}") from None
    return out


def evaluate_model(
    model: CascadeVAE,
    dataset: DSprites,
    *,
    device: str | torch.device = "cpu",
    seed: int = 0,
    protocols: Sequence[str] = ("authors_factorvae", "discrete_accuracy"),
    batch_size: int = 1024,
    **overrides: Any,
) -> dict[str, float]:
    """Evaluate `model` on `dataset` with the given protocols; flat keys (only those asked):
    eval/authors_factorvae, eval/active_dims (KL-active continuous dims, with the authors'
    variant), eval/factorvae (held-out), eval/factorvae_train, eval/discrete_accuracy, eval/mig.

    One global sample of `num_global` images (default 10,000; None = all) is represented once
    and shared by every protocol that needs one; each protocol draws its votes from its own
    random stream (seeded by `seed` and the protocol), so a protocol's score does not depend on
    which others are asked. Overrides: see OVERRIDES. The model is not modified.
    """
    unknown = sorted(set(overrides) - set(OVERRIDES))
    if unknown:
        raise TypeError(f"unknown overrides {unknown}; allowed: {list(OVERRIDES)}")
    bad = [p for p in protocols if p not in PROTOCOLS]
    if bad:
        raise ValueError(f"unknown protocols {bad}; choose from {list(PROTOCOLS)}")
    if "discrete_accuracy" in protocols and model.num_categories == 0:
        raise ValueError("discrete_accuracy needs a model with a discrete code (num_categories>0)")
    get = overrides.get
    include_discrete = bool(get("factorvae_include_discrete", False))
    needs_codes = any(p in protocols for p in ("authors_factorvae", "discrete_accuracy", "mig"))
    needs_codes = needs_codes or ("factorvae" in protocols and include_discrete)

    represent = ModelRepresenter(model, dataset, device=device, batch_size=batch_size)
    streams = np.random.SeedSequence(seed).spawn(1 + len(PROTOCOLS))
    rngs = {name: np.random.default_rng(s) for name, s in zip(PROTOCOLS, streams[1:], strict=True)}
    sample = draw_global_sample(
        represent,
        dataset,
        np.random.default_rng(streams[0]),
        get("num_global", AUTHORS_NUM_GLOBAL),
        codes=needs_codes,
    )
    out: dict[str, float] = {}
    if "authors_factorvae" in protocols:
        result = compute_authors_factorvae(
            represent,
            dataset,
            rngs["authors_factorvae"],
            num_votes=get("num_votes", AUTHORS_NUM_VOTES),
            vote_size=get("vote_size", AUTHORS_VOTE_SIZE),
            kl_threshold=get("kl_threshold", AUTHORS_KL_THRESHOLD),
            global_sample=sample,
        )
        out["eval/authors_factorvae"] = result.score
        out["eval/active_dims"] = float(result.details["active_dims"])
    if "factorvae" in protocols:
        result = compute_factorvae(
            represent,
            dataset,
            rngs["factorvae"],
            num_train=get("factorvae_num_train", FACTORVAE_NUM_TRAIN),
            num_eval=get("factorvae_num_eval", FACTORVAE_NUM_EVAL),
            vote_size=get("factorvae_vote_size", FACTORVAE_VOTE_SIZE),
            std_threshold=get("factorvae_std_threshold", FACTORVAE_STD_THRESHOLD),
            include_discrete=include_discrete,
            global_sample=sample,
        )
        out["eval/factorvae"] = result.score
        out["eval/factorvae_train"] = result.details["train_accuracy"]
    if "discrete_accuracy" in protocols:
        result = compute_discrete_accuracy(
            represent, dataset, rngs["discrete_accuracy"], global_sample=sample
        )
        out["eval/discrete_accuracy"] = result.score
    if "mig" in protocols:
        result = compute_mig(
            represent,
            dataset,
            rngs["mig"],
            num_bins=get("mig_num_bins", MIG_NUM_BINS),
            global_sample=sample,
        )
        out["eval/mig"] = result.score
    return out
