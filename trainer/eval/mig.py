"""The mutual information gap (Chen et al. 2018) as disentanglement_lib computes it.

Shape legend:
    N  images of the sample          M  continuous latent dims
    C  code columns (continuous dims, plus the discrete code)
    F  factors that vary (dSprites: 5)
"""

from __future__ import annotations

import numpy as np

from trainer.data.dsprites import DSprites
from trainer.eval.sampling import draw_global_sample, with_codes
from trainer.eval.statistics import (
    discrete_entropy,
    discrete_mutual_information,
    histogram_discretize,
    varying_factors,
)
from trainer.eval.types import GlobalSample, MetricResult, Representer

MIG_NUM_SAMPLES = 10_000
MIG_NUM_BINS = 20

DESCRIPTION = (
    f"MIG as disentanglement_lib computes it: {MIG_NUM_SAMPLES} random images, every "
    f"continuous dim of mu discretised into {MIG_NUM_BINS} equal-width bins over its sample "
    "range (the discrete code used as is), plug-in mutual information (nats) with each "
    "factor that varies, divided by the factor's entropy; gap between the top two code "
    "columns per factor, mean over factors."
)


def mutual_information_table(
    mu_NM: np.ndarray,
    codes_N: np.ndarray | None,
    factors_NF: np.ndarray,
    num_bins: int = MIG_NUM_BINS,
) -> tuple[np.ndarray, np.ndarray]:
    """(mi_CF, entropy_F): plug-in mutual information (nats) of every code column with every
    factor, and each factor's plug-in entropy (nats).

    Code columns C: each dim of mu_NM histogram-discretised into num_bins equal-width bins over
    its sample range, then the discrete code as is (already discrete), when given.
    factors_NF: classes of the factors that vary (each must vary here: raises ValueError).
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
    return mi_CF, entropy_F


def _mig_core(
    mu_NM: np.ndarray,
    codes_N: np.ndarray | None,
    factors_NF: np.ndarray,
    num_bins: int = MIG_NUM_BINS,
) -> MetricResult:
    """Mutual information gap over arrays.

    mi_CF[c, f] = I(code column c; factor f) in nats (`mutual_information_table`); per
    factor, (largest - second largest) / H(factor) (second = 0 with a single column); score =
    mean over factors. factors_NF: classes of the factors that vary (each must vary here).
    """
    mi_CF, entropy_F = mutual_information_table(mu_NM, codes_N, factors_NF, num_bins)
    num_f = factors_NF.shape[1]
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
    """MIG (see DESCRIPTION) over a random sample (or `global_sample`): every continuous
    dim, plus the discrete code when the representer has one."""
    if global_sample is None:
        global_sample = draw_global_sample(represent, dataset, rng, num_samples, codes=True)
    global_sample = with_codes(global_sample, represent)
    factors = varying_factors(dataset.latent_sizes)
    return _mig_core(
        global_sample.rep.mu_NM,
        global_sample.rep.codes_N,
        global_sample.classes_NL[:, factors],
        num_bins,
    )
