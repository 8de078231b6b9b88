"""Pictures of a model: reconstructions and latent traversals, as image tensors in [0, 1].

Shape suffixes (the project legend is in CONTRIBUTING.md): B images, M continuous dims,
K categories, V traversal values, R/C rows/columns of an image grid, H = W = 64.
No Ray and no TensorBoard here: the run logger and `launch.evaluate` decide where images go.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

PREVIEW_SIZE = 8
"""Images of the reconstruction row; the first is the traversals' image."""


def preview_indices(num_images: int, num_spread: int = 0) -> np.ndarray:
    """(PREVIEW_SIZE + num_spread,) image indices of the preview batch of a dataset of
    `num_images`: PREVIEW_SIZE evenly spaced over the grid (so every shape and scale is in the
    reconstructions), then `num_spread` spread over the whole grid with a stride coprime to the
    factor sizes' products (mixing shapes, scales, orientations and positions: the sample of
    the category means)."""
    evenly_P = np.linspace(0, num_images - 1, PREVIEW_SIZE).astype(np.int64)
    spread_S = (np.arange(num_spread, dtype=np.int64) * 7_919 + 13) % num_images
    return np.concatenate([evenly_P, spread_S])


def make_grid(images_RC1HW: torch.Tensor, pad: int = 2) -> torch.Tensor:
    """Tile a (rows, cols, 1, H, W) tensor into one (1, rows*(H+pad)+pad, cols*(W+pad)+pad) image.

    The padding is mid-grey so that black and white images stay distinguishable from it.
    """
    rows, cols, channels, height, width = images_RC1HW.shape
    # Pad every tile below and to the right, lay the tiles out row-major, then pad top and left.
    tiles_RC1HW = F.pad(images_RC1HW, (0, pad, 0, pad), value=0.5)
    grid_1HW = tiles_RC1HW.permute(2, 0, 3, 1, 4).reshape(
        channels, rows * (height + pad), cols * (width + pad)
    )
    return F.pad(grid_1HW, (pad, 0, pad, 0), value=0.5)


def _one_hot(codes_B: torch.Tensor, num_categories: int) -> torch.Tensor | None:
    if num_categories == 0:
        return None
    return torch.nn.functional.one_hot(codes_B, num_categories).float()


@torch.no_grad()
def reconstructions(model, x_B1HW: torch.Tensor) -> torch.Tensor:
    """Originals (top row) over reconstructions at z = mu with the best category (bottom row).

    Returns a (1, h, w) grid in [0, 1].
    """
    mu_BM, _ = model.encode(x_B1HW)
    codes_B = None
    if model.num_categories:
        codes_B = model.infer_codes(mu_BM, x_B1HW)
    recon_B1HW = torch.sigmoid(
        model.decode(
            mu_BM, _one_hot(codes_B, model.num_categories) if codes_B is not None else None
        )
    )
    return make_grid(torch.stack([x_B1HW.cpu(), recon_B1HW.cpu()]))


@torch.no_grad()
def category_means(model, x_B1HW: torch.Tensor) -> torch.Tensor:
    """What each category means: row k holds the mean of the images the model assigns to k
    (its codes at z = mu) and the mean of their reconstructions with category k. An empty
    category shows mid-grey. Returns a (1, h, w) grid in [0, 1] with K rows and 2 columns."""
    mu_BM, _ = model.encode(x_B1HW)
    codes_B = model.infer_codes(mu_BM, x_B1HW)
    recon_B1HW = torch.sigmoid(model.decode(mu_BM, _one_hot(codes_B, model.num_categories)))
    rows = []
    for k in range(model.num_categories):
        members = codes_B == k
        if members.any():
            rows.append(torch.stack([x_B1HW[members].mean(0), recon_B1HW[members].mean(0)]))
        else:
            rows.append(torch.full((2, *x_B1HW.shape[1:]), 0.5, dtype=x_B1HW.dtype))
    return make_grid(torch.stack(rows).cpu())


@torch.no_grad()
def traversals(
    model, x_11HW: torch.Tensor, values: np.ndarray | None = None
) -> dict[int | None, torch.Tensor]:
    """Latent traversals around the code of one image, one grid per category.

    Row j varies continuous dim j over `values` (default 8 values in [-2, 2]) with the other dims
    at mu(x); the discrete code is fixed to category k for the grid keyed k (key None for a model
    without categories). Each grid is (1, h, w) in [0, 1].
    """
    values = np.linspace(-2.0, 2.0, 8) if values is None else np.asarray(values)
    mu_1M, _ = model.encode(x_11HW)
    num_dims, num_values = mu_1M.shape[1], len(values)
    z_MV_M = mu_1M.repeat(num_dims * num_values, 1).view(num_dims, num_values, num_dims)
    for j in range(num_dims):
        z_MV_M[j, :, j] = torch.as_tensor(values, dtype=mu_1M.dtype, device=mu_1M.device)
    z_RM = z_MV_M.reshape(-1, num_dims)
    categories: list[int | None] = list(range(model.num_categories)) or [None]
    grids: dict[int | None, torch.Tensor] = {}
    for k in categories:
        d_RK = None
        if k is not None:
            d_RK = torch.zeros(z_RM.shape[0], model.num_categories, device=z_RM.device)
            d_RK[:, k] = 1.0
        images_R1HW = torch.sigmoid(model.decode(z_RM, d_RK)).cpu()
        grids[k] = make_grid(images_R1HW.view(num_dims, num_values, *images_R1HW.shape[1:]))
    return grids
