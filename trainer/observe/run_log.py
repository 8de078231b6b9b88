"""Side effects of a run, written by ONE rank: TensorBoard, the metrics table, the saved config.

Layout of a run directory (the Ray Train run folder, `<storage_path>/<run_name>`)::

    config.yaml           the resolved config of the run
    tb/                   TensorBoard events: scalars, images, hparams
    metrics.parquet/      one row per log interval (step + every scalar), in part files
    attempts.jsonl        one line per worker start: time, rank, pid, host, first step, ...

The metrics table is a folder of Parquet parts `part-NNNNN.parquet`, one row group per log
interval, the config in each part's schema metadata. A part is written under a hidden name
(`.part-NNNNN.parquet`, which Parquet dataset readers skip) and renamed when it is closed: at
every `flush` (the worker flushes before each checkpoint, so every row up to a checkpoint's step
is in a closed part) and when a row brings a key the open part lacks (eval/ keys appear at the
first evaluation, codes/ keys in the discrete stage). Columns never disappear from later parts,
so parts differ only by columns that earlier ones lack; `read_metrics` reads all parts as one
table, with nulls where a part lacks a column.

Other ranks get a `NullRunLog` that does nothing, so the loop has no `if rank == 0` around logging.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

TABLE = "metrics.parquet"
ATTEMPTS = "attempts.jsonl"


def record_attempt(run_dir: str | os.PathLike, **fields: Any) -> dict[str, Any]:
    """Append one worker start to the run's `attempts.jsonl`: `time` (Unix s), `pid`, `host`
    and `fields` (rank, world size, first step, what the resume skipped, precision, memory
    format, torch threads). Every rank writes its own line; one `write` of one line to a file
    opened for appending is not interleaved. Returns the line's record."""
    record = {"time": time.time(), "pid": os.getpid(), "host": socket.gethostname(), **fields}
    with open(Path(run_dir) / ATTEMPTS, "a", encoding="utf-8") as out:
        out.write(json.dumps(record, sort_keys=True) + "\n")
    return record


def read_attempts(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of `attempts.jsonl`, oldest first ([] before the first start)."""
    path = Path(run_dir) / ATTEMPTS
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def read_metrics(run_dir: str | os.PathLike) -> pa.Table:
    """The metrics table of a run: every closed part, in step order, as one table.

    Columns: `step` (int64) first, then every scalar key (float64; null in rows written before
    the key first appeared). A `metrics.parquet` that is a single file is read as it is.
    Raises FileNotFoundError when the run has no table.
    """
    path = Path(run_dir) / TABLE
    if path.is_file():
        return pq.read_table(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no metrics table at {path}")
    parts = _parts(path)
    if not parts:
        return pa.table({"step": pa.array([], pa.int64())})
    # The last part holds every column; its order (step, then sorted keys) leads.
    schema = pa.unify_schemas([pq.read_schema(p) for p in reversed(parts)])
    return pq.read_table([str(p) for p in parts], schema=schema)


def _parts(table_dir: Path) -> list[Path]:
    return sorted(table_dir.glob("part-*.parquet"))


class NullRunLog:
    """The run log of ranks that write nothing."""

    def scalars(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def image(self, tag: str, step: int, image_1HW: torch.Tensor) -> None:
        pass

    def text(self, tag: str, step: int, text: str) -> None:
        pass

    def hparams(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class RunLog(NullRunLog):
    """TensorBoard writer plus the Parquet table of scalars, for rank 0.

    `resume_step`: table rows after it are dropped (on a resumed run they are about to be
    recomputed; a fresh run, `resume_step=0`, starts an empty table) and TensorBoard is told to
    purge events past it.
    """

    def __init__(self, run_dir: str | os.PathLike, config_yaml: str, resume_step: int = 0):
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(config_yaml)
        self.config_yaml = config_yaml
        self.writer = SummaryWriter(
            log_dir=str(self.run_dir / "tb"), purge_step=resume_step or None
        )
        self.table_dir = self.run_dir / TABLE
        _keep_rows_up_to(self.table_dir, resume_step)
        kept = _parts(self.table_dir)
        self._columns: set[str] = set(pq.read_schema(kept[-1]).names) if kept else set()
        self._next_part = int(kept[-1].stem.split("-")[1]) + 1 if kept else 0
        self._part: pq.ParquetWriter | None = None
        self._part_path: Path | None = None
        if not resume_step:
            self.text("config", 0, "```\n" + config_yaml + "\n```")

    def scalars(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(key, value, step)
        row = {"step": step, **{k: float(v) for k, v in metrics.items()}}
        if not row.keys() <= self._columns:
            self._close_part()
            self._columns |= row.keys()
        if self._part is None:
            self._open_part()
        assert self._part is not None
        self._part.write_table(pa.Table.from_pylist([row], schema=self._part.schema))

    def image(self, tag: str, step: int, image_1HW: torch.Tensor) -> None:
        self.writer.add_image(tag, image_1HW.clamp(0, 1), step, dataformats="CHW")

    def text(self, tag: str, step: int, text: str) -> None:
        self.writer.add_text(tag, text, step)

    def hparams(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
        """Write hparams into the same event folder, so TensorBoard's HPARAMS view lists the run."""
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        clean = {
            k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in hparams.items()
        }
        finals = {f"hparam/{k}": float(v) for k, v in metrics.items() if _is_number(v)}
        experiment, start, end = hparams_summary(clean, finals)
        file_writer = self.writer._get_file_writer()
        for summary in (experiment, start, end):
            file_writer.add_summary(summary)
        for key, value in finals.items():
            self.writer.add_scalar(key, value, 0)

    def flush(self) -> None:
        """Make every row and event so far durable and readable (closes the open part)."""
        self._close_part()
        self.writer.flush()

    def close(self) -> None:
        self._close_part()
        self.writer.close()

    def _open_part(self) -> None:
        keys = ["step", *sorted(self._columns - {"step"})]
        schema = pa.schema(
            [("step", pa.int64()), *((k, pa.float64()) for k in keys[1:])],
            metadata={"config_yaml": self.config_yaml},
        )
        self.table_dir.mkdir(exist_ok=True)
        self._part_path = self.table_dir / f"part-{self._next_part:05d}.parquet"
        self._next_part += 1
        self._part = pq.ParquetWriter(_hidden(self._part_path), schema)

    def _close_part(self) -> None:
        if self._part is None or self._part_path is None:
            return
        self._part.close()
        os.replace(_hidden(self._part_path), self._part_path)
        self._part, self._part_path = None, None


def _hidden(part: Path) -> Path:
    return part.with_name("." + part.name)


def _keep_rows_up_to(table_dir: Path, step: int) -> None:
    """Drop the table's rows after `step`, part by part (each rewrite is atomic), and the hidden
    parts that a writer which did not close left behind. A single-file table becomes part 0."""
    if table_dir.is_file():
        moved = table_dir.with_name(table_dir.name + ".single")
        os.replace(table_dir, moved)
        table_dir.mkdir()
        os.replace(moved, table_dir / "part-00000.parquet")
    if not table_dir.is_dir():
        return
    for leftover in table_dir.glob(".part-*.parquet"):
        leftover.unlink()
    for part in _parts(table_dir):
        table = pq.read_table(part)
        kept = table.filter(pc.field("step") <= step)
        if kept.num_rows == table.num_rows:
            continue
        if kept.num_rows == 0:
            part.unlink()
        else:
            pq.write_table(kept, _hidden(part))
            os.replace(_hidden(part), part)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
