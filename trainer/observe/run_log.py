"""Side effects of a run, written by ONE rank: TensorBoard, the metrics table, the saved config.

Layout of a run directory (the Ray Train run folder, `<storage_path>/<run_name>`)::

    config.yaml           the resolved config of the run
    tb/                   TensorBoard events: scalars, images, hparams
    metrics.parquet       one row per log interval (step + every scalar), config in its metadata

Other ranks get a `NullRunLog` that does nothing, so the loop has no `if rank == 0` around logging.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch


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
    """TensorBoard writer plus a Parquet table of scalars, for rank 0.

    `resume_step`: on a resumed run, table rows after the checkpoint's step are dropped (they are
    about to be recomputed) and TensorBoard is told to purge events past it.
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
        self.table_path = self.run_dir / "metrics.parquet"
        self.rows: list[dict[str, float]] = []
        if resume_step and self.table_path.exists():
            old = pq.read_table(self.table_path).to_pylist()
            self.rows = [r for r in old if r["step"] <= resume_step]
        if not resume_step:
            self.text("config", 0, "```\n" + config_yaml + "\n```")

    def scalars(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(key, value, step)
        self.rows.append({"step": step, **{k: float(v) for k, v in metrics.items()}})
        self._write_table()

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

    def _write_table(self) -> None:
        keys = sorted({k for row in self.rows for k in row}, key=lambda k: (k != "step", k))
        columns = {k: [row.get(k) for row in self.rows] for k in keys}
        table = pa.table(columns).replace_schema_metadata(
            {"config_yaml": self.config_yaml, "columns": json.dumps(keys)}
        )
        tmp = self.table_path.with_suffix(".parquet.tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, self.table_path)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
