"""Unsupervised discrete accuracy: the best one-to-one match (Hungarian) of learned categories to
true shapes.

Shape legend: N images, K learned categories, S true shapes.
"""

from __future__ import annotations

import numpy as np

from trainer.core.matching import best_matching
from trainer.data.dsprites import DSprites
from trainer.eval.sampling import draw_global_sample, with_codes
from trainer.eval.types import SHAPE_FACTOR, GlobalSample, MetricResult, Representer

DISCRETE_NUM_SAMPLES = 10_000

DESCRIPTION = (
    "Unsupervised discrete accuracy: confusion matrix of learned categories vs true shapes "
    f"over {DISCRETE_NUM_SAMPLES} random images, best one-to-one match "
    "(exact, trainer/core/matching.py), accuracy in [0, 1]; unmatched categories count as errors."
)


def confusion_matrix(
    codes_N: np.ndarray,
    shapes_N: np.ndarray,
    num_categories: int = 0,
    num_shapes: int = 0,
) -> np.ndarray:
    """(K, S) int64 counts of images with learned category k and true shape s. K is the larger
    of `num_categories` and the largest code + 1, S likewise for the shapes."""
    if codes_N.shape != shapes_N.shape or codes_N.ndim != 1 or codes_N.size == 0:
        raise ValueError(
            f"need two non-empty 1-D arrays of equal length, got {codes_N.shape}, {shapes_N.shape}"
        )
    if codes_N.min() < 0 or shapes_N.min() < 0:
        raise ValueError("codes and shapes must be >= 0")
    num_k = max(num_categories, int(codes_N.max()) + 1)
    num_s = max(num_shapes, int(shapes_N.max()) + 1)
    confusion_KS = np.zeros((num_k, num_s), dtype=np.int64)
    np.add.at(confusion_KS, (codes_N, shapes_N), 1)
    return confusion_KS


def _discrete_accuracy_core(codes_N: np.ndarray, shapes_N: np.ndarray) -> MetricResult:
    """Best one-to-one match of learned categories (K) to true shapes (S), any K and S:
    accuracy = matched counts of the confusion matrix (K, S) / N. With K > S the unmatched
    categories, with K < S the unmatched shapes, count as errors."""
    confusion_KS = confusion_matrix(codes_N, shapes_N)
    rows, cols = best_matching(confusion_KS, maximize=True)
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
    """Unsupervised discrete accuracy (see DESCRIPTION) over a random sample
    (or `global_sample`). Raises ValueError for a representer without a discrete code."""
    if not represent.has_codes:
        raise ValueError("discrete_accuracy needs a discrete code (num_categories >= 1)")
    if global_sample is None:
        global_sample = draw_global_sample(represent, dataset, rng, num_samples, codes=True)
    codes_N = with_codes(global_sample, represent).rep.codes_N
    assert codes_N is not None  # with_codes fills them in for a representer that has codes
    return _discrete_accuracy_core(codes_N, global_sample.classes_NL[:, SHAPE_FACTOR])
