"""The small rendered dSprites grid the data tests share (test_dsprites, test_cache,
test_render): its settings and its factor sizes (the fixture `small` of conftest.py builds it
once per test module in a temporary cache)."""

from __future__ import annotations

SMALL = {"num_scales": 6, "num_orientations": 10, "num_positions": 8}  # 11,520 images
SMALL_SIZES = (1, 3, 6, 10, 8, 8)
