"""The step pipeline of a run with no Ray: batch indices -> images on the device -> one train
step. The Train worker and the overhead benchmark both run it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from trainer.data.dsprites import DSprites


def true_shape_codes(shapes_B: np.ndarray) -> Callable[[torch.Tensor], torch.Tensor]:
    """The oracle's chooser: ignores the unary matrix and returns the true shapes."""
    codes_B = torch.as_tensor(np.asarray(shapes_B, dtype=np.int64))
    return lambda unary_BK: codes_B.to(unary_BK.device)


def step_seed(seed: int, step: int, rank: int) -> int:
    """Seed of the noise eps of (step, rank): resumed runs redraw exactly the same noise."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1, np.uint64)[0] >> 1)


def load_batch(dataset: DSprites, indices: np.ndarray, device: torch.device) -> torch.Tensor:
    """(B,) indices -> float32 images (B, 1, 64, 64) in {0, 1} on `device`."""
    images_BHW = dataset.images(indices)
    return torch.from_numpy(images_BHW).to(device=device, dtype=torch.float32).unsqueeze(1)


def spread_indices(num_images: int, count: int = 240) -> np.ndarray:
    """`count` image indices spread over the whole grid with a stride coprime to the factor
    sizes' products, so they mix shapes, scales, orientations and positions."""
    return (np.arange(count, dtype=np.int64) * 7_919 + 13) % num_images
