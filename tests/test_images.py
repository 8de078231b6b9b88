"""The image grid: tile placement and mid-grey padding, by known pixels."""

from __future__ import annotations

import torch

from trainer.observe.images import make_grid


def test_grid_places_tiles_row_major_between_grey_padding():
    # Tile (r, c) of a 2 x 3 grid of 1 x 2 x 4 images is filled with the value 10 r + c.
    values_RC = torch.tensor([[0.0, 1.0, 2.0], [10.0, 11.0, 12.0]])
    images_RC1HW = values_RC[:, :, None, None, None].expand(2, 3, 1, 2, 4)
    grid_1HW = make_grid(images_RC1HW, pad=1)
    assert grid_1HW.shape == (1, 2 * 3 + 1, 3 * 5 + 1)
    # Row 0 and every third row are padding; rows 1-2 hold tile row 0, rows 4-5 tile row 1.
    for y in (0, 3, 6):
        assert (grid_1HW[0, y] == 0.5).all()
    for y, r in ((1, 0), (2, 0), (4, 1), (5, 1)):
        expected = [0.5] + sum(([10.0 * r + c] * 4 + [0.5] for c in range(3)), [])
        assert grid_1HW[0, y].tolist() == expected
