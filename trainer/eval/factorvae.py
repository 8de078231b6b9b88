"""The FactorVAE metric as disentanglement_lib defines it (Kim & Mnih 2018): std-pruned dims, 64
images per vote, a majority-vote classifier fit on 10,000 votes and scored on 5,000 held-out
votes.

Shape legend:
    N  images of the global sample   M  continuous latent dims
    V  votes                         P  images per vote
    D  dims that take part in a vote F  factors that vary (dSprites: 5)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from trainer.data.dsprites import DSprites, sample_indices_with_fixed_factor
from trainer.eval.sampling import draw_global_sample, with_codes
from trainer.eval.statistics import gini_variance, varying_factors
from trainer.eval.types import GlobalSample, MetricResult, Representation, Representer

FACTORVAE_NUM_GLOBAL = 10_000
FACTORVAE_NUM_TRAIN = 10_000
FACTORVAE_NUM_EVAL = 5_000
FACTORVAE_VOTE_SIZE = 64
FACTORVAE_STD_THRESHOLD = 0.05

DESCRIPTION = (
    "FactorVAE metric as disentanglement_lib defines it (Kim & Mnih 2018): global variance "
    f"(ddof 1) of mu over {FACTORVAE_NUM_GLOBAL} images, dims with std < "
    f"{FACTORVAE_STD_THRESHOLD} pruned, continuous mu only (discrete code only with "
    f"include_discrete); {FACTORVAE_VOTE_SIZE} images per vote with a uniformly drawn fixed "
    f"factor; majority-vote classifier fit on {FACTORVAE_NUM_TRAIN} votes, score = accuracy "
    f"on {FACTORVAE_NUM_EVAL} held-out votes (train accuracy reported too); no active dim "
    "-> 0."
)


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
    gini_global = 0.0
    if global_codes_N is not None and with_codes:
        gini_global = gini_variance(global_codes_N)
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
    """The standard FactorVAE metric (see DESCRIPTION). score = held-out accuracy;
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
        global_sample = with_codes(global_sample, represent)
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
