"""The unary matrix U[i, k] = rec_i(e_k): reconstruction loss of sample i decoded with category k.

Shape legend:
    B  batch size
    M  continuous latent dims
    K  discrete categories
    J  B * K rows of the batched decoder pass (row i * K + k is sample i with category k)
    H, W  image height and width
"""

from __future__ import annotations

import torch
from torch import Tensor

from trainer.core.losses import reconstruction_per_sample
from trainer.core.types import Decoder


def _num_categories(model: Decoder) -> int:
    if model.num_categories < 1:
        raise ValueError("the unary matrix needs a model with num_categories >= 1")
    return model.num_categories


@torch.no_grad()
def unary_matrix(model: Decoder, z_BM: Tensor, x_B1HW: Tensor) -> Tensor:
    """(B, K) float, no grad. One decoder pass over B * K rows: every z paired with every
    one-hot code. z_BM must be the same sample the gradient step decodes."""
    num_cat = _num_categories(model)
    batch = z_BM.shape[0]
    z_JM = z_BM.repeat_interleave(num_cat, dim=0)
    d_JK = torch.eye(num_cat, dtype=z_BM.dtype, device=z_BM.device).repeat(batch, 1)
    logits_J1HW = model.decode(z_JM, d_JK)
    x_J1HW = x_B1HW.repeat_interleave(num_cat, dim=0)
    return reconstruction_per_sample(logits_J1HW, x_J1HW).view(batch, num_cat)


@torch.no_grad()
def unary_matrix_k_passes(model: Decoder, z_BM: Tensor, x_B1HW: Tensor) -> Tensor:
    """(B, K) reference: K decoder passes over B rows, one per category (the authors' way)."""
    num_cat = _num_categories(model)
    columns = []
    for k in range(num_cat):
        d_BK = torch.zeros(z_BM.shape[0], num_cat, dtype=z_BM.dtype, device=z_BM.device)
        d_BK[:, k] = 1.0
        columns.append(reconstruction_per_sample(model.decode(z_BM, d_BK), x_B1HW))
    return torch.stack(columns, dim=1)
