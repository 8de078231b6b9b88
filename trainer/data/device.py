"""dSprites held on the training device: the bit-packed images and the latent classes are
moved there once, and a batch is a gather plus an unpack through a 256-row table of each byte's
bits (made there with torch bit operations), so no image crosses from the host in training.

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


def byte_bits_table(device: torch.device) -> Tensor:
    """(256, 8) float32 table: row v holds the bits of byte v in {0, 1}, the most significant
    first (np.unpackbits' order), made on `device` with torch bit operations (no host copy)."""
    values_256 = torch.arange(256, dtype=torch.int32, device=device)
    shifts_8 = torch.arange(7, -1, -1, dtype=torch.int32, device=device)
    bits = torch.bitwise_and(torch.bitwise_right_shift(values_256.unsqueeze(1), shifts_8), 1)
    return bits.to(torch.float32)


def unpack_on_device(packed_BY: Tensor, byte_bits: Tensor | None = None) -> Tensor:
    """Packed images (B, Y) uint8 -> float32 images (B, 1, 64, 64) in {0, 1}, on their device:
    one row of `byte_bits` (byte_bits_table, made here when not given) per packed byte. On CPU
    this lookup takes about a third of the time of shifting and masking each byte."""
    if byte_bits is None:
        byte_bits = byte_bits_table(packed_BY.device)
    bits = byte_bits.index_select(0, packed_BY.reshape(-1).to(torch.int64))
    return bits.view(packed_BY.shape[0], 1, IMAGE_SIZE, IMAGE_SIZE)


class DeviceDSprites:
    """A DSprites' packed images (N, Y) uint8 and latent classes (N, F) int64 on `device`
    (the full grid: 377 MB + 35 MB)."""

    def __init__(self, dataset: DSprites, device: torch.device):
        self.device = device
        self.packed_NY = torch.from_numpy(dataset.packed_images()).to(device)
        self.classes_NF = torch.from_numpy(dataset.latent_classes.copy()).to(device)
        self.byte_bits = byte_bits_table(device)

    def __len__(self) -> int:
        return int(self.packed_NY.shape[0])

    def images(self, indices_B: Tensor) -> Tensor:
        """float32 images (B, 1, 64, 64) of int64 indices (B,) on the device (not range-checked:
        the indices come from batch_indices_for_step)."""
        return unpack_on_device(self.packed_NY.index_select(0, indices_B), self.byte_bits)

    def classes(self, indices_B: Tensor, factor: int) -> Tensor:
        """int64 classes (B,) of one factor of the images `indices_B`."""
        return self.classes_NF[:, factor].index_select(0, indices_B)
