"""dSprites held on the training device: the bit-packed images and the latent classes are
moved there once, and a batch is a gather plus an unpack with torch bit operations, so no
image crosses from the host during training.

The packed layout is np.packbits': byte y of an image holds pixels 8y .. 8y + 7 of the
row-major 64 x 64 image, the first pixel in the most significant bit.

Shape suffixes (the project legend is in CONTRIBUTING.md): N images, B batch, Y packed bytes
per image (512), F factors (6), H/W image rows/columns (64).
"""

from __future__ import annotations

import torch
from torch import Tensor

from trainer.data.dsprites import DSprites
from trainer.data.render import IMAGE_SIZE


def unpack_on_device(packed_BY: Tensor) -> Tensor:
    """Packed images (B, Y) uint8 -> float32 images (B, 1, 64, 64) in {0, 1}, on their device.
    No host copy: the shifts (7, 6, ..., 0; the most significant bit first) are made there."""
    shifts_8 = torch.arange(7, -1, -1, dtype=torch.uint8, device=packed_BY.device)
    bits_BY8 = torch.bitwise_and(torch.bitwise_right_shift(packed_BY.unsqueeze(-1), shifts_8), 1)
    return bits_BY8.view(packed_BY.shape[0], 1, IMAGE_SIZE, IMAGE_SIZE).to(torch.float32)


class DeviceDSprites:
    """A DSprites' packed images (N, Y) uint8 and latent classes (N, F) int64 on `device`
    (the full grid: 377 MB + 35 MB)."""

    def __init__(self, dataset: DSprites, device: torch.device):
        self.device = device
        self.packed_NY = torch.from_numpy(dataset.packed_images()).to(device)
        self.classes_NF = torch.from_numpy(dataset.latent_classes.copy()).to(device)

    def __len__(self) -> int:
        return int(self.packed_NY.shape[0])

    def images(self, indices_B: Tensor) -> Tensor:
        """float32 images (B, 1, 64, 64) of int64 indices (B,) on the device (not range-checked:
        the indices come from batch_indices_for_step)."""
        return unpack_on_device(self.packed_NY.index_select(0, indices_B))

    def classes(self, indices_B: Tensor, factor: int) -> Tensor:
        """int64 classes (B,) of one factor of the images `indices_B`."""
        return self.classes_NF[:, factor].index_select(0, indices_B)
