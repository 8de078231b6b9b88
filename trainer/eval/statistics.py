"""Small pure statistics over arrays: Gini variance, KL per dim, majority-vote accuracy,
histogram discretisation, plug-in entropy and mutual information.

Shape legend:
    N  items of a sample             M  columns (dims)
    D  dims that take part in a vote F  factors
    K  categories
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from trainer.core.losses import kl_per_dim


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
    """(M,) mean over N of KL(N(mu, sigma^2) || N(0, 1)) per dim: the training loss's
    `kl_per_dim` (trainer.core.losses) on the arrays, in their dtype."""
    return kl_per_dim(torch.from_numpy(mu_NM), torch.from_numpy(sigma_NM)).numpy()


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
