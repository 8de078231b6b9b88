"""The CPU-runnable parts of the prepared GPU session (benchmarks/gpu.sh, gpu_bench.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--set", "data.num_orientations=4", "--set", "data.num_scales=2", "--positions", "4"]


def _bench(tmp_path, kind: str, steps: int, warmup: int, *extra: str) -> dict:
    """Run `gpu_bench.py <kind>` on the tiny grid (batch 8) and return the JSON it wrote."""
    out = tmp_path / f"{kind}.json"
    command = [
        sys.executable, str(ROOT / "benchmarks" / "gpu_bench.py"), kind,
        "--steps", str(steps), "--warmup", str(warmup), "--set", "train.global_batch=8",
        *TINY, *extra, "--out", str(out),
    ]  # fmt: skip
    env = {**os.environ, "CASCADEVAE_CACHE": str(tmp_path / "cache")}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(out.read_text())


def test_plain_bench_measures_the_worker_step_pipeline_and_writes_json(tmp_path):
    figures = _bench(tmp_path, "plain", 6, 2)
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
    parts = {"tests", "plain_pre", "plain_discrete", "switches_discrete"}
    assert parts <= {name.removesuffix(".status") for name in figures}
    for name in parts:
        assert figures[f"{name}.status"]["exit_status"] == 124  # skipped: no time left


def test_switch_rungs_add_one_switch_each_to_all_off():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from gpu_bench import SWITCHES_OFF, rung_overrides

    rungs = dict(rung_overrides(["default", "data_on_device", "bf16"]))
    assert list(rungs) == ["default", "data_on_device", "bf16"]
    assert rungs["default"] == SWITCHES_OFF
    assert rungs["data_on_device"] == [*SWITCHES_OFF, "train.data_on_device=true"]
    assert rungs["bf16"] == [
        *SWITCHES_OFF,
        "train.data_on_device=true",
        "train.metrics_on_device=true",
        "optim.implementation=fused",
        "train.compile=default",
        "train.autocast=bf16",
    ]
    with pytest.raises(ValueError, match="unknown rungs"):
        rung_overrides(["cuda_graphs"])


def test_switches_bench_measures_each_rung_and_writes_json(tmp_path):
    rungs = ["default", "data_on_device", "metrics_on_device", "fused_adam"]
    figures = _bench(tmp_path, "switches", 5, 1, "--rungs", *rungs)
    assert figures["kind"] == "switches" and figures["steps"] == 4
    assert [row["name"] for row in figures["rungs"]] == rungs
    for row in figures["rungs"]:
        assert "error" not in row, row
        assert row["steps_per_s"] == 4 / row["seconds"]
        assert row["speedup_vs_default"] == row["steps_per_s"] / figures["rungs"][0]["steps_per_s"]
