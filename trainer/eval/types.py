"""The data types every metric shares: representations, the representer interface, the true
factors as a representer, a global sample and a metric's result. NumPy only.

Shape legend:
    N  images of a sample            M  continuous latent dims
    L  all latent factors of the dataset (dSprites: 6, color first)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trainer.data.dsprites import LATENT_NAMES, DSprites

SHAPE_FACTOR = LATENT_NAMES.index("shape")


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
    num_categories: the number of values the discrete code can take (0: unknown or none).
    """

    has_codes: bool = False
    num_categories: int = 0

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
        if self.discrete_column is not None:
            self.num_categories = int(dataset.latent_sizes[self.discrete_column])

    def __call__(self, indices_N: np.ndarray, *, codes: bool = True) -> Representation:
        classes_NL = self.classes_NL[np.asarray(indices_N, dtype=np.int64)]
        codes_N = None
        if codes and self.discrete_column is not None:
            codes_N = classes_NL[:, self.discrete_column].astype(np.int64)
        return Representation(classes_NL[:, self.columns].astype(np.float64), None, codes_N)


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
