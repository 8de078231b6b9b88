"""Known answers of the dSprites renderer (trainer.data.render) against the official pixel
geometry, and of the rendered grid: its mixed-radix bases and where its shapes sit.

The official figures are measured from the real frames of `dsprites.gif`
(google-deepmind/dsprites-dataset; /work/shared/spec/cascadevae.md, "Official pixel geometry";
issue 18) and the whole-dataset pixel mean 0.042494 recorded by nmichlo/disent.

Shape suffixes (CONTRIBUTING.md): Q mask side, P positions per axis, H/W image rows/columns,
O orientations.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from trainer.data.dsprites import open_dsprites
from trainer.data.render import (
    IMAGE_SIZE,
    MASK_HALF,
    MAX_POSITIONS,
    SHAPE_NAMES,
    GridSpec,
    centre_corners,
    mixed_radix_bases,
    place_all_positions,
    render_mask,
)

SCALES = GridSpec().possible_values()[2]  # 0.5, 0.6, .., 1.0
ORIENTATIONS = GridSpec().possible_values()[3]  # linspace(0, 2 pi, 40)
# Official boxes (width, height) and areas at orientation 0, per scale 0.5 .. 1.0.
OFFICIAL_BOXES = {
    "square": [(10, 10), (12, 12), (14, 14), (16, 16), (18, 18), (20, 20)],
    "ellipse": [(12, 8), (16, 8), (18, 10), (20, 12), (22, 12), (26, 14)],
    "heart": [(10, 9), (12, 11), (14, 13), (16, 14), (18, 15), (20, 17)],
}
OFFICIAL_AREAS = {
    "square": [100, 144, 196, 256, 324, 400],
    "ellipse": [76, 104, 144, 184, 228, 288],
    "heart": [58, 84, 108, 140, 182, 222],
}
OFFICIAL_PIXEL_MEAN = 0.042494


def box(mask_HW: np.ndarray) -> tuple[int, int]:
    """(width, height) in pixels of the on pixels' bounding box."""
    rows, cols = np.nonzero(mask_HW)
    return int(np.ptp(cols)) + 1, int(np.ptp(rows)) + 1


def second_moment_axes(mask_HW: np.ndarray) -> tuple[float, float, float]:
    """(major, minor) second-moment semi-axes in px (2 sqrt of the covariance's eigenvalues,
    the semi-axes of a filled ellipse) and the major axis's angle in radians, counter-clockwise
    from the right as displayed, in [0, pi)."""
    rows, cols = np.nonzero(mask_HW)
    x, y = cols - cols.mean(), -(rows - rows.mean())  # y up, as displayed
    cov = np.cov(np.stack([x, y]), bias=True)
    values, vectors = np.linalg.eigh(cov)
    major = vectors[:, 1]
    angle = math.atan2(major[1], major[0]) % math.pi
    return 2 * math.sqrt(values[1]), 2 * math.sqrt(values[0]), angle


@pytest.mark.parametrize("shape", range(3), ids=SHAPE_NAMES)
def test_box_and_area_at_orientation_zero_match_the_official_frames(shape):
    name = SHAPE_NAMES[shape]
    for k, scale in enumerate(SCALES):
        mask_QQ = render_mask(shape, float(scale), 0.0)
        (w, h), (w_ref, h_ref) = box(mask_QQ), OFFICIAL_BOXES[name][k]
        assert abs(w - w_ref) <= 1 and abs(h - h_ref) <= 1, (name, scale, (w, h))
        area, area_ref = int(mask_QQ.sum()), OFFICIAL_AREAS[name][k]
        assert abs(area / area_ref - 1) <= 0.08, (name, scale, area)
    # The square is exact: side 20 x scale, filled.
    for scale, side in zip(SCALES, (10, 12, 14, 16, 18, 20), strict=True):
        square = render_mask(0, float(scale), 0.0)
        assert box(square) == (side, side) and square.sum() == side * side


def test_square_is_larger_than_ellipse_and_heart_as_in_dsprites():
    # Official ratios at equal scale: square ~1.4x the ellipse's area and ~1.8x the heart's.
    for scale in SCALES:
        square, ellipse, heart = (int(render_mask(s, float(scale), 0.0).sum()) for s in range(3))
        assert 1.3 < square / ellipse < 1.5 and 1.65 < square / heart < 1.95


def test_ellipse_proportions():
    major, minor, angle = second_moment_axes(render_mask(1, 1.0, 0.0))
    assert abs(major - 12.7) <= 0.3 and abs(minor - 7.2) <= 0.3  # official semi-axes, scale 1
    assert 1.65 <= major / minor <= 1.85  # official ratio ~1.75
    assert min(angle, math.pi - angle) < 1e-9  # long axis horizontal at orientation 0


def test_rotation_is_counter_clockwise_as_displayed():
    # A quarter turn counter-clockwise as displayed is np.rot90 (the first row becomes the first
    # column, read bottom to top); the mask's centre is its middle corner, so this is exact.
    for shape in range(3):
        mask_QQ = render_mask(shape, 1.0, 0.0)
        assert np.array_equal(render_mask(shape, 1.0, math.pi / 2), np.rot90(mask_QQ, 1))
        assert np.array_equal(render_mask(shape, 1.0, math.pi), np.rot90(mask_QQ, 2))
    # The heart tells the two directions apart: a quarter turn clockwise is a different image,
    # and the point (at the bottom at orientation 0) ends on the right as displayed.
    heart90 = render_mask(2, 1.0, math.pi / 2)
    assert not np.array_equal(heart90, np.rot90(render_mask(2, 1.0, 0.0), -1))
    cols = np.nonzero(heart90.any(axis=0))[0]
    assert heart90[:, cols[-1]].sum() <= 2 and heart90[:, cols[0]].sum() > 2
    # The ellipse's long axis turns with theta (as displayed, counter-clockwise from the right).
    for theta in ORIENTATIONS[1:10]:  # 9 .. 83 degrees
        _, _, angle = second_moment_axes(render_mask(1, 1.0, float(theta)))
        assert abs(angle - theta) < math.radians(3), (theta, angle)


def test_heart_has_lobes_up_and_point_down():
    for scale in SCALES:
        heart = render_mask(2, float(scale), 0.0)
        rows = np.nonzero(heart.any(axis=1))[0]
        top, bottom = heart[rows[0]], heart[rows[-1]]
        on = np.nonzero(top)[0]
        # Two lobes: on pixels either side of the centre line (between columns MASK_HALF - 1
        # and MASK_HALF) and a gap on it.
        assert on.min() < MASK_HALF - 1 and on.max() > MASK_HALF, scale
        assert top[MASK_HALF - 1] == 0 and top[MASK_HALF] == 0, scale
        assert bottom.sum() <= 2 and bottom[MASK_HALF - 1] == bottom[MASK_HALF] == 1, scale
        widths = heart.sum(axis=1)[rows]
        assert np.argmax(widths) < len(rows) / 2, scale  # widest in the upper half
    # Turned half a turn, the point is at the top.
    flipped = render_mask(2, 1.0, math.pi)
    rows = np.nonzero(flipped.any(axis=1))[0]
    assert flipped[rows[0]].sum() <= 2 and flipped[rows[-1], MASK_HALF] == 0


def test_centre_range_is_16_to_48_px():
    assert centre_corners(32).tolist() == [*range(16, 32), *range(33, 49)]  # 16 + round(32k/31)
    assert centre_corners(MAX_POSITIONS).tolist() == list(range(16, 49))  # every corner once
    assert MAX_POSITIONS == 33
    # The 20 px square at scale 1: columns 6..25 at posX 0 (centre 16), 38..57 at posX 1 (48).
    images_PPHW = place_all_positions(render_mask(0, 1.0, 0.0), 32)
    for ix, (first, last) in ((0, (6, 25)), (31, (38, 57))):
        cols = np.nonzero(images_PPHW[ix, 0].any(axis=0))[0]
        rows = np.nonzero(images_PPHW[ix, 0].any(axis=1))[0]
        assert (cols.min(), cols.max()) == (first, last)
        assert (rows.min(), rows.max()) == (6, 25)  # posY 0: rows about 16 as well


def test_full_grid_fits_the_frame_and_has_the_official_pixel_mean():
    """Every (shape, scale, orientation) mask at every one of the 32 x 32 positions: the images
    render_chunks writes (test_data checks that equality). None is clipped, and the grid's
    pixel mean is within 3 % of the official file's."""
    p = GridSpec().num_positions
    on_pixels = 0
    for shape in range(3):
        for scale in SCALES:
            for theta in ORIENTATIONS:
                mask_QQ = render_mask(shape, float(scale), float(theta))
                ring = mask_QQ[[0, -1]].sum() + mask_QQ[:, [0, -1]].sum()
                assert ring == 0, (shape, scale, theta)  # the mask's outer ring is empty
                images_PPHW = place_all_positions(mask_QQ, p)
                sums_PP = images_PPHW.sum(axis=(2, 3), dtype=np.int64)
                assert (sums_PP == mask_QQ.sum()).all()  # nothing clipped at any position
                border = images_PPHW[:, :, [0, -1]].sum() + images_PPHW[:, :, :, [0, -1]].sum()
                assert border == 0  # the frame's outer rows and columns stay empty
                on_pixels += int(sums_PP.sum())
    count = 3 * len(SCALES) * len(ORIENTATIONS) * p * p
    assert count == 737_280
    mean = on_pixels / (count * IMAGE_SIZE * IMAGE_SIZE)
    assert abs(mean / OFFICIAL_PIXEL_MEAN - 1) <= 0.03, mean


def test_position_count_is_bounded_by_distinct_centres():
    from trainer.config import Config, ConfigError

    assert GridSpec(num_positions=33).num_positions == 33
    with pytest.raises(ValueError, match="num_positions must be <= 33.*got 34"):
        GridSpec(num_positions=34)
    assert Config.from_dict({"data": {"num_positions": 33}}).data.num_positions == 33
    with pytest.raises(ConfigError) as info:
        Config.from_dict({"data": {"num_positions": 34}})
    assert info.value.problems == ["data.num_positions: must be <= 33, got 34"]


# --- the grid of images: indexing bases, geometry (from the small rendered grid) ---------


# Centre corners of positions linspace(0, 1, 8): 16 + round(k / 7 * 32), computed by hand
# (0, 4.57, 9.14, 13.71, 18.29, 22.86, 27.43, 32 -> 0, 5, 9, 14, 18, 23, 27, 32).
CENTRES_8 = [16, 21, 25, 30, 34, 39, 43, 48]


def centroid(image_HW: np.ndarray) -> tuple[float, float]:
    """Area centroid (row, column) in frame coordinates: pixel (i, j) has its centre at
    (i + 0.5, j + 0.5), so a shape's centre corner c is the centroid c of a symmetric shape."""
    rows, cols = np.nonzero(image_HW)
    return float(rows.mean()) + 0.5, float(cols.mean()) + 0.5


def test_official_bases_by_hand():
    # 3*6*40*32*32, 6*40*32*32, 40*32*32, 32*32, 32, 1
    assert mixed_radix_bases((1, 3, 6, 40, 32, 32)).tolist() == [
        737280,
        245760,
        40960,
        1024,
        32,
        1,
    ]


def test_every_official_mask_fits_and_area_grows_with_scale():
    values = GridSpec().possible_values()  # the official 6 scales x 40 orientations
    for shape in range(3):
        areas = np.zeros((6, 40))
        for s, scale in enumerate(values[2]):
            for o, theta in enumerate(values[3]):
                mask_QQ = render_mask(shape, float(scale), float(theta))
                ring = (
                    mask_QQ[0].sum()
                    + mask_QQ[-1].sum()
                    + mask_QQ[:, 0].sum()
                    + mask_QQ[:, -1].sum()
                )
                assert ring == 0  # the mask's outer ring is empty: the shape is never cut
                areas[s, o] = mask_QQ.sum()
        # Strictly larger at every orientation of the next scale than at any of this one.
        assert (areas[1:].min(axis=1) > areas[:-1].max(axis=1)).all(), SHAPE_NAMES[shape]
        # Area ~ scale^2: scale 1 vs 0.5 is about 4x.
        assert 3.3 < areas[-1].mean() / areas[0].mean() < 4.7


def test_shapes_inside_frame_at_extreme_positions(tmp_path):
    ds = open_dsprites(num_scales=2, num_orientations=9, num_positions=2, cache_dir=tmp_path)
    images_NHW = ds.images(np.arange(len(ds)))
    border = images_NHW[:, 0].sum() + images_NHW[:, -1].sum()
    border += images_NHW[:, :, 0].sum() + images_NHW[:, :, -1].sum()
    assert border == 0
    # Same pixel count at all 4 corners of the position range: nothing clipped anywhere.
    counts = images_NHW.reshape(-1, 4, 64 * 64).sum(axis=2)
    assert (counts == counts[:, :1]).all() and counts.min() > 20
    # The extreme shapes do reach near the frame (positions span the image, not a small box).
    rows = np.nonzero(images_NHW.any(axis=(0, 2)))[0]
    assert rows.min() <= 2 and rows.max() >= 61


def test_posx_moves_columns_posy_moves_rows(small):
    # Square, scale 1, orientation 0: point-symmetric, so its centroid is exactly its centre.
    base = [0, 0, 5, 0, 0, 0]
    for axis, along in ((4, 1), (5, 0)):
        classes_BF = np.tile(base, (8, 1))
        classes_BF[:, axis] = np.arange(8)
        cents = np.array([centroid(im) for im in small.images(classes_BF @ small.bases)])
        assert cents[:, along].tolist() == CENTRES_8  # moving coordinate, exact
        assert (cents[:, 1 - along] == 16).all()  # the other stays at its position-0 centre
    # Monotone for every shape, scale and orientation along both axes.
    cls = small.latent_classes
    for axis, along in ((4, 1), (5, 0)):
        for shape in range(3):
            sel = (cls[:, 1] == shape) & (cls[:, 3] == 3) & (cls[:, 5 if axis == 4 else 4] == 2)
            sel &= cls[:, 2] == 0
            order = np.argsort(cls[sel, axis])
            cents = [centroid(im)[along] for im in small.images(np.nonzero(sel)[0][order])]
            assert np.all(np.diff(cents) > 0.5)


def test_orientation_zero_and_two_pi_identical_and_rotation_about_centre(small):
    cls = small.latent_classes
    first = small.images(np.nonzero(cls[:, 3] == 0)[0])
    last = small.images(np.nonzero(cls[:, 3] == 9)[0])
    assert np.array_equal(first, last)
    mid = small.images(np.nonzero(cls[:, 3] == 2)[0])
    assert not np.array_equal(first, mid)  # orientation does change the image
    for shape, tol in ((0, 1e-9), (1, 1e-9), (2, 0.25)):
        idx = np.nonzero((cls[:, 1] == shape) & (cls[:, 4] == 3) & (cls[:, 5] == 5))[0]
        cents = np.array([centroid(im) for im in small.images(idx)])
        centre = (CENTRES_8[5], CENTRES_8[3])
        assert np.abs(cents - centre).max() <= tol, SHAPE_NAMES[shape]


def test_shapes_look_like_dsprites():
    square = render_mask(0, 1.0, 0.0)
    rows, cols = np.nonzero(square)
    assert square.sum() == (np.ptp(rows) + 1) * (np.ptp(cols) + 1) == 20 * 20  # filled 20x20 square
    ellipse = render_mask(1, 1.0, 0.0)
    rows, cols = np.nonzero(ellipse)
    assert (np.ptp(cols) + 1, np.ptp(rows) + 1) == (26, 14)  # long axis horizontal
    ellipse90 = render_mask(1, 1.0, math.pi / 2)
    assert np.array_equal(ellipse90, ellipse.T)  # a quarter turn swaps the axes
    heart = render_mask(2, 1.0, 0.0)
    assert np.array_equal(heart, heart[:, ::-1])  # mirror-symmetric at orientation 0
    rows = np.nonzero(heart.any(axis=1))[0]
    top, bottom = heart[rows[0]], heart[rows[-1]]
    on = np.nonzero(top)[0]
    # Two lobes: the top row has pixels on both sides of the centre line and a gap between
    # (the centre line runs between columns MASK_HALF - 1 and MASK_HALF).
    assert on.min() < MASK_HALF - 1 and on.max() > MASK_HALF
    assert top[MASK_HALF - 1] == 0 and top[MASK_HALF] == 0
    # A point at the bottom: the two pixels either side of the centre line.
    assert bottom.sum() == 2 and bottom[MASK_HALF - 1] == bottom[MASK_HALF] == 1
    widths = heart.sum(axis=1)[rows]
    assert np.argmax(widths) < len(rows) / 2  # widest in the upper half
