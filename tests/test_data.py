"""Tests of the dSprites data layer: indexing, geometry, Arrow cache, official .npz, sampling.

Small grids and tmp_path caches only. Known answers: hand-computed mixed-radix bases and
indices, exact centre pixels of symmetric shapes, images compared with masks rendered directly,
arrays written into an official-format .npz and read back.

Shape suffixes (CONTRIBUTING.md): N images, B batch, F factors (6), Q mask side.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import pickle
import re
import struct
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from trainer.data import cache as data_cache
from trainer.data import dsprites as data
from trainer.data.dsprites import (
    LATENT_NAMES,
    SHAPE_NAMES,
    DatasetError,
    batch_indices_for_step,
    epoch_permutation,
    open_dsprites,
    sample_indices_with_fixed_factor,
    sample_random_indices,
)
from trainer.data.render import (
    MASK_HALF,
    GridSpec,
    classes_of,
    mixed_radix_bases,
    place_all_positions,
    render_mask,
)

SMALL = {"num_scales": 6, "num_orientations": 10, "num_positions": 8}  # 11,520 images
SMALL_SIZES = (1, 3, 6, 10, 8, 8)
# Centre corners of positions linspace(0, 1, 8): 16 + round(k / 7 * 32), computed by hand
# (0, 4.57, 9.14, 13.71, 18.29, 22.86, 27.43, 32 -> 0, 5, 9, 14, 18, 23, 27, 32).
CENTRES_8 = [16, 21, 25, 30, 34, 39, 43, 48]


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> data.DSprites:
    return open_dsprites(**SMALL, cache_dir=tmp_path_factory.mktemp("cache"))


def centroid(image_HW: np.ndarray) -> tuple[float, float]:
    """Area centroid (row, column) in frame coordinates: pixel (i, j) has its centre at
    (i + 0.5, j + 0.5), so a shape's centre corner c is the centroid c of a symmetric shape."""
    rows, cols = np.nonzero(image_HW)
    return float(rows.mean()) + 0.5, float(cols.mean()) + 0.5


# --- indexing -----------------------------------------------------------------------------------


def test_public_names():
    assert LATENT_NAMES == ("color", "shape", "scale", "orientation", "posX", "posY")
    assert SHAPE_NAMES == ("square", "ellipse", "heart")


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


def test_small_grid_indexing_and_values(small):
    assert small.latent_sizes == SMALL_SIZES
    assert len(small) == 3 * 6 * 10 * 64
    assert small.latent_classes.dtype == np.int64 and small.latent_values.dtype == np.float64
    # Hand-computed: shape 2, scale 3, orientation 9, posX 7, posY 0
    # -> 2*3840 + 3*640 + 9*64 + 7*8 + 0 = 10232.
    idx = np.array([[0, 2, 3, 9, 7, 0]]) @ small.bases
    assert idx.tolist() == [10232]
    assert small.latent_classes[10232].tolist() == [0, 2, 3, 9, 7, 0]
    np.testing.assert_allclose(small.latent_values[10232], [1.0, 3.0, 0.8, 2 * math.pi, 1.0, 0.0])
    # Every row i holds the classes of image i (official mixed-radix order, posY fastest).
    assert np.array_equal(small.latent_classes @ small.bases, np.arange(len(small)))
    assert np.array_equal(small.latent_classes[:3, 5], [0, 1, 2])
    # Values are the official ranges spread linearly.
    np.testing.assert_allclose(small.possible_values[2], [0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    np.testing.assert_allclose(small.possible_values[3], np.linspace(0, 2 * math.pi, 10))
    np.testing.assert_allclose(small.possible_values[4], np.linspace(0, 1, 8))
    assert small.source == "render" and small.latent_names == LATENT_NAMES


def test_images_match_directly_rendered_masks(small):
    rng = np.random.default_rng(0)
    idx_B = rng.integers(0, len(small), size=40)
    images_BHW = small.images(idx_B)
    assert images_BHW.shape == (40, 64, 64) and images_BHW.dtype == np.uint8
    assert set(np.unique(images_BHW)) <= {0, 1}
    values = GridSpec(**SMALL).possible_values()
    for image_HW, classes in zip(images_BHW, small.latent_classes[idx_B], strict=True):
        _, shape, scale, orient, px, py = classes
        mask_QQ = render_mask(int(shape), float(values[2][scale]), float(values[3][orient]))
        expected = place_all_positions(mask_QQ, 8)[px, py]
        assert np.array_equal(image_HW, expected)


def test_images_reject_bad_input(small):
    with pytest.raises(ValueError, match="indices must be in"):
        small.images(np.array([len(small)]))


# --- geometry -----------------------------------------------------------------------------------


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


# --- cache --------------------------------------------------------------------------------------


def _forbid_build(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("the cache was rebuilt")

    monkeypatch.setattr(data, "render_chunks", boom)


def test_cache_round_trip_and_reopen_does_not_rebuild(small, monkeypatch):
    mtime = small.cache_path.stat().st_mtime_ns
    assert small.cache_path.name == f"dsprites-render-r2-sc6-or10-pos8-f{data.FORMAT_VERSION}.arrow"
    _forbid_build(monkeypatch)
    again = open_dsprites(**SMALL, cache_dir=small.cache_path.parent)
    assert again.cache_path.stat().st_mtime_ns == mtime
    idx = np.arange(len(small))
    assert np.array_equal(again.images(idx), small.images(idx))
    assert np.array_equal(again.latent_classes, small.latent_classes)
    assert np.array_equal(again.latent_values, small.latent_values)
    assert again.latent_sizes == small.latent_sizes and again.latent_names == small.latent_names
    for a, b in zip(again.possible_values, small.possible_values, strict=True):
        assert np.array_equal(a, b)
    # Packed on disk: 512 bytes per image plus 96 bytes of classes and values.
    assert small.cache_path.stat().st_size < len(small) * (512 + 96) * 1.05


def test_pickle_sends_only_how_to_reopen(small):
    blob = pickle.dumps(small)
    assert len(blob) < 2000
    other = pickle.loads(blob)
    assert np.array_equal(other.images(np.arange(500)), small.images(np.arange(500)))


def _rewrite_metadata(path: Path, **changes) -> None:
    """Rewrite a cache file in place with some metadata fields changed (a stale cache)."""
    import json

    with pa.memory_map(str(path)) as src:
        reader = pa.ipc.open_file(src)
        doc = json.loads(reader.schema.metadata[data_cache.META_KEY])
        doc.update(changes)
        batches = [
            reader.get_batch_with_custom_metadata(i) for i in range(reader.num_record_batches)
        ]
        schema = reader.schema.with_metadata({data_cache.META_KEY: json.dumps(doc).encode()})
        tmp = path.with_suffix(".rewrite")
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
            for batch, custom in batches:
                writer.write_batch(batch, custom_metadata=custom)
    os.replace(tmp, path)


def _damage(kind: str, ds: data.DSprites) -> None:
    path = ds.cache_path
    if kind == "stale":
        _rewrite_metadata(path, format_version=data.FORMAT_VERSION - 1)
    elif kind == "partial":
        size = path.stat().st_size
        with open(path, "r+b") as f:
            f.truncate(size // 2)
    elif kind == "corrupt":
        offset = int(ds._cache.image_offsets_E[3]) + 1000  # inside batch 3's image bytes
        with open(path, "r+b") as f:
            f.seek(offset)
            byte = f.read(1)
            f.seek(offset)
            f.write(bytes([byte[0] ^ 0xFF]))
    elif kind == "other_grid":
        _rewrite_metadata(path, source_id="render-r2-sc6-or10-pos7")


@pytest.mark.parametrize("kind", ["stale", "partial", "corrupt", "other_grid"])
def test_bad_cache_is_detected_and_rebuilt(tmp_path, kind):
    grid = {"num_scales": 2, "num_orientations": 4, "num_positions": 4}
    ds = open_dsprites(**grid, cache_dir=tmp_path)
    reference = ds.images(np.arange(len(ds)))
    _damage(kind, ds)
    reason = "expected"
    try:
        data_cache.verify_cache(ds.cache_path, ds._cache.meta.source_id)
        reason = None
    except data_cache.CacheInvalid as exc:
        reason = str(exc)
    assert reason is not None  # the damage is detected ...
    fixed = open_dsprites(**grid, cache_dir=tmp_path)
    assert np.array_equal(fixed.images(np.arange(len(fixed))), reference)  # ... and rebuilt
    data_cache.verify_cache(fixed.cache_path, ds._cache.meta.source_id)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == [
        ds.cache_path.name
    ]


def test_cache_key_covers_grid_and_default_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CASCADEVAE_CACHE", str(tmp_path / "env"))
    assert data.default_cache_dir() == tmp_path / "env"
    a = open_dsprites(num_scales=1, num_orientations=2, num_positions=2)
    b = open_dsprites(num_scales=1, num_orientations=3, num_positions=2)
    assert a.cache_path.parent == tmp_path / "env" and a.cache_path != b.cache_path
    assert len(a) == 3 * 2 * 4 and len(b) == 3 * 3 * 4
    monkeypatch.delenv("CASCADEVAE_CACHE")
    assert data.default_cache_dir() == Path.home() / ".cache" / "cascadevae"


def _race_worker(cache_dir: str) -> tuple[int, int]:
    ds = open_dsprites(num_scales=3, num_orientations=6, num_positions=6, cache_dir=cache_dir)
    return len(ds), int(ds.images(np.arange(len(ds))).sum(dtype=np.int64))


def test_two_processes_build_the_same_cache(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        results = pool.map(_race_worker, [str(tmp_path)] * 2)
    assert results[0] == results[1] and results[0][0] == 3 * 3 * 6 * 36
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        ".dsprites-render-r2-sc3-or6-pos6-f1.arrow.lock",
        "dsprites-render-r2-sc3-or6-pos6-f1.arrow",
    ]


def test_invalid_arguments(tmp_path):
    with pytest.raises(ValueError, match="source.*'png'"):
        open_dsprites(source="png", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="npz_path.*None"):
        open_dsprites(source="npz", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="num_scales.*0"):
        open_dsprites(num_scales=0, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="num_positions.*-1"):
        open_dsprites(num_positions=-1, cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


# --- official .npz -------------------------------------------------------------------------------


class _Py2Pickler(pickle._Pickler):
    """Writes every str as a Python-2 `str` (SHORT_BINSTRING/BINSTRING), as the official file's
    metadata was: such pickles only load in Python 3 with encoding="latin1"."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_str(self, obj: str) -> None:
        raw = obj.encode("latin1")
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[str] = save_str


NPZ_SIZES = (1, 3, 2, 4, 3, 3)  # 216 images


def _official_arrays(sizes=NPZ_SIZES) -> dict:
    n = int(np.prod(sizes))
    classes = classes_of(np.arange(n), sizes)
    possible = {
        "color": np.array([1.0]),
        "shape": np.array([1.0, 2.0, 3.0]),
        "scale": np.linspace(0.5, 1, sizes[2]),
        "orientation": np.linspace(0, 2 * np.pi, sizes[3]),
        "posX": np.linspace(0, 1, sizes[4]),
        "posY": np.linspace(0, 1, sizes[5]),
    }
    values = np.stack([possible[k][classes[:, f]] for f, k in enumerate(LATENT_NAMES)], axis=1)
    rng = np.random.default_rng(7)
    imgs = (rng.random((n, 64, 64)) < 0.1).astype(np.uint8)
    metadata = {
        "date": "April 2017",
        "description": "small test file in the official layout",
        "version": 1,
        "latents_names": LATENT_NAMES,
        "latents_possible_values": possible,
        "latents_sizes": np.array(sizes),
        "author": "test",
        "title": "dSprites dataset",
    }
    return {
        "imgs": imgs,
        "latents_values": values,
        "latents_classes": classes,
        "metadata": metadata,
    }


def _write_npz(path: Path, arrays: dict) -> Path:
    """An .npz like the official one: deflated .npy members, metadata a Python-2 pickle."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key, value in arrays.items():
            with zf.open(f"{key}.npy", "w") as f:
                if isinstance(value, tuple):  # (header shape, payload): a lying .npy header
                    header = {"descr": "|u1", "fortran_order": False, "shape": value[0]}
                    np.lib.format.write_array_header_1_0(f, header)
                    f.write(value[1].tobytes())
                elif key == "metadata":
                    obj = np.empty((), dtype=object)
                    obj[()] = value
                    header = {"descr": "|O", "fortran_order": False, "shape": ()}
                    np.lib.format.write_array_header_1_0(f, header)
                    _Py2Pickler(f, protocol=2).dump(obj)
                else:
                    np.lib.format.write_array(f, value)
    return path


def test_py2_pickle_emulation_needs_latin1(tmp_path):
    path = _write_npz(tmp_path / "d.npz", _official_arrays())
    with zipfile.ZipFile(path) as zf:
        assert pickle.SHORT_BINSTRING + bytes([len("latents_sizes")]) in zf.read("metadata.npy")
    with np.load(path, allow_pickle=True, encoding="latin1") as npz:
        assert npz["metadata"][()]["latents_names"] == LATENT_NAMES


def test_npz_round_trip(tmp_path, monkeypatch):
    arrays = _official_arrays()
    path = _write_npz(tmp_path / "dsprites_ndarray_small.npz", arrays)
    cache = tmp_path / "cache"
    ds = open_dsprites(source="npz", npz_path=str(path), cache_dir=cache)
    assert ds.source == str(path.resolve()) and ds.latent_sizes == NPZ_SIZES
    assert np.array_equal(ds.images(np.arange(len(ds))), arrays["imgs"])
    assert np.array_equal(ds.images(np.array([5, 0, 5])), arrays["imgs"][[5, 0, 5]])
    assert np.array_equal(ds.latent_classes, arrays["latents_classes"])
    assert np.array_equal(ds.latent_values, arrays["latents_values"])
    np.testing.assert_array_equal(ds.possible_values[3], np.linspace(0, 2 * np.pi, 4))
    mtime = ds.cache_path.stat().st_mtime_ns

    def boom(*args, **kwargs):
        raise AssertionError("rebuilt")

    monkeypatch.setattr(data, "inspect_npz", boom)
    again = open_dsprites(source="npz", npz_path=str(path), cache_dir=cache)
    assert again.cache_path == ds.cache_path and again.cache_path.stat().st_mtime_ns == mtime
    monkeypatch.undo()
    # A modified source file gets a new cache key (size + mtime are part of it).
    arrays["imgs"][0] = 1 - arrays["imgs"][0]
    os.utime(_write_npz(path, arrays), ns=(1, 1))
    changed = open_dsprites(source="npz", npz_path=str(path), cache_dir=cache)
    assert changed.cache_path != ds.cache_path
    assert np.array_equal(changed.images(np.array([0])), arrays["imgs"][:1])


def _bad_npz_cases():
    def edit(fn):
        arrays = _official_arrays()
        fn(arrays)
        return arrays

    def drop(key):
        return lambda a: a.pop(key)

    def meta(key, value):
        return lambda a: a["metadata"].__setitem__(key, value)

    def meta_drop(key):
        return lambda a: a["metadata"].pop(key)

    def shuffle_rows(a):
        a["latents_classes"] = a["latents_classes"][::-1].copy()

    def wrong_value(a):
        a["latents_values"][10, 2] += 0.01

    def pixel_two(a):
        a["imgs"][100, 3, 3] = 2

    return {
        "missing key": (edit(drop("latents_classes")), r"missing key.*latents_classes"),
        "metadata missing": (edit(drop("metadata")), r"missing key.*metadata"),
        "classes dtype": (
            edit(lambda a: a.__setitem__("latents_classes", a["latents_classes"].astype(np.int32))),
            "latents_classes has dtype int32, expected int64",
        ),
        "values shape": (
            edit(lambda a: a.__setitem__("latents_values", a["latents_values"][:, :5].copy())),
            r"latents_values has shape \(216, 5\), expected \(216, 6\)",
        ),
        "imgs shape": (
            edit(lambda a: a.__setitem__("imgs", a["imgs"][:, :32, :32].copy())),
            r"imgs has shape \(216, 32, 32\), expected \(216, 64, 64\)",
        ),
        "imgs dtype": (
            edit(lambda a: a.__setitem__("imgs", a["imgs"].astype(np.float32))),
            "imgs has dtype float32, expected uint8",
        ),
        "sizes inconsistent": (
            edit(meta("latents_sizes", np.array([1, 3, 2, 4, 3, 4]))),
            r"latents_values has shape \(216, 6\), expected \(288, 6\)",
        ),
        "sizes missing": (edit(meta_drop("latents_sizes")), "metadata lacks 'latents_sizes'"),
        "names wrong": (
            edit(meta("latents_names", ("a", "b", "c", "d", "e", "f"))),
            "metadata latents_names",
        ),
        "rows out of order": (edit(shuffle_rows), "not the mixed-radix grid"),
        "values disagree": (edit(wrong_value), "disagree with latents_possible_values for 'scale'"),
        "pixel values": (edit(pixel_two), "values > 1"),
    }


BAD_CASES = _bad_npz_cases()


def _assert_cache_dir_clean(cache: Path) -> None:
    leftovers = [p.name for p in cache.iterdir()] if cache.exists() else []
    assert not [n for n in leftovers if n.endswith((".arrow", ".tmp"))], leftovers


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_npz_bad_contents(tmp_path, case):
    arrays, message = BAD_CASES[case]
    path = _write_npz(tmp_path / "bad_dsprites.npz", arrays)
    cache = tmp_path / "cache"
    with pytest.raises(DatasetError, match=message) as info:
        open_dsprites(source="npz", npz_path=str(path), cache_dir=cache)
    assert "bad_dsprites.npz" in str(info.value)
    _assert_cache_dir_clean(cache)


def test_npz_bad_files(tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(DatasetError, match="nothere.npz: file not found"):
        open_dsprites(source="npz", npz_path=str(tmp_path / "nothere.npz"), cache_dir=cache)
    text = tmp_path / "text.npz"
    text.write_text("not a zip")
    with pytest.raises(DatasetError, match="text.npz: not a valid .npz archive"):
        open_dsprites(source="npz", npz_path=str(text), cache_dir=cache)

    good = _write_npz(tmp_path / "good.npz", _official_arrays())
    blob = good.read_bytes()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(blob[: len(blob) * 6 // 10])
    with pytest.raises(DatasetError, match="truncated.npz: not a valid .npz archive"):
        open_dsprites(source="npz", npz_path=str(truncated), cache_dir=cache)

    # The imgs header promises 216 images; the payload has one fewer / one more.
    for name, rows, message in (
        ("short", 215, "imgs ends early: 215 of 216"),
        ("long", 217, "imgs holds more bytes"),
    ):
        arrays = _official_arrays()
        payload = np.zeros((rows, 64, 64), dtype=np.uint8)
        arrays["imgs"] = ((216, 64, 64), payload)
        path = _write_npz(tmp_path / f"{name}.npz", arrays)
        with pytest.raises(DatasetError, match=f"{name}.npz: {message}"):
            open_dsprites(source="npz", npz_path=str(path), cache_dir=cache)

    # Flip bytes inside the deflated imgs payload: found while streaming, after the lock.
    with zipfile.ZipFile(good) as zf:
        info = zf.getinfo("imgs.npy")
    local_extra = struct.unpack("<H", blob[info.header_offset + 28 : info.header_offset + 30])[0]
    start = info.header_offset + 30 + len(info.filename.encode()) + local_extra
    middle = start + info.compress_size // 2
    damaged = bytearray(blob)
    for k in range(64):
        damaged[middle + k] ^= 0x5A
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(bytes(damaged))
    with pytest.raises(DatasetError, match="corrupt.npz: corrupt or truncated imgs"):
        open_dsprites(source="npz", npz_path=str(corrupt), cache_dir=cache)
    _assert_cache_dir_clean(cache)


# --- sampling -----------------------------------------------------------------------------------


def test_batch_indices_for_step_crosses_epochs_and_follow_the_documented_layout():
    n, g, w = 50, 12, 3  # 4 batches per epoch, 2 items dropped per epoch
    for step in (0, 3, 4, 9):
        epoch, b = divmod(step, 4)
        perm = epoch_permutation(n, seed=5, epoch=epoch)
        parts = [
            batch_indices_for_step(n, seed=5, step=step, rank=r, world_size=w, global_batch=g)
            for r in range(w)
        ]
        assert np.array_equal(np.concatenate(parts), perm[b * g : (b + 1) * g])
        assert parts[1].shape == (4,) and np.array_equal(parts[1], perm[b * g + 4 : b * g + 8])
    # The permutation is a pure function of (seed, epoch): another epoch or seed reorders.
    perm = epoch_permutation(n, seed=5, epoch=0)
    assert sorted(perm.tolist()) == list(range(n))
    assert not np.array_equal(perm, epoch_permutation(n, seed=5, epoch=1))
    assert not np.array_equal(perm, epoch_permutation(n, seed=6, epoch=0))
    assert np.array_equal(perm, epoch_permutation(n, seed=5, epoch=0))


def test_sampler_argument_errors():
    with pytest.raises(ValueError, match="global_batch must be divisible by world_size 3, got 8"):
        batch_indices_for_step(100, seed=0, step=0, rank=0, world_size=3, global_batch=8)
    with pytest.raises(ValueError, match=r"rank must be in \[0, 2\), got 2"):
        batch_indices_for_step(100, seed=0, step=0, rank=2, world_size=2, global_batch=8)
    with pytest.raises(ValueError, match=r"rank must be in \[0, 4\), got -1"):
        batch_indices_for_step(100, seed=0, step=0, rank=-1, world_size=4, global_batch=8)
    with pytest.raises(ValueError, match="world_size must be in"):
        batch_indices_for_step(100, seed=0, step=0, rank=0, world_size=0, global_batch=8)
    with pytest.raises(ValueError, match=r"global_batch must be in \[1, 101\), got 200"):
        batch_indices_for_step(100, seed=0, step=0, rank=0, world_size=1, global_batch=200)


def test_fixed_factor_sampling_holds_the_factor():
    sizes = (1, 3, 6, 40, 32, 32)
    rng = np.random.default_rng(0)
    for factor, value in ((1, 2), (3, 39), (5, 0)):
        idx = sample_indices_with_fixed_factor(sizes, rng, factor, value, 2000)
        assert idx.shape == (2000,) and idx.dtype == np.int64
        classes = classes_of(idx, sizes)
        assert (classes[:, factor] == value).all()
        for f in range(1, 6):
            if f != factor:  # the others are drawn uniformly: every class appears
                assert len(np.unique(classes[:, f])) == sizes[f]
    a = sample_indices_with_fixed_factor(sizes, np.random.default_rng(1), 2, 4, 50)
    b = sample_indices_with_fixed_factor(sizes, np.random.default_rng(1), 2, 4, 50)
    assert np.array_equal(a, b)
    with pytest.raises(ValueError, match=r"value must be in \[0, 6\), got 6"):
        sample_indices_with_fixed_factor(sizes, rng, 2, 6, 10)
    with pytest.raises(ValueError, match=r"factor must be in \[0, 6\), got 6"):
        sample_indices_with_fixed_factor(sizes, rng, 6, 0, 10)


def test_random_sampling_covers_the_grid():
    sizes = (1, 3, 2, 2, 2, 2)
    idx = sample_random_indices(sizes, np.random.default_rng(0), 2000)
    assert idx.shape == (2000,) and idx.min() >= 0 and idx.max() < 48
    counts = np.bincount(idx, minlength=48)
    assert counts.min() > 15 and counts.max() < 70  # ~41.7 each
    assert sample_random_indices(sizes, np.random.default_rng(0), 0).shape == (0,)


# --- the .npz checked with the config, before Ray starts ---------------------------------------

# Found while streaming imgs (npz_chunks), not from the header and small arrays.
_PAYLOAD_ONLY = {"pixel values"}


def _npz_config(path: Path):
    from trainer.config import Config

    return Config.from_dict({"data": {"source": "npz", "npz_path": str(path)}})


def _file_problems(path: Path) -> list[str]:
    from trainer.config import ConfigError

    with pytest.raises(ConfigError) as info:
        _npz_config(path).check_files(source="c.yaml")
    assert str(info.value).startswith("c.yaml: 1 problem(s):")
    return info.value.problems


@pytest.mark.parametrize("case", sorted(set(BAD_CASES) - _PAYLOAD_ONLY))
def test_npz_bad_contents_are_a_config_problem(tmp_path, case):
    arrays, message = BAD_CASES[case]
    path = _write_npz(tmp_path / "bad_dsprites.npz", arrays)
    (problem,) = _file_problems(path)
    assert problem.startswith(f"data.npz_path: {path}: ")
    assert re.search(message, problem), problem


@pytest.mark.parametrize(
    "content",
    [b"", b"garbage, not a zip", b"PK\x03\x04" + b"\x00" * 40],
    ids=["empty", "text", "pk"],
)
def test_npz_unreadable_files_are_a_config_problem(tmp_path, content):
    path = tmp_path / "dsprites.npz"
    path.write_bytes(content)
    assert _file_problems(path) == [
        f"data.npz_path: {path}: not a valid .npz archive (not a zip file, or truncated)"
    ]


def test_npz_good_file_passes_the_config_check(tmp_path):
    path = _write_npz(tmp_path / "good.npz", _official_arrays())
    config = _npz_config(path)
    assert config.check_files() is config


def test_npz_bad_file_stops_launch_train_with_status_2(tmp_path, capsys, no_ray):
    from launch.train import main

    path = tmp_path / "dsprites.npz"
    path.write_bytes(b"")
    argv = ["--config", "configs/debug.yaml", "--set", "data.source=npz"]
    assert main([*argv, "--set", f"data.npz_path={path}"]) == 2
    err = capsys.readouterr().err
    assert f"data.npz_path: {path}: not a valid .npz archive" in err
