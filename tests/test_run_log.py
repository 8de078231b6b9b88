"""The run log's metrics table: rows, growing columns, resume, and a writer that did not close."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq

from trainer.observe.run_log import RunLog, read_metrics


def _steps(run_dir) -> list[int]:
    return read_metrics(run_dir)["step"].to_pylist()


def _write(run_dir, steps, resume_step=0, close=True) -> RunLog:
    log = RunLog(run_dir, "name: t\n", resume_step=resume_step)
    for step in steps:
        log.scalars(step, {"loss/total": float(step)})
        if step % 20 == 0:
            log.flush()  # as before a checkpoint
    if close:
        log.close()
    return log


def test_rows_with_growing_columns_read_back_as_one_table(tmp_path):
    log = RunLog(tmp_path, "name: t\n")
    log.scalars(10, {"loss/total": 3.0})
    log.scalars(20, {"loss/total": 2.0, "eval/mig": 0.25})
    log.flush()
    log.scalars(30, {"loss/total": 1.0, "codes/count_0": 4})
    log.scalars(40, {"loss/total": 0.5})
    log.close()
    table = read_metrics(tmp_path)
    assert table.column_names == ["step", "codes/count_0", "eval/mig", "loss/total"]
    assert table.schema.field("step").type == pa.int64()
    assert table.to_pylist() == [
        {"step": 10, "codes/count_0": None, "eval/mig": None, "loss/total": 3.0},
        {"step": 20, "codes/count_0": None, "eval/mig": 0.25, "loss/total": 2.0},
        {"step": 30, "codes/count_0": 4.0, "eval/mig": None, "loss/total": 1.0},
        {"step": 40, "codes/count_0": None, "eval/mig": None, "loss/total": 0.5},
    ]
    # Parts: [10]; [20] (a new key, then the flush); [30, 40] (a new key, then the close).
    folder = tmp_path / "metrics.parquet"
    assert sorted(p.name for p in folder.iterdir()) == [
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]
    last = pq.ParquetFile(folder / "part-00002.parquet")
    assert last.metadata.num_row_groups == 2  # one row group per interval
    assert last.schema_arrow.metadata[b"config_yaml"] == b"name: t\n"


def test_resume_keeps_the_rows_up_to_the_step_and_continues(tmp_path):
    _write(tmp_path, [10, 20, 30, 40, 50])
    _write(tmp_path, [30, 40], resume_step=20)
    assert _steps(tmp_path) == [10, 20, 30, 40]
    # A resume step inside a part (not at a flush) truncates that part.
    _write(tmp_path, [20, 30], resume_step=10)
    assert _steps(tmp_path) == [10, 20, 30]


def test_a_fresh_start_empties_the_table(tmp_path):
    _write(tmp_path, [10, 20, 30])
    _write(tmp_path, [10], resume_step=0)
    assert _steps(tmp_path) == [10]


def test_rows_up_to_the_last_flush_survive_a_writer_that_never_closed(tmp_path):
    _write(tmp_path, [10, 20, 30], close=False)  # 30 sits in the open (hidden) part
    assert _steps(tmp_path) == [10, 20]
    _write(tmp_path, [30, 40], resume_step=20)
    assert _steps(tmp_path) == [10, 20, 30, 40]
    assert not list((tmp_path / "metrics.parquet").glob(".*"))


def test_a_single_file_table_is_read_and_resumed(tmp_path):
    pq.write_table(
        pa.table({"step": [10, 20, 30], "loss/total": [3.0, 2.0, 1.0]}),
        tmp_path / "metrics.parquet",
    )
    assert _steps(tmp_path) == [10, 20, 30]
    _write(tmp_path, [30], resume_step=20)
    assert read_metrics(tmp_path).to_pylist() == [
        {"step": 10, "loss/total": 3.0},
        {"step": 20, "loss/total": 2.0},
        {"step": 30, "loss/total": 30.0},
    ]


def test_attempts_are_appended_one_line_per_worker_start(tmp_path):
    from trainer.observe.run_log import read_attempts, record_attempt

    assert read_attempts(tmp_path) == []
    first = record_attempt(tmp_path, rank=0, start_step=0)
    record_attempt(tmp_path, rank=1, start_step=20, notes=["skipped checkpoint_b"])
    attempts = read_attempts(tmp_path)
    assert attempts[0] == first
    assert [(a["rank"], a["start_step"]) for a in attempts] == [(0, 0), (1, 20)]
    assert attempts[1]["notes"] == ["skipped checkpoint_b"]
    assert attempts[1]["pid"] == os.getpid() and attempts[1]["time"] >= first["time"]
