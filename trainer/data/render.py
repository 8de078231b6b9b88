"""dSprites renderer: the official factor grid drawn from implicit shape outlines.

Geometry (pixel units, image row i / column j, a pixel's centre at (i, j)):
- Each (shape, scale, orientation) is rasterised ONCE into a square mask of side `MASK_SIDE`
  whose centre pixel is the shape's centre (the point it rotates about). A pixel is on when at
  least half of its 4x4 sub-samples fall inside the outline (binary, like dSprites).
- Every shape at scale 1 fits in a disc of radius `SHAPE_RADIUS_PX` (10.5 px) about its centre,
  at every orientation; `MASK_RADIUS` (11) leaves the mask's outer ring always empty, so placing
  the mask anywhere in the frame can never clip the shape.
- posX moves the centre along image COLUMNS, posY along ROWS: centre pixel
  `MASK_RADIUS + rint(pos * (64 - 1 - 2 * MASK_RADIUS))`, i.e. columns/rows 11..52 for pos 0..1.
  Positions are integer pixel shifts of the same mask, so a placed image is an exact copy.
- Orientation theta rotates the shape counter-clockwise as displayed; theta is taken modulo
  2*pi, so orientation 0 and 2*pi give bit-identical images (as in the official file).

Shape outlines in unit coordinates (u to the right, v up, radius <= 1):
- square:  max(|u|, |v|) <= 1/sqrt(2)           (corners on the unit circle)
- ellipse: u^2 + (v / 0.5)^2 <= 1                (2:1 aspect, long axis horizontal at theta 0)
- heart:   (x^2 + y^2 - 1)^3 - x^2 y^3 <= 0      (the classic heart curve, lobes up, point down),
           shifted so its area centroid is the origin and scaled so its farthest point is at 1.

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
MASK_RADIUS = 11
MASK_SIDE = 2 * MASK_RADIUS + 1
SHAPE_RADIUS_PX = 10.5
CENTRE_SPAN_PX = IMAGE_SIZE - 1 - 2 * MASK_RADIUS  # 41: centre pixels 11..52
MAX_POSITIONS = CENTRE_SPAN_PX + 1  # more positions per axis would repeat pixel shifts
SUBSAMPLES = 4  # per pixel and axis
RENDER_VERSION = 1  # bump when the geometry changes: it is part of the cache key

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


def _heart_raw(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Inside test of the classic heart curve, unnormalised coordinates."""
    r2 = x * x + y * y - 1.0
    return r2 * r2 * r2 - x * x * y * y * y <= 0.0


@functools.cache
def _heart_frame() -> tuple[float, float, float]:
    """(centroid x, centroid y, farthest radius from the centroid) of the raw heart, numerically.

    A 2001^2 grid on [-1.5, 1.5]^2 gives the centroid to ~1e-4 and the radius to ~2e-3; the
    radius is padded by one grid step so the normalised heart never exceeds the unit disc.
    """
    axis = np.linspace(-1.5, 1.5, 2001)
    step = axis[1] - axis[0]
    y, x = np.meshgrid(axis, axis, indexing="ij")
    inside = _heart_raw(x, y)
    cx, cy = float(x[inside].mean()), float(y[inside].mean())
    radius = float(np.sqrt((x[inside] - cx) ** 2 + (y[inside] - cy) ** 2).max()) + step
    return cx, cy, radius


def _inside_unit(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean inside test of shape `shape` (0 square, 1 ellipse, 2 heart), radius-1 frame."""
    if shape == 0:
        half = 1.0 / math.sqrt(2.0)
        return np.maximum(np.abs(u), np.abs(v)) <= half
    if shape == 1:
        return u * u + (v / 0.5) ** 2 <= 1.0
    if shape == 2:
        cx, cy, radius = _heart_frame()
        return _heart_raw(u * radius + cx, v * radius + cy)
    raise ValueError(f"shape must be 0, 1 or 2, got {shape}")


@functools.cache
def _subsample_offsets() -> tuple[np.ndarray, np.ndarray]:
    """Row and column offsets (Q, Q, S*S) of each mask pixel's sub-samples from the centre."""
    sub = (np.arange(SUBSAMPLES) + 0.5) / SUBSAMPLES - 0.5  # symmetric about the pixel centre
    pix = np.arange(MASK_SIDE, dtype=np.float64) - MASK_RADIUS
    rows = pix[:, None, None, None] + sub[None, None, :, None]
    cols = pix[None, :, None, None] + sub[None, None, None, :]
    rows, cols = np.broadcast_arrays(rows, cols)
    shape = (MASK_SIDE, MASK_SIDE, SUBSAMPLES * SUBSAMPLES)
    return rows.reshape(shape).copy(), cols.reshape(shape).copy()


def render_mask(shape: int, scale: float, orientation: float) -> np.ndarray:
    """Binary mask (Q, Q) uint8 of one shape; its centre pixel (MASK_RADIUS, MASK_RADIUS) is the
    rotation centre. `scale` multiplies lengths (official 0.5..1), `orientation` in radians."""
    if not 0.0 < scale <= 1.0:
        raise ValueError(f"scale must be in (0, 1], got {scale}")
    rows, cols = _subsample_offsets()
    theta = math.fmod(float(orientation), 2.0 * math.pi)  # 2*pi -> exactly 0: same image
    c, s = math.cos(theta), math.sin(theta)
    x, y = cols, -rows  # image frame with y up, so positive theta turns counter-clockwise
    radius = SHAPE_RADIUS_PX * scale
    # Rotate the sample points by -theta into the shape's own frame.
    u = (c * x + s * y) / radius
    v = (-s * x + c * y) / radius
    coverage = _inside_unit(shape, u, v).mean(axis=-1)
    return (coverage >= 0.5).astype(np.uint8)


def centre_pixels(num_positions: int) -> np.ndarray:
    """Centre pixel (P,) int64 of each position value linspace(0, 1, P) along one axis."""
    pos = np.linspace(0.0, 1.0, num_positions)
    return (MASK_RADIUS + np.rint(pos * CENTRE_SPAN_PX)).astype(np.int64)


def place_all_positions(mask_QQ: np.ndarray, num_positions: int) -> np.ndarray:
    """Images (P, P, H, W) uint8 of one mask at every (posX, posY); posX shifts columns."""
    p = num_positions
    starts = centre_pixels(p) - MASK_RADIUS
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
