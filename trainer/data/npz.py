"""Reader of the official dSprites file `dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz`.

The file is a zip of .npy members: `imgs` (N, 64, 64) uint8 in {0, 1}, `latents_values` (N, 6)
float64, `latents_classes` (N, 6) int64 and `metadata`, a dict pickled under Python 2 (so it
must be read with encoding="latin1"). N may be any size consistent with the file's own
`latents_sizes` (tests write small files in this format).

`inspect_npz` checks everything except the image payload and loads the small arrays;
`npz_chunks` then streams `imgs` out of the zip member in slices, because the full array is
3 GB once decompressed. Every problem is a DatasetError naming the file and the problem.

Shape-suffix legend: N images, B images in a chunk, H/W rows/columns (64), F factors (6).
"""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trainer.data.cache import NUM_FACTORS, DatasetError
from trainer.data.render import IMAGE_SIZE, LATENT_NAMES, Chunk, classes_of

OFFICIAL_NAME = "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"
REQUIRED_KEYS = ("imgs", "latents_values", "latents_classes", "metadata")
READ_ERRORS = (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error, KeyError)


@dataclass
class NpzHeader:
    """A checked official-format file: everything but the image payload, which stays on disk."""

    path: Path
    latent_sizes: tuple[int, ...]
    latent_names: tuple[str, ...]
    possible_values: tuple[np.ndarray, ...]
    classes_NF: np.ndarray  # (N, 6) int64
    values_NF: np.ndarray  # (N, 6) float64


def _text(x: Any) -> str:
    """A metadata string: Python-2 pickles give str (latin1) or, if loaded as bytes, bytes."""
    return x.decode("latin1") if isinstance(x, bytes) else str(x)


def _fail(path: Path, problem: str) -> DatasetError:
    return DatasetError(f"{path}: {problem}")


def _parse_metadata(path: Path, raw: Any) -> tuple[tuple[int, ...], tuple[str, ...], list[Any]]:
    """(latent_sizes, latent_names, possible values per factor) from the unpickled metadata."""
    meta = raw.item() if isinstance(raw, np.ndarray) and raw.dtype == object else raw
    if not isinstance(meta, dict):
        raise _fail(path, f"metadata is a {type(meta).__name__}, expected a pickled dict")
    meta = {_text(k): v for k, v in meta.items()}
    for key in ("latents_sizes", "latents_names", "latents_possible_values"):
        if key not in meta:
            raise _fail(path, f"metadata lacks {key!r} (has {sorted(meta)})")
    try:
        sizes = tuple(int(s) for s in np.asarray(meta["latents_sizes"]).ravel())
    except (TypeError, ValueError) as exc:
        raise _fail(path, f"metadata latents_sizes is not a list of integers: {exc}") from exc
    if len(sizes) != NUM_FACTORS or min(sizes) < 1:
        raise _fail(
            path, f"metadata latents_sizes {list(sizes)}: expected {NUM_FACTORS} sizes >= 1"
        )
    names = tuple(_text(n) for n in meta["latents_names"])
    if names != LATENT_NAMES:
        raise _fail(path, f"metadata latents_names {list(names)}, expected {list(LATENT_NAMES)}")
    possible = meta["latents_possible_values"]
    if isinstance(possible, dict):
        possible = {_text(k): v for k, v in possible.items()}
        missing = [n for n in names if n not in possible]
        if missing:
            raise _fail(path, f"metadata latents_possible_values lacks {missing}")
        possible = [possible[n] for n in names]
    return sizes, names, list(possible)


def _check_array(path: Path, key: str, arr: np.ndarray, shape: tuple, dtype: str) -> None:
    if arr.dtype != np.dtype(dtype):
        raise _fail(path, f"{key} has dtype {arr.dtype}, expected {dtype}")
    if arr.shape != shape:
        raise _fail(path, f"{key} has shape {arr.shape}, expected {shape}")


def _open_member(zf: zipfile.ZipFile, key: str) -> tuple[Any, tuple[int, ...], np.dtype, bool]:
    """Open member `key`.npy of the archive and read its .npy header (no payload read)."""
    member = zf.open(f"{key}.npy")
    version = np.lib.format.read_magic(member)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(member)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(member)
    else:
        raise ValueError(f"unsupported .npy format version {version}")
    return member, tuple(shape), dtype, bool(fortran)


def inspect_npz(path_like: str | Path) -> NpzHeader:
    """Validate an official-format .npz (keys, dtypes, shapes, metadata, factor consistency)."""
    path = Path(path_like).expanduser()
    if not path.is_file():
        raise _fail(path, "file not found")
    if not zipfile.is_zipfile(path):
        raise _fail(path, "not a valid .npz archive (not a zip file, or truncated)")
    try:
        with np.load(path, allow_pickle=True, encoding="latin1") as npz:
            missing = [k for k in REQUIRED_KEYS if k not in npz.files]
            if missing:
                raise _fail(path, f"missing key(s) {missing}; found {sorted(npz.files)}")
            sizes, names, possible = _parse_metadata(path, npz["metadata"])
            values_NF = npz["latents_values"]
            classes_NF = npz["latents_classes"]
        with zipfile.ZipFile(path) as zf:
            member, imgs_shape, imgs_dtype, fortran = _open_member(zf, "imgs")
            member.close()
    except DatasetError:
        raise
    except READ_ERRORS as exc:
        raise _fail(path, f"corrupt or truncated file: {type(exc).__name__}: {exc}") from exc
    n = int(np.prod(sizes))
    _check_array(path, "latents_values", values_NF, (n, NUM_FACTORS), "float64")
    _check_array(path, "latents_classes", classes_NF, (n, NUM_FACTORS), "int64")
    if imgs_dtype != np.dtype("uint8"):
        raise _fail(path, f"imgs has dtype {imgs_dtype}, expected uint8")
    if imgs_shape != (n, IMAGE_SIZE, IMAGE_SIZE):
        raise _fail(path, f"imgs has shape {imgs_shape}, expected {(n, IMAGE_SIZE, IMAGE_SIZE)}")
    if fortran:
        raise _fail(path, "imgs is stored in Fortran order; expected C order")
    if not np.array_equal(classes_NF, classes_of(np.arange(n), sizes)):
        raise _fail(
            path,
            f"latents_classes are not the mixed-radix grid of latents_sizes {list(sizes)} "
            "(row i must hold the factor classes of image index i)",
        )
    possible_values = []
    for f, (name, size) in enumerate(zip(names, sizes, strict=True)):
        try:
            vals = np.asarray(possible[f], dtype=np.float64).ravel()
        except (TypeError, ValueError, IndexError) as exc:
            raise _fail(path, f"latents_possible_values[{name!r}] unreadable: {exc}") from exc
        if vals.size != size:
            raise _fail(
                path,
                f"latents_possible_values[{name!r}] has {vals.size} values, "
                f"latents_sizes says {size}",
            )
        if not np.allclose(values_NF[:, f], vals[classes_NF[:, f]], rtol=0, atol=1e-6):
            raise _fail(path, f"latents_values disagree with latents_possible_values for {name!r}")
        possible_values.append(vals)
    return NpzHeader(path, sizes, names, tuple(possible_values), classes_NF, values_NF)


def npz_chunks(header: NpzHeader, rows_per_chunk: int = 8192) -> Iterator[Chunk]:
    """Stream `imgs` out of the archive as packed chunks (B, 512), in index order.

    Raises DatasetError on a corrupt/truncated payload or pixel values other than 0 and 1.
    """
    path = header.path
    n = header.classes_NF.shape[0]
    per_image = IMAGE_SIZE * IMAGE_SIZE
    try:
        with zipfile.ZipFile(path) as zf:
            member, _, _, _ = _open_member(zf, "imgs")
            with member:
                start = 0
                while start < n:
                    b = min(rows_per_chunk, n - start)
                    raw = member.read(b * per_image)
                    if len(raw) != b * per_image:
                        raise _fail(
                            path, f"imgs ends early: {start + len(raw) // per_image} of {n}"
                        )
                    images_BHW = np.frombuffer(raw, dtype=np.uint8).reshape(b, per_image)
                    if images_BHW.max(initial=0) > 1:
                        raise _fail(path, f"imgs rows {start}..{start + b - 1} hold values > 1")
                    yield Chunk(
                        start,
                        np.packbits(images_BHW, axis=1),
                        header.classes_NF[start : start + b],
                        header.values_NF[start : start + b],
                    )
                    start += b
                if member.read(1):  # reading to EOF also makes zipfile check the CRC-32
                    raise _fail(path, f"imgs holds more bytes than its header's {n} images")
    except DatasetError:
        raise
    except READ_ERRORS as exc:
        raise _fail(path, f"corrupt or truncated imgs: {type(exc).__name__}: {exc}") from exc
