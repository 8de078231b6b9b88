"""What the metric tests (tests/test_eval_*.py) share: a small dSprites grid without images
(FakeDSprites) and representations read from a table (TableRepresenter), true or random.

Shape legend: N images, M continuous dims, V votes, P images per vote, K categories, S shapes.
"""

from __future__ import annotations

import math

import numpy as np

from trainer.data.dsprites import mixed_radix_bases
from trainer.eval import (
    Representation,
    Representer,
)

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


def random_representer(data: FakeDSprites, seed: int, num_dims: int = 6) -> TableRepresenter:
    """Continuous dims and a 3-category code drawn independently of the factors."""
    rng = np.random.default_rng(seed)
    n = len(data)
    return TableRepresenter(
        rng.normal(size=(n, num_dims)), np.full((n, num_dims), 0.1), rng.integers(0, 3, size=n)
    )
