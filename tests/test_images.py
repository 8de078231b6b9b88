"""The image grid: tile placement and mid-grey padding, by known pixels; the preview batch."""

from __future__ import annotations

import torch

from trainer.observe.images import make_grid, preview_indices


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


def test_preview_indices_are_evenly_spaced_then_spread():
    # linspace(0, 99, 8) truncated, then (13 + 7919 i) % 100 for i = 0, 1, 2.
    expected = [0, 14, 28, 42, 56, 70, 84, 99, 13, 32, 51]
    assert preview_indices(100, num_spread=3).tolist() == expected
    assert preview_indices(100).tolist() == [0, 14, 28, 42, 56, 70, 84, 99]
    # On the full dSprites grid the 240 spread indices are distinct and cover the 3 shapes.
    full = preview_indices(737_280, num_spread=240)
    assert str(full.dtype) == "int64"
    assert len(set(full[8:].tolist())) == 240
    assert set((full[8:] // (6 * 40 * 32 * 32)).tolist()) == {0, 1, 2}
