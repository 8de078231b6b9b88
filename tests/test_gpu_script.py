"""The CPU-runnable parts of the prepared GPU session (benchmarks/gpu.sh, gpu_bench.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--set", "data.num_orientations=4", "--set", "data.num_scales=2", "--positions", "4"]


def test_plain_bench_measures_the_worker_step_pipeline_and_writes_json(tmp_path):
    out = tmp_path / "plain.json"
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "gpu_bench.py"),
        "plain",
        "--steps",
        "6",
        "--warmup",
        "2",
        "--set",
        "train.global_batch=8",
        *TINY,
        "--out",
        str(out),
    ]
    env = {**os.environ, "CASCADEVAE_CACHE": str(tmp_path / "cache")}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(out.read_text())
    assert figures["kind"] == "plain" and figures["stage"] == "discrete"
    assert figures["steps"] == 4 and figures["steps_per_s"] > 0
    assert figures["steps_per_s"] == figures["steps"] / figures["seconds"]


def test_a_bad_warmup_is_refused():
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "gpu_bench.py"),
        "plain",
        "--steps",
        "5",
        "--warmup",
        "5",
        "--out",
        "/dev/null",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--warmup must be in [0, --steps)" in done.stderr


def test_gpu_script_records_every_part_it_had_no_time_for(tmp_path):
    env = {**os.environ, "GPU_BUDGET_S": "0", "PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu.sh"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads((tmp_path / "figures.json").read_text())
    parts = {"tests", "plain_pre", "plain_discrete"}
    assert parts <= {name.removesuffix(".status") for name in figures}
    for name in parts:
        assert figures[f"{name}.status"]["exit_status"] == 124  # skipped: no time left
