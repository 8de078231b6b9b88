"""dSprites renderer: the official factor grid drawn with the official pixel geometry.

Frame (pixel units): image row i / column j is the unit square [i, i+1) x [j, j+1), so its centre
is at (i + 0.5, j + 0.5). A shape's centre (the point it rotates about) is a pixel CORNER: that is
what gives the official even-sided boxes (a square of side 20 x scale covers exactly 20 x scale
pixels at orientation 0).

- Each (shape, scale, orientation) is rasterised ONCE into a square mask of side `MASK_SIDE` (32)
  whose middle corner is the shape's centre. A pixel is on when at least half of its 8x8
  sub-samples fall inside the outline (binary, like dSprites).
- Every shape fits in a disc of radius `MAX_SHAPE_RADIUS_PX` (the square's half-diagonal,
  10 sqrt(2) = 14.14 px at scale 1) about its centre at every orientation, so the mask's outer ring
  is always empty and the mask, placed at any centre in 16..48, lies inside the frame and never
  touches its outer rows and columns: no position or orientation ever clips a shape.
- posX moves the centre along image COLUMNS, posY along ROWS. The official file spreads 32
  positions over 0..1 and the centre over 16..48 px (0.25 x 64 .. 0.75 x 64), i.e. 32/31 px per
  step. Positions here are integer pixel shifts of the same mask, so a placed image is an exact
  copy: the centre of position value p is `16 + round(32 p)` (round half up), at most 0.5 px from
  16 + 32 p. With 32 positions that gives corners 16..31 and 33..48 (32 is skipped where the
  rounding crosses the middle); with 33 positions every corner 16..48 once (`MAX_POSITIONS`).
- Orientation theta rotates the shape counter-clockwise as displayed; theta is taken modulo
  2*pi, so orientation 0 and 2*pi give bit-identical images (as in the official file).

Shape outlines at scale 1, in pixels about the centre (u to the right, v up; `scale` multiplies
every length). Sizes follow the official frames (the 64x64 frames of `dsprites.gif` in
google-deepmind/dsprites-dataset, measured in issue 18):
- square:  max(|u|, |v|) <= 10                   (side 20 x scale: 10, 12, .., 20 px)
- ellipse: (u / 12.65)^2 + (v / 7.15)^2 <= 1    (long axis horizontal at orientation 0);
           rasterised at scale 1: box 26 x 14, second-moment semi-axes 12.7 x 7.1 px (official
           frames: 26 x 14, 12.7 x 7.2, ratio ~1.75)
- heart:   two lobe discs of radius 4.9 px centred 5.1 px either side of the middle line and
           12.6 px above the point, joined to the point by their tangent lines, and the band and
           triangle between them: a 20 x 17.5 px outline, rasterised 20 x 17 px, area 222 at
           scale 1 (lobes up, point down); shifted so its area centroid is the centre.
The sizes are chosen so that the rasterised boxes and areas at orientation 0 match the official
ones per scale (within 1 px and 6 %; tests/test_render.py).

Shape suffixes (the project legend is in CONTRIBUTING.md): B images of a chunk, H/W image
rows/columns (64), Q mask side, P positions per axis, Y packed bytes per image (512), F factors.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

IMAGE_SIZE = 64
PACKED_BYTES = IMAGE_SIZE * IMAGE_SIZE // 8  # 512: np.packbits of one 64x64 binary image
MASK_HALF = 16  # the mask spans [centre - 16, centre + 16) on both axes
MASK_SIDE = 2 * MASK_HALF
CENTRE_MIN_PX = 16  # 0.25 x 64: the centre's corner at position value 0
CENTRE_SPAN_PX = 32  # 0.5 x 64: the centre moves 16..48 px as the position value goes 0..1
MAX_POSITIONS = CENTRE_SPAN_PX + 1  # more positions per axis would repeat pixel shifts
SUBSAMPLES = 8  # per pixel and axis
COVERAGE_THRESHOLD = 0.5  # a pixel is on when at least this share of its sub-samples is inside
RENDER_VERSION = 2  # bump when the geometry changes: it is part of the cache key

SQUARE_HALF_SIDE_PX = 10.0
ELLIPSE_SEMI_AXES_PX = (12.65, 7.15)  # (horizontal, vertical) at orientation 0
HEART_HALF_WIDTH_PX = 10.0
HEART_HEIGHT_PX = 17.5
HEART_LOBE_RADIUS_PX = 4.9
MAX_SHAPE_RADIUS_PX = SQUARE_HALF_SIDE_PX * math.sqrt(2.0)  # the largest shape's reach

SHAPE_NAMES = ("square", "ellipse", "heart")
LATENT_NAMES = ("color", "shape", "scale", "orientation", "posX", "posY")


@dataclass(frozen=True)
class GridSpec:
    """Sizes of the rendered factor grid (official: 6 scales, 40 orientations, 32 positions)."""

    num_scales: int = 6
    num_orientations: int = 40
    num_positions: int = 32

    def __post_init__(self) -> None:
        for name in ("num_scales", "num_orientations", "num_positions"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.num_positions > MAX_POSITIONS:
            raise ValueError(
                f"num_positions must be <= {MAX_POSITIONS} (distinct integer pixel shifts), "
                f"got {self.num_positions}"
            )

    @property
    def latent_sizes(self) -> tuple[int, ...]:
        p = self.num_positions
        return (1, len(SHAPE_NAMES), self.num_scales, self.num_orientations, p, p)

    def possible_values(self) -> tuple[np.ndarray, ...]:
        """Per-factor values in the official file's conventions (shape values 1, 2, 3)."""
        return (
            np.array([1.0]),
            np.arange(1.0, len(SHAPE_NAMES) + 1.0),
            np.linspace(0.5, 1.0, self.num_scales),
            np.linspace(0.0, 2.0 * math.pi, self.num_orientations),
            np.linspace(0.0, 1.0, self.num_positions),
            np.linspace(0.0, 1.0, self.num_positions),
        )


def mixed_radix_bases(latent_sizes: tuple[int, ...] | list[int] | np.ndarray) -> np.ndarray:
    """Place values (F,) int64 of `latent_sizes` with the LAST factor fastest (official order)."""
    sizes_F = np.asarray(latent_sizes, dtype=np.int64)
    return np.concatenate([np.cumprod(sizes_F[::-1])[::-1][1:], [1]]).astype(np.int64)


def classes_of(indices_B: np.ndarray, latent_sizes: tuple[int, ...]) -> np.ndarray:
    """Factor classes (B, F) int64 of flat image indices (B,): the inverse of the dot with bases."""
    return np.stack(np.unravel_index(np.asarray(indices_B), latent_sizes), axis=1).astype(np.int64)


# --- shape outlines -------------------------------------------------------------------------


def _heart_from_point(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Inside test of the scale-1 heart in pixels, its point at the origin and lobes up (y up).

    The outline is the convex hull of the point and each lobe disc below the lobes' centre line,
    together with the two discs: the hull of a disc (centre C, radius r) and the point P is the
    cone of half-angle asin(r / |C - P|) about P->C, cut at the chord between the tangent points.
    """
    r = HEART_LOBE_RADIUS_PX
    d = HEART_HALF_WIDTH_PX - r  # lobe centres at (+-d, y0)
    y0 = HEART_HEIGHT_PX - r
    lobes = ((x - d) ** 2 + (y - y0) ** 2 <= r * r) | ((x + d) ** 2 + (y - y0) ** 2 <= r * r)
    between = (np.abs(x) <= d) & (y >= y0 - r)  # the band between the lobe centres
    triangle = (y >= 0.0) & (np.abs(x) * y0 <= d * y)  # point, left and right lobe centres
    reach = math.hypot(d, y0)  # |C - P|
    along_x, along_y = d / reach, y0 / reach  # unit axis P -> right lobe centre
    chord = (reach * reach - r * r) / reach  # distance from P to the tangent chord
    tan_half_angle = r / math.sqrt(reach * reach - r * r)
    mirrored = np.abs(x)  # the left cone is the mirror image of the right one
    proj = mirrored * along_x + y * along_y
    perp = np.abs(y * along_x - mirrored * along_y)
    cone = (proj >= 0.0) & (proj <= chord) & (perp <= proj * tan_half_angle)
    return lobes | ((y <= y0) & (between | triangle | cone))


@functools.cache
def _heart_centroid_height() -> float:
    """Height (px) of the scale-1 heart's area centroid above its point, numerically.

    A 0.01 px grid over the heart's box gives it to ~1e-3 px.
    """
    xs = np.arange(-HEART_HALF_WIDTH_PX, HEART_HALF_WIDTH_PX, 0.01) + 0.005
    ys = np.arange(0.0, HEART_HEIGHT_PX, 0.01) + 0.005
    y, x = np.meshgrid(ys, xs, indexing="ij")
    return float(y[_heart_from_point(x, y)].mean())


def _inside_unit(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean inside test of shape `shape` (0 square, 1 ellipse, 2 heart) at scale 1 and
    orientation 0; (u, v) in pixels from the shape's centre, u to the right, v up."""
    if shape == 0:
        return np.maximum(np.abs(u), np.abs(v)) <= SQUARE_HALF_SIDE_PX
    if shape == 1:
        a, b = ELLIPSE_SEMI_AXES_PX
        return (u / a) ** 2 + (v / b) ** 2 <= 1.0
    if shape == 2:
        return _heart_from_point(u, v + _heart_centroid_height())
    raise ValueError(f"shape must be 0, 1 or 2, got {shape}")


@functools.cache
def _subsample_offsets() -> tuple[np.ndarray, np.ndarray]:
    """Row and column offsets (Q, Q, S*S) in pixels of each mask pixel's sub-samples from the
    shape's centre (the mask's middle corner)."""
    sub = (np.arange(SUBSAMPLES) + 0.5) / SUBSAMPLES  # symmetric inside the unit pixel
    pix = np.arange(MASK_SIDE, dtype=np.float64) - MASK_HALF
    rows = pix[:, None, None, None] + sub[None, None, :, None]
    cols = pix[None, :, None, None] + sub[None, None, None, :]
    rows, cols = np.broadcast_arrays(rows, cols)
    shape = (MASK_SIDE, MASK_SIDE, SUBSAMPLES * SUBSAMPLES)
    return rows.reshape(shape).copy(), cols.reshape(shape).copy()


def render_mask(shape: int, scale: float, orientation: float) -> np.ndarray:
    """Binary mask (Q, Q) uint8 of one shape; the corner between mask pixels
    (MASK_HALF - 1, MASK_HALF - 1) and (MASK_HALF, MASK_HALF) is the rotation centre. `scale`
    multiplies lengths (official 0.5..1), `orientation` in radians."""
    if not 0.0 < scale <= 1.0:
        raise ValueError(f"scale must be in (0, 1], got {scale}")
    rows, cols = _subsample_offsets()
    theta = math.fmod(float(orientation), 2.0 * math.pi)  # 2*pi -> exactly 0: same image
    c, s = math.cos(theta), math.sin(theta)
    x, y = cols, -rows  # image frame with y up, so positive theta turns counter-clockwise
    # Rotate the sample points by -theta into the shape's own frame, then undo the scale.
    u = (c * x + s * y) / scale
    v = (-s * x + c * y) / scale
    coverage = _inside_unit(shape, u, v).mean(axis=-1)
    return (coverage >= COVERAGE_THRESHOLD).astype(np.uint8)


def centre_corners(num_positions: int) -> np.ndarray:
    """Centre (P,) int64 of each position value linspace(0, 1, P) along one axis: the pixel
    corner 16 + round(32 p), round half up (see the module docstring)."""
    pos = np.linspace(0.0, 1.0, num_positions)
    return (CENTRE_MIN_PX + np.floor(pos * CENTRE_SPAN_PX + 0.5)).astype(np.int64)


def place_all_positions(mask_QQ: np.ndarray, num_positions: int) -> np.ndarray:
    """Images (P, P, H, W) uint8 of one mask at every (posX, posY); posX shifts columns."""
    p = num_positions
    starts = centre_corners(p) - MASK_HALF
    strip_PHQ = np.zeros((p, IMAGE_SIZE, MASK_SIDE), dtype=np.uint8)
    for iy, r0 in enumerate(starts):
        strip_PHQ[iy, r0 : r0 + MASK_SIDE, :] = mask_QQ
    images_PPHW = np.zeros((p, p, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    for ix, c0 in enumerate(starts):
        images_PPHW[ix, :, :, c0 : c0 + MASK_SIDE] = strip_PHQ
    return images_PPHW


@dataclass
class Chunk:
    """Consecutive rows of a dataset, starting at image index `start`."""

    start: int
    packed_BY: np.ndarray  # (B, 512) uint8, np.packbits of the (64, 64) image rows
    classes_BF: np.ndarray  # (B, 6) int64
    values_BF: np.ndarray  # (B, 6) float64


def grid_rows(spec: GridSpec, start: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Classes (B, F) int64 and values (B, F) float64 of image indices start..start+count-1."""
    sizes = spec.latent_sizes
    classes_BF = classes_of(np.arange(start, start + count), sizes)
    values_BF = np.empty(classes_BF.shape, dtype=np.float64)
    for f, possible in enumerate(spec.possible_values()):
        values_BF[:, f] = possible[classes_BF[:, f]]
    return classes_BF, values_BF


def render_chunks(spec: GridSpec) -> Iterator[Chunk]:
    """Yield the whole grid in index order, one chunk per (shape, scale): orientations x P x P.

    Each mask is rasterised once and copied to every position, which is what makes the full
    737,280-image grid take seconds rather than minutes.
    """
    values = spec.possible_values()
    p = spec.num_positions
    per_mask = p * p
    per_chunk = spec.num_orientations * per_mask
    start = 0
    for shape in range(len(SHAPE_NAMES)):
        for scale in values[2]:
            packed_BY = np.empty((per_chunk, PACKED_BYTES), dtype=np.uint8)
            for o, theta in enumerate(values[3]):
                images_PPHW = place_all_positions(render_mask(shape, float(scale), theta), p)
                packed_BY[o * per_mask : (o + 1) * per_mask] = np.packbits(
                    images_PPHW.reshape(per_mask, IMAGE_SIZE * IMAGE_SIZE), axis=1
                )
            classes_BF, values_BF = grid_rows(spec, start, per_chunk)
            yield Chunk(start, packed_BY, classes_BF, values_BF)
            start += per_chunk


def unpack_images(packed_BY: np.ndarray) -> np.ndarray:
    """Binary images (B, H, W) uint8 in {0, 1} from packed rows (B, 512)."""
    b = packed_BY.shape[0]
    return np.unpackbits(packed_BY, axis=1).reshape(b, IMAGE_SIZE, IMAGE_SIZE)
