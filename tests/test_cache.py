"""Tests of trainer.data.cache: the Arrow cache of the dSprites grid (round trip, stale, partial
or corrupt caches rebuilt, the cache key, concurrent builders).

Small grids and tmp_path caches only.

Shape suffixes (CONTRIBUTING.md): N images, F factors (6).
"""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from dsprites_grid import SMALL

from trainer.data import cache as data_cache
from trainer.data import dsprites as data
from trainer.data.dsprites import (
    open_dsprites,
)


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


class _NoLock:
    """Stands in for `filelock.FileLock` where locks do not reach across machines (a shared
    folder without working file locks): every process builds."""

    def __init__(self, path):
        self.path = path

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _race_worker_maybe_unlocked(cache_dir: str, locked: bool) -> tuple[int, int, bool]:
    """Open (building when needed) the cache; unlocked processes build even when the file
    appears meanwhile. Returns (rows, sum of all pixels, whether this process built)."""
    built = []
    if not locked:
        data_cache.FileLock = _NoLock  # this spawned process only
        original = data_cache.write_cache

        def write_and_note(*args, **kwargs):
            built.append(True)
            return original(*args, **kwargs)

        data_cache.write_cache = write_and_note
        data._try_open = lambda path, source_id: None  # never take a file that is there
        verify = data_cache.verify_cache

        def stale_first(path, source_id):  # the check before the build says "rebuild"
            if not built:
                raise data_cache.CacheInvalid("forced rebuild (test)")
            return verify(path, source_id)

        data_cache.verify_cache = stale_first
    ds = open_dsprites(num_scales=3, num_orientations=6, num_positions=6, cache_dir=cache_dir)
    return len(ds), int(ds.images(np.arange(len(ds))).sum(dtype=np.int64)), bool(built)


def test_several_processes_with_and_without_locks_build_one_intact_cache(tmp_path):
    """Six processes build the same cache at once: three take the build lock, three act as
    nodes whose locks do not work on the shared folder and each write the whole file. Every
    file is written under a unique temporary name and renamed into place, so every process
    reads complete data and one intact file is left, without temporary files."""
    ctx = multiprocessing.get_context("spawn")
    jobs = [(str(tmp_path), locked) for locked in (True, False, True, False, True, False)]
    with ctx.Pool(len(jobs)) as pool:
        results = pool.starmap(_race_worker_maybe_unlocked, jobs)
    assert len({(rows, total) for rows, total, _ in results}) == 1
    assert results[0][0] == 3 * 3 * 6 * 36
    # Every unlocked process wrote the file itself (so writes really overlapped or followed
    # one another on the same name).
    assert all(
        built for (_, locked), (_, _, built) in zip(jobs, results, strict=True) if not locked
    )
    source_id = f"render-r{data.RENDER_VERSION}-sc3-or6-pos6"
    cache_name = f"dsprites-{source_id}-f{data_cache.FORMAT_VERSION}.arrow"
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".{cache_name}.lock", cache_name]
    checked = data_cache.verify_cache(tmp_path / cache_name, source_id)
    assert checked.classes_NF.shape == (3 * 3 * 6 * 36, 6)
