"""The global sample: random images, their factor classes and their representations, drawn once
and shared by the metrics of one evaluation.

Shape legend: N images of the sample.
"""

from __future__ import annotations

import numpy as np

from trainer.data.dsprites import DSprites, sample_random_indices
from trainer.eval.types import GlobalSample, Representation, Representer


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


def with_codes(sample: GlobalSample, represent: Representer) -> GlobalSample:
    """`sample` with its discrete codes filled in when the representer has them."""
    if sample.rep.codes_N is not None or not represent.has_codes:
        return sample
    codes_N = represent.codes(sample.indices_N, sample.rep.mu_NM)
    rep = Representation(sample.rep.mu_NM, sample.rep.sigma_NM, codes_N)
    return GlobalSample(sample.indices_N, sample.classes_NL, rep)
