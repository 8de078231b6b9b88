"""On-disk dSprites cache: one Arrow IPC file per dataset, validated on open, memory-mapped.

Layout (FORMAT_VERSION 1): columns `image` fixed_size_binary(512) (np.packbits of the 64x64
image, row-major), `classes` fixed_size_list<int64>[6], `values` fixed_size_list<float64>[6];
rows are in image-index order. The schema metadata key `cascadevae.dsprites` holds JSON with the
format version, the source identity (the cache key), latent sizes / names / possible values,
the row count and the arguments that rebuild the dataset. Each record batch carries its first
row index and a CRC-32 of its three columns in its custom metadata.

Integrity: a file is written under a temporary name in the same folder and atomically renamed,
so the final name only ever holds a complete file. On open, the footer, schema, metadata, row
counts and every batch's CRC are checked; any mismatch makes the file "invalid", and the
caller rebuilds it. Builds of one key are serialised across processes by a `filelock.FileLock`
on a small `.<name>.lock` file next to the cache (it stays in place after release).

Serving: the images are never copied into memory. The open file is memory-mapped once, the
byte offset of every batch's image buffer inside the file is recorded, and a batch of images is
one fancy-indexing gather on the mapped bytes. Classes and values (N x 6 each) are copied into
ordinary arrays (70 MB for the full grid) during verification. Mapped pages that were read count
in the process's RSS as file-backed pages: page cache, shared by every process mapping the file.

Shape suffixes (the project legend is in CONTRIBUTING.md): N rows (images), B batch, Y packed
bytes per image (512), F factors (6), E record batches.
"""

from __future__ import annotations

import json
import os
import uuid
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from filelock import FileLock

from trainer.data.render import PACKED_BYTES, Chunk

FORMAT_VERSION = 1
META_KEY = b"cascadevae.dsprites"
NUM_FACTORS = 6


class DatasetError(ValueError):
    """A data file (official .npz or cache) that cannot be used; the message names file and
    problem."""


class CacheInvalid(Exception):
    """A cache file that must be rebuilt (missing, stale, partial or corrupt); says why."""


SCHEMA = pa.schema(
    [
        pa.field("image", pa.binary(PACKED_BYTES), nullable=False),
        pa.field("classes", pa.list_(pa.int64(), NUM_FACTORS), nullable=False),
        pa.field("values", pa.list_(pa.float64(), NUM_FACTORS), nullable=False),
    ]
)


@dataclass(frozen=True)
class DatasetMeta:
    """Everything about a dataset except its rows; stored as JSON in the schema metadata."""

    source: str  # "render" or the npz path
    source_id: str  # what the cache key covers (grid sizes + render version, or npz identity)
    latent_sizes: tuple[int, ...]
    latent_names: tuple[str, ...]
    possible_values: tuple[np.ndarray, ...]
    build_args: dict[str, Any]  # keyword arguments of open_dsprites that rebuild this dataset

    @property
    def num_rows(self) -> int:
        return int(np.prod(self.latent_sizes))

    def to_json(self) -> bytes:
        doc = {
            "format_version": FORMAT_VERSION,
            "source": self.source,
            "source_id": self.source_id,
            "latent_sizes": list(self.latent_sizes),
            "latent_names": list(self.latent_names),
            # repr-exact floats: json writes the shortest string that reads back bit-identical.
            "possible_values": [v.tolist() for v in self.possible_values],
            "num_rows": self.num_rows,
            "build_args": self.build_args,
        }
        return json.dumps(doc).encode()

    @staticmethod
    def from_json(raw: bytes) -> tuple[int, int, DatasetMeta]:
        """(format_version, num_rows, meta) from the stored JSON; KeyError/ValueError if bad."""
        doc = json.loads(raw)
        meta = DatasetMeta(
            source=str(doc["source"]),
            source_id=str(doc["source_id"]),
            latent_sizes=tuple(int(s) for s in doc["latent_sizes"]),
            latent_names=tuple(str(s) for s in doc["latent_names"]),
            possible_values=tuple(np.asarray(v, dtype=np.float64) for v in doc["possible_values"]),
            build_args=dict(doc["build_args"]),
        )
        return int(doc["format_version"]), int(doc["num_rows"]), meta


def _chunk_crc(packed_BY: np.ndarray, classes_BF: np.ndarray, values_BF: np.ndarray) -> int:
    """CRC-32 of one batch's three columns, in a fixed byte order (little-endian, C order)."""
    crc = zlib.crc32(np.ascontiguousarray(packed_BY, dtype=np.uint8).data)
    crc = zlib.crc32(np.ascontiguousarray(classes_BF, dtype="<i8").data, crc)
    return zlib.crc32(np.ascontiguousarray(values_BF, dtype="<f8").data, crc)


def _to_record_batch(chunk: Chunk) -> pa.RecordBatch:
    b = chunk.packed_BY.shape[0]
    if chunk.packed_BY.shape != (b, PACKED_BYTES) or chunk.classes_BF.shape != (b, NUM_FACTORS):
        raise ValueError(f"bad chunk shapes {chunk.packed_BY.shape}, {chunk.classes_BF.shape}")
    image = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(PACKED_BYTES), b, [None, pa.py_buffer(np.ascontiguousarray(chunk.packed_BY))]
    )
    classes = pa.FixedSizeListArray.from_arrays(
        pa.array(np.ascontiguousarray(chunk.classes_BF, dtype=np.int64).ravel()), NUM_FACTORS
    )
    values = pa.FixedSizeListArray.from_arrays(
        pa.array(np.ascontiguousarray(chunk.values_BF, dtype=np.float64).ravel()), NUM_FACTORS
    )
    return pa.RecordBatch.from_arrays([image, classes, values], schema=SCHEMA)


def write_cache(path: Path, meta: DatasetMeta, chunks: Iterable[Chunk]) -> None:
    """Write `chunks` (in index order, covering all rows) to `path` atomically.

    The file appears at `path` only once complete; on any failure the temporary file is removed
    and the exception propagates (nothing half-written stays in the folder).
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    schema = SCHEMA.with_metadata({META_KEY: meta.to_json()})
    try:
        expected = 0
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
            for chunk in chunks:
                if chunk.start != expected:
                    raise ValueError(f"chunk starts at row {chunk.start}, expected {expected}")
                crc = _chunk_crc(chunk.packed_BY, chunk.classes_BF, chunk.values_BF)
                writer.write_batch(
                    _to_record_batch(chunk),
                    custom_metadata={"start": str(chunk.start), "crc32": str(crc)},
                )
                expected += chunk.packed_BY.shape[0]
        if expected != meta.num_rows:
            raise ValueError(f"wrote {expected} rows, expected {meta.num_rows}")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _batch_arrays(batch: pa.RecordBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(packed (B, Y) uint8, classes (B, F) int64, values (B, F) float64) views of a batch."""
    b = batch.num_rows
    image = batch.column(0)
    packed_BY = np.frombuffer(image.buffers()[1], dtype=np.uint8)
    start = image.offset * PACKED_BYTES
    packed_BY = packed_BY[start : start + b * PACKED_BYTES].reshape(b, PACKED_BYTES)
    classes_BF = batch.column(1).flatten().to_numpy(zero_copy_only=True).reshape(b, NUM_FACTORS)
    values_BF = batch.column(2).flatten().to_numpy(zero_copy_only=True).reshape(b, NUM_FACTORS)
    return packed_BY, classes_BF, values_BF


def _read_meta(reader: pa.ipc.RecordBatchFileReader) -> tuple[int, int, DatasetMeta]:
    if not reader.schema.remove_metadata().equals(SCHEMA):
        raise CacheInvalid(f"unexpected schema {reader.schema.remove_metadata()}")
    raw = (reader.schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise CacheInvalid("no cascadevae.dsprites metadata")
    try:
        return DatasetMeta.from_json(raw)
    except (KeyError, TypeError, ValueError) as exc:
        raise CacheInvalid(f"unreadable metadata: {exc!r}") from exc


@dataclass
class VerifiedCache:
    """What a full check of a cache file yields: its metadata and its (small) factor arrays."""

    meta: DatasetMeta
    classes_NF: np.ndarray  # (N, 6) int64
    values_NF: np.ndarray  # (N, 6) float64


def verify_cache(path: Path, expected_source_id: str | None) -> VerifiedCache:
    """Check a cache file end to end (footer, schema, metadata, row counts, every CRC).

    Reads through ordinary file I/O, one batch at a time, copying out classes and values on the
    way: the memory map used for serving then only ever touches the image pages it serves.
    Raises CacheInvalid with the reason.
    """
    if not path.is_file():
        raise CacheInvalid("no cache file")
    try:
        with pa.OSFile(str(path), "rb") as source:
            reader = pa.ipc.open_file(source)
            version, num_rows, meta = _read_meta(reader)
            if version != FORMAT_VERSION:
                raise CacheInvalid(f"format version {version}, current is {FORMAT_VERSION}")
            if expected_source_id is not None and meta.source_id != expected_source_id:
                raise CacheInvalid(f"built from {meta.source_id!r}, not {expected_source_id!r}")
            if num_rows != meta.num_rows or len(meta.latent_sizes) != NUM_FACTORS:
                raise CacheInvalid(f"{num_rows} rows recorded for sizes {meta.latent_sizes}")
            classes_NF = np.empty((num_rows, NUM_FACTORS), dtype=np.int64)
            values_NF = np.empty((num_rows, NUM_FACTORS), dtype=np.float64)
            rows = 0
            for i in range(reader.num_record_batches):
                batch, custom = reader.get_batch_with_custom_metadata(i)
                custom = custom or {}
                if int(custom.get(b"start", b"-1")) != rows:
                    raise CacheInvalid(f"batch {i} does not start at row {rows}")
                packed_BY, classes_BF, values_BF = _batch_arrays(batch)
                if _chunk_crc(packed_BY, classes_BF, values_BF) != int(custom.get(b"crc32", b"-1")):
                    raise CacheInvalid(f"CRC mismatch in batch {i}")
                if rows + batch.num_rows > num_rows:
                    raise CacheInvalid(f"more than the {num_rows} rows recorded")
                classes_NF[rows : rows + batch.num_rows] = classes_BF
                values_NF[rows : rows + batch.num_rows] = values_BF
                rows += batch.num_rows
                del batch, packed_BY, classes_BF, values_BF
            if rows != num_rows:
                raise CacheInvalid(f"{rows} rows stored, {num_rows} expected")
    except (OSError, pa.ArrowException, ValueError) as exc:
        # Truncated or overwritten files fail inside Arrow (invalid footer / flatbuffer).
        raise CacheInvalid(f"unreadable Arrow file: {exc}") from exc
    finally:
        # Hand the batch buffers back to the OS now rather than keeping them in Arrow's pool.
        pa.default_memory_pool().release_unused()
    return VerifiedCache(meta, classes_NF, values_NF)


@dataclass
class MappedCache:
    """A verified cache file, memory-mapped: images stay on disk, read per batch."""

    path: Path
    meta: DatasetMeta
    classes_NF: np.ndarray  # (N, 6) int64
    values_NF: np.ndarray  # (N, 6) float64
    file_bytes: np.ndarray  # (file size,) uint8 view of the mapping
    batch_starts_E: np.ndarray  # (E + 1,) int64 first row of each record batch, then N
    image_offsets_E: np.ndarray  # (E,) int64 byte offset of each batch's image buffer

    def packed(self, indices_B: np.ndarray) -> np.ndarray:
        """Packed images (B, Y) uint8 of rows `indices_B` (already range-checked)."""
        batch_B = np.searchsorted(self.batch_starts_E, indices_B, side="right") - 1
        first_B = self.image_offsets_E[batch_B] + (
            indices_B - self.batch_starts_E[batch_B]
        ) * np.int64(PACKED_BYTES)
        return self.file_bytes[first_B[:, None] + np.arange(PACKED_BYTES, dtype=np.int64)]

    def all_packed(self) -> np.ndarray:
        """Packed images (N, Y) uint8 of every row in index order: one copy per record batch
        (no index arrays, so the full grid takes its 377 MB and no more)."""
        rows_E = np.diff(self.batch_starts_E)
        parts = [
            self.file_bytes[offset : offset + rows * PACKED_BYTES].reshape(rows, PACKED_BYTES)
            for offset, rows in zip(self.image_offsets_E.tolist(), rows_E.tolist(), strict=True)
        ]
        return np.concatenate(parts) if parts else np.empty((0, PACKED_BYTES), dtype=np.uint8)


def map_cache(path: Path, checked: VerifiedCache) -> MappedCache:
    """Memory-map a cache file that `verify_cache` just checked (only metadata pages are read)."""
    mapped = pa.memory_map(str(path), "r")
    whole = mapped.read_buffer(mapped.size())  # zero-copy: a view of the whole mapping
    base = whole.address
    file_bytes = np.frombuffer(whole, dtype=np.uint8)
    reader = pa.ipc.open_file(mapped)
    starts, offsets = [0], []
    for i in range(reader.num_record_batches):
        batch = reader.get_batch(i)
        image = batch.column(0)
        offset = image.buffers()[1].address - base + image.offset * PACKED_BYTES
        if offset < 0 or offset + batch.num_rows * PACKED_BYTES > file_bytes.size:
            raise CacheInvalid(f"batch {i} image buffer is not inside the mapped file")
        starts.append(starts[-1] + batch.num_rows)
        offsets.append(offset)
    if starts[-1] != checked.classes_NF.shape[0]:
        raise CacheInvalid(f"file changed since it was verified ({starts[-1]} rows)")
    file_bytes.flags.writeable = False
    return MappedCache(
        path=path,
        meta=checked.meta,
        classes_NF=checked.classes_NF,
        values_NF=checked.values_NF,
        file_bytes=file_bytes,
        batch_starts_E=np.asarray(starts, dtype=np.int64),
        image_offsets_E=np.asarray(offsets, dtype=np.int64),
    )


def build_and_open(
    path: Path,
    source_id: str,
    meta: DatasetMeta,
    make_chunks: Callable[[], Iterable[Chunk]],
    log: Callable[[str], None],
) -> MappedCache:
    """Build the cache at `path` unless a valid one exists by now, then map it.

    Builds of one key are serialised by a file lock: of two processes racing on the same key,
    the first builds; the second waits, then finds the file valid and only maps it.
    `make_chunks` is called only when this process builds.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path.with_name(f".{path.name}.lock")):
        try:
            checked = verify_cache(path, source_id)  # someone may have built it while we waited
        except CacheInvalid as exc:
            log(f"building {path.name} ({exc})")
            write_cache(path, meta, make_chunks())
            checked = verify_cache(path, source_id)
    return map_cache(path, checked)
