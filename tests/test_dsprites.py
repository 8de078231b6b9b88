"""Tests of trainer.data.dsprites: the DSprites view (indexing, images, pickling, arguments)
and its index samplers.

Small grids and tmp_path caches only. Known answers: hand-computed mixed-radix indices, images
compared with masks rendered directly.

Shape suffixes (CONTRIBUTING.md): N images, B batch, F factors (6), Q mask side.
"""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
from dsprites_grid import SMALL, SMALL_SIZES

from trainer.data.dsprites import (
    LATENT_NAMES,
    SHAPE_NAMES,
    batch_indices_for_step,
    epoch_permutation,
    open_dsprites,
    sample_indices_with_fixed_factor,
    sample_random_indices,
)
from trainer.data.render import (
    GridSpec,
    classes_of,
    place_all_positions,
    render_mask,
)


def test_public_names():
    assert LATENT_NAMES == ("color", "shape", "scale", "orientation", "posX", "posY")
    assert SHAPE_NAMES == ("square", "ellipse", "heart")


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


def test_pickle_sends_only_how_to_reopen(small):
    blob = pickle.dumps(small)
    assert len(blob) < 2000
    other = pickle.loads(blob)
    assert np.array_equal(other.images(np.arange(500)), small.images(np.arange(500)))


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
