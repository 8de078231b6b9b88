"""Sweeps: validation before any trial, an interrupted sweep resumed, Optuna with failing trials.
The shipped debug sweep (ASHA) end to end is test_multinode.py's sweep on two nodes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from launch.sweep import load_sweep, reported_metrics
from trainer.config import ConfigError, load_config
from trainer.distributed.drills import held_marker, release_file
from trainer.observe.run_log import read_attempts, read_metrics

ROOT = Path(__file__).parent.parent
DEBUG_SWEEP = ROOT / "configs" / "sweeps" / "debug.yaml"


def _sweep_file(tmp_path: Path, **changes) -> Path:
    """A copy of the debug sweep in tmp_path (base path made absolute), with `changes` applied."""
    raw = yaml.safe_load(DEBUG_SWEEP.read_text())
    raw["base"] = str(ROOT / "configs" / "debug.yaml")
    raw["storage_path"] = str(tmp_path / "sweeps")
    for key, value in changes.items():
        if value is None:
            raw.pop(key, None)
        else:
            raw[key] = value
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _problems(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_sweep(path)
    return "\n".join(info.value.problems)


def test_shipped_sweeps_are_valid():
    debug = load_sweep(DEBUG_SWEEP)
    assert debug.num_trials() == 3 and debug.scheduler == "asha"
    paper = load_sweep(ROOT / "configs" / "sweeps" / "paper.yaml")
    assert paper.num_trials() == 18
    dims = {d.name: (d.kind, d.values) for d in paper.dimensions}
    assert dims == {
        "beta_h": ("grid", [4, 10, 20]),
        "beta_l": ("grid", [0.1, 0.5, 1.0]),
        "lambda": ("loguniform", [0.001, 10.0]),
    }


@pytest.mark.parametrize(
    "search, fragment",
    [
        ({"algorithm": "grid", "space": {}}, "search.space: empty or missing"),
        ({"algorithm": "grid", "space": {"beta_x": {"grid": [1]}}}, "search.space.beta_x: unknown"),
        ({"algorithm": "grid", "space": {"beta_h": [4, 10]}}, "search.space.beta_h: expected one"),
        ({"algorithm": "grid", "space": {"beta_h": {"normal": [0, 1]}}}, "unknown domain 'normal'"),
        ({"algorithm": "random", "space": {"lambda": {"loguniform": [0, 1]}}}, "low must be > 0"),
        ({"algorithm": "random", "space": {"lambda": {"uniform": [2, 1]}}}, "low must be < high"),
        ({"algorithm": "grid", "space": {"lambda": {"uniform": [0, 1]}}}, "grid needs every"),
        ({"algorithm": "bayes", "space": {"beta_h": {"grid": [4]}}}, "'bayes' is not one of"),
        ({"algorithm": "grid", "space": {"lambda": {"grid": [-1.0]}}}, "solver.lam: must be >= 0"),
        (
            {"algorithm": "grid", "space": {"stage_length": {"grid": [5, 50]}}},
            "after the last stage",
        ),
    ],
)
def test_bad_search_spaces_are_refused_before_any_trial(tmp_path, search, fragment):
    assert fragment in _problems(_sweep_file(tmp_path, search=search))


def test_unknown_metric_and_keys_are_refused(tmp_path):
    text = _problems(_sweep_file(tmp_path, metric="eval/fid", bogus=1))
    assert "metric: 'eval/fid' is never reported by training" in text
    assert "bogus: unknown key" in text


def test_reported_metrics_follow_the_eval_protocols():
    config = load_config(ROOT / "configs" / "debug.yaml")
    names = reported_metrics(config)
    assert {"loss/recon", "eval/authors_factorvae", "eval/discrete_accuracy"} <= names
    assert "eval/mig" not in names


def _registered_steps(run_dir: Path) -> list[int]:
    """Steps of the checkpoints Ray Train has registered (its snapshot in the run folder)."""
    try:
        snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
        return [r["metrics"]["step"] for r in snapshot["checkpoint_results"]]
    except (OSError, ValueError, KeyError):
        return []


@pytest.mark.slow
def test_interrupted_sweep_resumes_each_trial_where_it_stopped(ray_session, tmp_path, spawn):
    """Two single-worker trials one after the other, each holding before step 25
    (`train.hold_at_step`). The first is released and finishes; the sweep is interrupted with
    SIGINT while the second holds with its checkpoint of step 20 registered. The same command
    then continues the experiment: the finished trial is not run again and the second resumes
    from step 20 in its own run folder (not from step 0)."""
    steps, hold, checkpoint = 40, 25, 20
    sweep = _sweep_file(
        tmp_path,
        scheduler={"type": "none"},
        search={
            "algorithm": "grid",
            "max_concurrent_trials": 1,
            "space": {"beta_h": {"grid": [4, 10]}},
        },
        set={
            "train.num_workers": 1,
            "train.num_steps": steps,
            "train.checkpoint_every": 10,
            "train.hold_at_step": hold,
            "cascade.discrete_start_stage": 2,
        },
    )
    experiment = tmp_path / "sweeps" / "debug_sweep"
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    command = [sys.executable, "-m", "launch.tune", "--config", str(sweep)]
    first = spawn(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )

    def starts(run_dir: Path) -> list[int]:
        return [a["start_step"] for a in read_attempts(run_dir) if a["rank"] == 0]

    def wait_for_held(exclude: set[Path]) -> Path:
        deadline = time.time() + 600  # a ceiling for a loaded machine
        while time.time() < deadline:
            for marker in experiment.glob(f"*/train/{held_marker(hold)}"):
                run_dir = marker.parent
                if run_dir not in exclude and checkpoint in _registered_steps(run_dir):
                    return run_dir
            assert first.poll() is None, first.stdout.read()
            time.sleep(0.2)
        raise AssertionError("no trial held in time")

    done = wait_for_held(exclude=set())
    (done / release_file(hold)).write_text("")
    stopped = wait_for_held(exclude={done})
    assert read_metrics(done)["step"].to_pylist()[-1] == steps
    first.send_signal(signal.SIGINT)
    first_output, _ = first.communicate(timeout=120)
    assert first.returncode == 130, first_output[-3000:]
    assert "Run the same command to continue it" in first_output
    rows_before = read_metrics(done).num_rows
    assert starts(stopped) == [0]

    second = spawn(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    second_out, second_err = second.communicate(timeout=600)
    second_out, second_err = second_out.decode(), second_err.decode()
    assert second.returncode == 0, second_out[-3000:] + second_err[-3000:]
    assert "resuming experiment" in second_out
    rows = pq.read_table(experiment / "results.parquet").to_pylist()
    assert len(rows) == 2 and all(r["status"] == "COMPLETED" for r in rows)
    assert len(list(experiment.glob("t0*"))) == 2, first_output[-2000:]
    # The trial finished before the interruption was not run again.
    assert read_metrics(done).num_rows == rows_before
    assert starts(done) == [0]
    # The interrupted trial continued from its checkpoint, in the same run folder.
    assert starts(stopped) == [0, checkpoint]
    assert read_metrics(stopped)["step"].to_pylist() == [10, 20, 30, 40]


@pytest.mark.slow
def test_optuna_trials_that_fail_are_reported_and_do_not_stop_the_others(
    ray_session, tmp_path, capsys
):
    """The model-based searcher through Tune's search-algorithm interface proposes 2 trials in
    its space; each crashes at step 3 (fault drill, no retries): each is reported with its
    error, the first does not stop the second, and no best config is written."""
    from launch.tune import main

    search = {
        "algorithm": "optuna",
        "num_samples": 2,
        "max_concurrent_trials": 1,
        "space": {"lambda": {"loguniform": [0.001, 10.0]}, "beta_l": {"choice": [0.1, 1.0]}},
    }
    sweep = _sweep_file(
        tmp_path,
        search=search,
        scheduler={"type": "none"},
        name="optuna_sweep",
        set={
            "train.num_workers": 1,
            "train.num_steps": 20,
            "train.fail_at_step": 3,
            "train.max_failures": 0,
            "cascade.discrete_start_stage": 2,
        },
    )
    assert main(["--config", str(sweep)]) == 1  # every trial failed
    out = capsys.readouterr().out
    experiment = tmp_path / "sweeps" / "optuna_sweep"
    rows = pq.read_table(experiment / "results.parquet").to_pylist()
    assert len(rows) == 2 and all(r["status"] == "ERROR" for r in rows)
    assert all("injected worker failure" in r["error"] for r in rows)
    for r in rows:
        assert 0.001 <= r["param/lambda"] <= 10.0 and r["param/beta_l"] in (0.1, 1.0)
    assert out.count("failed: t") == 2 and "2 failed" in out
    assert not (experiment / "best_config.yaml").exists()


def test_a_resume_may_change_the_solver_transport_but_not_the_trained_state(tmp_path):
    """The experiment's record is compared field by field; the fields that only say how or
    where the same solve runs (trainer.run_folder.NOT_STATE) may change."""
    from launch.tune import TUNE_STATE, experiment_problems, write_experiment_record

    first = load_sweep(_sweep_file(tmp_path))
    experiment = tmp_path / "experiment"
    write_experiment_record(first, experiment)
    (experiment / TUNE_STATE).write_bytes(b"")  # a started Tune experiment
    base_set = yaml.safe_load(DEBUG_SWEEP.read_text())["set"]
    transport = _sweep_file(
        tmp_path, set={**base_set, "solver.transport": "ordinary", "solver.placement": "rank0"}
    )
    assert experiment_problems(load_sweep(transport), experiment) == []
    lam = _sweep_file(tmp_path, set={**base_set, "solver.lam": 0.5})
    assert experiment_problems(load_sweep(lam), experiment) == [
        "base.solver.lam: the experiment has 0.001, this file 0.5"
    ]
