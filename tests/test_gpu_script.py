"""The CPU-runnable parts of the prepared GPU session (benchmarks/gpu.sh, gpu_bench.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
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


def _probe_wheelhouse(folder: Path) -> Path:
    """A wheelhouse of one tiny pure-Python wheel, `cvae_probe`, listed in requirements.txt."""
    sys.path.insert(0, str(ROOT / "tools"))
    from wheelhouse import record_hash

    folder.mkdir()
    files = {
        "cvae_probe/__init__.py": b"ANSWER = 42\n",
        "cvae_probe-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: cvae_probe\n"
        b"Version: 1.0\n",
        "cvae_probe-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\n"
        b"Root-Is-Purelib: true\nTag: py3-none-any\n",
    }
    rows = [f"{name},{record_hash(data)},{len(data)}" for name, data in files.items()]
    rows.append("cvae_probe-1.0.dist-info/RECORD,,")
    with zipfile.ZipFile(folder / "cvae_probe-1.0-py3-none-any.whl", "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
        z.writestr("cvae_probe-1.0.dist-info/RECORD", "\n".join(rows) + "\n")
    (folder / "requirements.txt").write_text("cvae_probe==1.0\n")
    return folder


def _run_gpu_sh(tmp_path: Path, python: str, *args: str, **env: str):
    out = tmp_path / "out"
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu.sh"), str(out), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHON": python, **env},
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return out, done.stdout


def test_gpu_script_installs_the_wheelhouse_with_no_index_when_ray_is_missing(tmp_path):
    """A Python on which `import ray` fails: the script installs the wheelhouse's pinned set
    (here one probe wheel, into PIP_TARGET) with no index, and says so in install.json."""
    wheels = _probe_wheelhouse(tmp_path / "wheels")
    python = tmp_path / "python_without_ray"
    python.write_text(
        "#!/usr/bin/env bash\n"
        'if [ "$1" = "-c" ] && [[ "$2" == "import ray"* ]]; then exit 1; fi\n'
        f'exec {sys.executable} "$@"\n'
    )
    python.chmod(0o755)
    target = tmp_path / "site"
    out, stdout = _run_gpu_sh(
        tmp_path, str(python), str(wheels), GPU_PARTS="install", PIP_TARGET=str(target)
    )
    install = json.loads((out / "install.json").read_text())
    assert install["source"] == "wheelhouse" and install["wheel_dir"] == str(wheels)
    assert "ray[default,train,tune]" in install["missing_before"]
    assert json.loads((out / "install.status.json").read_text())["exit_status"] == 0
    assert (target / "cvae_probe" / "__init__.py").read_text() == "ANSWER = 42\n"
    assert "Ray does not import" in stdout  # the Ray parts were left out
    assert not (out / "tests.status.json").exists()  # not in GPU_PARTS


def test_gpu_script_installs_nothing_when_everything_imports(tmp_path):
    wheels = _probe_wheelhouse(tmp_path / "wheels")
    out, _ = _run_gpu_sh(tmp_path, sys.executable, str(wheels), GPU_PARTS="install")
    assert json.loads((out / "install.json").read_text())["source"] == "none"
    assert not (out / "install.status.json").exists()
