"""Data passed between the core modules: what one step's forward pass produced, and the part of
a model the unary matrix needs.

Shape legend: B batch, M continuous latent dims, K discrete categories, H/W image sides.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from torch import Tensor


class Decoder(Protocol):
    """A model that decodes (z, d) to Bernoulli logits, with K = `num_categories` codes."""

    num_categories: int

    def decode(self, z_BM: Tensor, d_BK: Tensor | None) -> Tensor: ...


@dataclass
class VAEOutput:
    """Everything one CascadeVAE pass produces.

    mu_BM, sigma_BM: posterior mean and standard deviation.
    z_BM: the reparameterised sample mu + sigma * eps the decoder saw.
    logits_B1HW: Bernoulli logits of the reconstruction.
    codes_B: int64 chosen categories; None before the discrete stage and for CascadeVAE-C.
    unary_BK: the unary matrix the codes were chosen from (no grad), or None.
    """

    mu_BM: Tensor
    sigma_BM: Tensor
    z_BM: Tensor
    logits_B1HW: Tensor
    codes_B: Tensor | None
    unary_BK: Tensor | None


@dataclass
class JointVAEOutput:
    """One JointVAE pass. alpha_BK: logits of q(c|x); c_BK: the Gumbel-softmax sample the
    decoder saw; the rest as VAEOutput."""

    mu_BM: Tensor
    sigma_BM: Tensor
    z_BM: Tensor
    alpha_BK: Tensor
    c_BK: Tensor
    logits_B1HW: Tensor
