"""dSprites data layer: open (render or load, then cache) the dataset, and sample indices.

Pipeline: `open_dsprites` either renders the official factor grid (`trainer.data.render`) or
reads the official .npz file (`trainer.data.npz`), writes it once into a validated Arrow IPC cache
(`trainer.data.cache`) and returns a `DSprites` whose images are read from a memory map.

Indexing is the official file's: image index = dot(latent_classes, bases), where bases are the
mixed-radix place values of latent_sizes (1, 3, 6, 40, 32, 32), posY fastest.

Data order for training (`batch_indices_for_step`): epoch e has one global
permutation `perm` of all N indices, a pure function of (seed, e) and independent of the number
of ranks. Global batch b of the epoch is perm[b*G:(b+1)*G]; rank r of `world_size` ranks takes
the r-th contiguous slice of length B = G / world_size of it. The incomplete last batch (N mod G
items) is dropped, and step t reads global batch t mod (N // G) of epoch t // (N // G). Any
(seed, step, rank, world_size, global_batch) therefore names the same indices in a fresh or a
resumed run.

Shape suffixes (the project legend is in CONTRIBUTING.md): N images, B one rank's batch,
G global batch (B * world_size), F factors (6), H/W image rows/columns (64).
"""

from __future__ import annotations

import functools
import hashlib
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from trainer.data.cache import (
    FORMAT_VERSION,
    CacheInvalid,
    DatasetError,
    DatasetMeta,
    MappedCache,
    build_and_open,
    map_cache,
    verify_cache,
)
from trainer.data.npz import inspect_npz, npz_chunks
from trainer.data.render import (
    LATENT_NAMES,
    RENDER_VERSION,
    SHAPE_NAMES,
    Chunk,
    GridSpec,
    mixed_radix_bases,
    render_chunks,
    unpack_images,
)

__all__ = [
    "LATENT_NAMES",
    "SHAPE_NAMES",
    "FORMAT_VERSION",
    "DatasetError",
    "DSprites",
    "open_dsprites",
    "default_cache_dir",
    "epoch_permutation",
    "batch_indices_for_step",
    "sample_indices_with_fixed_factor",
    "sample_random_indices",
]

SOURCES = ("render", "npz")


class DSprites:
    """The dSprites factor grid backed by a memory-mapped Arrow cache.

    Attributes: latent_sizes (6,), latent_names (6,), possible_values (6 arrays),
    latent_classes (N, 6) int64, latent_values (N, 6) float64, bases (6,) int64,
    source ("render" or the npz path), cache_path. Pickling sends only how to reopen the cache
    (for Ray workers), never the arrays.
    """

    def __init__(self, cache: MappedCache):
        meta = cache.meta
        self.latent_sizes: tuple[int, ...] = meta.latent_sizes
        self.latent_names: tuple[str, ...] = meta.latent_names
        self.possible_values: tuple[np.ndarray, ...] = meta.possible_values
        self.latent_classes: np.ndarray = cache.classes_NF
        self.latent_values: np.ndarray = cache.values_NF
        self.latent_classes.flags.writeable = False
        self.latent_values.flags.writeable = False
        self.source: str = meta.source
        self.cache_path: Path = cache.path
        self.bases: np.ndarray = mixed_radix_bases(self.latent_sizes)
        self._cache = cache

    def __len__(self) -> int:
        return int(self.latent_classes.shape[0])

    def __repr__(self) -> str:
        return f"DSprites(n={len(self)}, sizes={self.latent_sizes}, source={self.source!r})"

    def __reduce__(self) -> tuple:
        return (_reopen, (str(self.cache_path), self._cache.meta.build_args))

    def images(self, indices: np.ndarray) -> np.ndarray:
        """Binary images (B, 64, 64) uint8 in {0, 1} of image indices (B,), any order/repeats."""
        idx_B = np.asarray(indices)
        if idx_B.ndim != 1 or (idx_B.size and not np.issubdtype(idx_B.dtype, np.integer)):
            raise ValueError(
                f"indices must be a 1-D integer array, got {idx_B.dtype} {idx_B.shape}"
            )
        idx_B = idx_B.astype(np.int64, copy=False)
        if idx_B.size and (idx_B.min() < 0 or idx_B.max() >= len(self)):
            raise ValueError(
                f"indices must be in [0, {len(self)}), got min {idx_B.min()} max {idx_B.max()}"
            )
        return unpack_images(self._cache.packed(idx_B))

    def packed_images(self) -> np.ndarray:
        """Every image bit-packed as stored, (N, 512) uint8 (np.packbits of the 64 x 64 rows):
        what trainer.data.device moves to the device once."""
        return self._cache.all_packed()


def _reopen(cache_path: str, build_args: dict) -> DSprites:
    return open_dsprites(**build_args, cache_dir=Path(cache_path).parent)


def default_cache_dir() -> Path:
    """$CASCADEVAE_CACHE, else ~/.cache/cascadevae."""
    env = os.environ.get("CASCADEVAE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "cascadevae"


def _npz_identity(path: Path) -> str:
    """Short hash of (absolute path, size, mtime): a replaced or touched file gets a new key."""
    st = path.stat()
    ident = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


def _with_progress(
    chunks: Iterable[Chunk], total: int, log: Callable[[str], None]
) -> Iterator[Chunk]:
    """Pass chunks through, logging rows done roughly every 10 %."""
    t0, next_mark = time.perf_counter(), 0.1
    for chunk in chunks:
        yield chunk
        done = (chunk.start + chunk.packed_BY.shape[0]) / total
        if done >= next_mark or done >= 1.0:
            log(f"  {done:6.1%} of {total} images, {time.perf_counter() - t0:.1f} s")
            next_mark = done + 0.1


def _try_open(path: Path, source_id: str) -> MappedCache | None:
    try:
        return map_cache(path, verify_cache(path, source_id))
    except CacheInvalid:
        return None


def open_dsprites(
    *,
    source: str = "render",
    npz_path: str | None = None,
    num_scales: int = 6,
    num_orientations: int = 40,
    num_positions: int = 32,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = False,
) -> DSprites:
    """Open dSprites from its cache, building the cache first when missing or invalid.

    source="render": the rendered grid with these sizes (values spread linearly over the
    official ranges). source="npz": the official file at `npz_path` (sizes ignored).
    progress=True prints a line per ~10 % while building. Raises ValueError on bad arguments,
    DatasetError on a bad npz file.
    """

    def log(msg: str) -> None:
        if progress:
            print(f"[dsprites] {msg}", file=sys.stderr, flush=True)

    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if source == "render":
        spec = GridSpec(num_scales, num_orientations, num_positions)
        source_id = (
            f"render-r{RENDER_VERSION}-sc{spec.num_scales}-or{spec.num_orientations}"
            f"-pos{spec.num_positions}"
        )
        path = folder / f"dsprites-{source_id}-f{FORMAT_VERSION}.arrow"
        cached = _try_open(path, source_id)
        if cached is not None:
            return DSprites(cached)
        meta = DatasetMeta(
            source="render",
            source_id=source_id,
            latent_sizes=spec.latent_sizes,
            latent_names=LATENT_NAMES,
            possible_values=spec.possible_values(),
            build_args={
                "source": "render",
                "num_scales": spec.num_scales,
                "num_orientations": spec.num_orientations,
                "num_positions": spec.num_positions,
            },
        )

        def make_chunks() -> Iterable[Chunk]:
            return render_chunks(spec)

    else:
        if not npz_path:
            raise ValueError(f"npz_path is required when source='npz', got {npz_path!r}")
        npz = Path(npz_path).expanduser()
        if not npz.is_file():
            raise DatasetError(f"{npz}: file not found")
        source_id = f"npz-{_npz_identity(npz)}"
        path = folder / f"dsprites-{source_id}-f{FORMAT_VERSION}.arrow"
        cached = _try_open(path, source_id)
        if cached is not None:
            return DSprites(cached)
        # Validate fully BEFORE touching the cache folder: a bad file leaves nothing behind.
        header = inspect_npz(npz)
        meta = DatasetMeta(
            source=str(npz.resolve()),
            source_id=source_id,
            latent_sizes=header.latent_sizes,
            latent_names=header.latent_names,
            possible_values=header.possible_values,
            build_args={"source": "npz", "npz_path": str(npz.resolve())},
        )

        def make_chunks() -> Iterable[Chunk]:
            return npz_chunks(header)

    t0 = time.perf_counter()
    cache = build_and_open(
        path, source_id, meta, lambda: _with_progress(make_chunks(), meta.num_rows, log), log
    )
    log(f"ready: {path} ({time.perf_counter() - t0:.1f} s)")
    return DSprites(cache)


# --- sampling ---------------------------------------------------------------------------------


def _check_int(name: str, value: object, low: int, high: int | None = None) -> int:
    """`value` as int if it is an integer in [low, high); ValueError naming it otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value >= high):
        bound = f"[{low}, {high})" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be in {bound}, got {value}")
    return int(value)


@functools.lru_cache(maxsize=4)
def _epoch_permutation(num_items: int, seed: int, epoch: int) -> np.ndarray:
    # Cached: every step of an epoch slices the same permutation (8 ms to draw at N = 737,280).
    perm_N = np.random.default_rng([seed, epoch]).permutation(num_items).astype(np.int64)
    perm_N.flags.writeable = False
    return perm_N


def epoch_permutation(num_items: int, *, seed: int, epoch: int) -> np.ndarray:
    """The global order (N,) int64 of epoch `epoch`, a pure function of (num_items, seed, epoch).

    Returned read-only: it is cached and shared by every step of the epoch.
    """
    n = _check_int("num_items", num_items, 1)
    return _epoch_permutation(n, _check_int("seed", seed, 0), _check_int("epoch", epoch, 0))


def batch_indices_for_step(
    num_items: int, *, seed: int, step: int, rank: int, world_size: int, global_batch: int
) -> np.ndarray:
    """This rank's indices (B,) int64, B = G / world_size, of global batch `step`.

    Epochs follow each other: step t is batch t mod (N // G) of epoch t // (N // G).
    """
    n = _check_int("num_items", num_items, 1)
    w = _check_int("world_size", world_size, 1)
    r = _check_int("rank", rank, 0, w)
    g = _check_int("global_batch", global_batch, 1, n + 1)
    t = _check_int("step", step, 0)
    if g % w:
        raise ValueError(f"global_batch must be divisible by world_size {w}, got {g}")
    epoch, b = divmod(t, n // g)
    local = g // w
    start = b * g + r * local
    return epoch_permutation(n, seed=seed, epoch=epoch)[start : start + local].copy()


def _check_sizes(latent_sizes: Iterable[int]) -> np.ndarray:
    sizes_F = np.asarray(tuple(latent_sizes))
    if sizes_F.ndim != 1 or sizes_F.size == 0 or not np.issubdtype(sizes_F.dtype, np.integer):
        raise ValueError(f"latent_sizes must be a non-empty list of integers, got {latent_sizes}")
    if (sizes_F < 1).any():
        raise ValueError(f"latent_sizes must all be >= 1, got {sizes_F.tolist()}")
    return sizes_F.astype(np.int64)


def sample_indices_with_fixed_factor(
    latent_sizes: Iterable[int], rng: np.random.Generator, factor: int, value: int, count: int
) -> np.ndarray:
    """Image indices (count,) int64 with factor `factor` at class `value`, others uniform."""
    sizes_F = _check_sizes(latent_sizes)
    f = _check_int("factor", factor, 0, len(sizes_F))
    v = _check_int("value", value, 0, int(sizes_F[f]))
    c = _check_int("count", count, 0)
    classes_BF = rng.integers(0, sizes_F, size=(c, len(sizes_F)), dtype=np.int64)
    classes_BF[:, f] = v
    return classes_BF @ mixed_radix_bases(sizes_F)


def sample_random_indices(
    latent_sizes: Iterable[int], rng: np.random.Generator, count: int
) -> np.ndarray:
    """Image indices (count,) int64 drawn uniformly (with replacement) from the grid."""
    sizes_F = _check_sizes(latent_sizes)
    c = _check_int("count", count, 0)
    return rng.integers(0, int(np.prod(sizes_F)), size=c, dtype=np.int64)
