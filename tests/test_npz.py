"""Tests of trainer.data.npz: the official dSprites .npz read into the cache, its bad contents
and files refused, and the same checks made by the config before Ray starts.

Known answers: arrays written into an official-format .npz (a Python-2 pickle of the metadata)
and read back.

Shape suffixes (CONTRIBUTING.md): N images, F factors (6).
"""

from __future__ import annotations

import os
import pickle
import re
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from trainer.data import dsprites as data
from trainer.data.dsprites import (
    LATENT_NAMES,
    DatasetError,
    open_dsprites,
)
from trainer.data.render import (
    classes_of,
)


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
    debug = Path(__file__).resolve().parents[1] / "configs" / "debug.yaml"
    argv = ["--config", str(debug), "--set", "data.source=npz"]
    assert main([*argv, "--set", f"data.npz_path={path}"]) == 2
    err = capsys.readouterr().err
    assert f"data.npz_path: {path}: not a valid .npz archive" in err
