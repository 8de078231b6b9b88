"""The probe suite: bad inputs and unsafe reruns, each refused with exit status 2 and a message
that names the field, before Ray is imported (so before any Ray process can start).

All probes run in ONE subprocess (the imports are paid once), each through the command's own
`main(argv)`; the subprocess reports, per probe, the exit status, stderr, whether `ray` was
imported and whether it was initialised by then, and its RAY_TMPDIR (where a Ray session would
write) must stay empty. `launch.train` and `launch.evaluate` refuse before `ray` is even
imported; `launch.tune` and `launch.study` import it with the sweep schema (the trainer's
reported keys) but start nothing. The launch.train and launch.evaluate probes come first in
the table. A run folder, checkpoint or experiment that a probe needs is written by the fixtures
without training. No Ray is started by these tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from launch.sweep import load_sweep
from launch.tune import TUNE_STATE, write_experiment_record
from trainer.build import build_model, build_optimizer
from trainer.checkpoint import TrainState, save_checkpoint
from trainer.config import load_config
from trainer.run_folder import CONFIG_FILE

ROOT = Path(__file__).parent.parent
DEBUG = str(ROOT / "configs" / "debug.yaml")
DEBUG_SWEEP = ROOT / "configs" / "sweeps" / "debug.yaml"

RUNNER = textwrap.dedent(
    """
    import contextlib, importlib, io, json, sys
    results = {}
    for name, module, argv in json.loads(sys.argv[1]):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                rc = importlib.import_module(module).main(argv)
            except SystemExit as exit:
                rc = exit.code
        ray = sys.modules.get("ray")
        results[name] = {
            "rc": rc,
            "stderr": err.getvalue(),
            "ray_imported": ray is not None,
            "ray_initialized": ray is not None and ray.is_initialized(),
        }
    print(json.dumps(results))
    """
)


def _run_folder(storage: Path, name: str, overrides: list[str]) -> Path:
    """A run folder as a finished run leaves it (its config.yaml), without training."""
    config = load_config(DEBUG, [f"train.storage_path={storage}", f"train.run_name={name}"])
    folder = storage / name
    folder.mkdir(parents=True)
    (folder / CONFIG_FILE).write_text(config.to_yaml())
    return folder


def _checkpoint(folder: Path) -> Path:
    config = load_config(DEBUG)
    torch.manual_seed(0)
    model = build_model(config)
    optimizer, scheduler = build_optimizer(config, model)
    return save_checkpoint(folder, TrainState(model, optimizer, scheduler, 40), config.to_yaml())


def _sweep(folder: Path, lam: list[float]) -> Path:
    raw = yaml.safe_load(DEBUG_SWEEP.read_text())
    raw["base"] = DEBUG
    raw["storage_path"] = str(folder / "sweeps")
    raw["search"]["space"]["lambda"] = {"grid": lam}
    path = folder / f"sweep_{len(lam)}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _study(folder: Path, seeds: list[int], curve: list[str] | None = None) -> Path:
    raw = {
        "name": "probe_study",
        "base": DEBUG,
        "models": {"cascade": {"seeds": seeds}},
        "selection_metric": "eval/authors_factorvae",
        "storage_path": str(folder / "studies"),
        "results_dir": str(folder / "results"),
    }
    if curve:
        raw["curve_metrics"] = curve
    path = folder / f"study_{len(seeds)}_{len(curve or [])}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def lock_holder(tmp_path_factory):
    """A live process holding the lock of run folder `<root>/held`; ended by the finalizer."""
    root = tmp_path_factory.mktemp("held")
    code = (
        "import sys, time; from trainer.run_folder import RunLock; "
        "lock = RunLock(sys.argv[1], 'the holder'); print('held', flush=True); time.sleep(600)"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(root / "held")],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        yield root, holder.pid
    finally:
        holder.kill()
        holder.wait(timeout=30)


@pytest.fixture(scope="module")
def probes(tmp_path_factory, lock_holder):
    """{probe name: (expected fragments, result)} of every probe, run in one subprocess."""
    tmp = tmp_path_factory.mktemp("probes")
    held_root, holder_pid = lock_holder
    storage = tmp / "runs"
    run = _run_folder(storage, "r1", [])
    config_before = (run / CONFIG_FILE).read_text()
    checkpoint = _checkpoint(tmp / "checkpoint_6dims")
    a_file = tmp / "a_file.txt"
    a_file.write_text("not a folder")
    empty = tmp / "empty.yaml"
    empty.write_text("# nothing\n")

    sweep_first = _sweep(tmp, [0.001, 1.0])
    sweep = load_sweep(sweep_first)
    experiment = Path(sweep.storage_path) / sweep.name
    write_experiment_record(sweep, experiment)
    (experiment / TUNE_STATE).write_bytes(b"")  # a started Tune experiment
    sweep_changed = _sweep(tmp, [0.001, 1.0, 3.0])

    from launch.study import experiment_dir, load_study

    study_first = _study(tmp, [0])
    study = load_study(study_first)
    write_experiment_record(study, experiment_dir(study))
    (experiment_dir(study) / TUNE_STATE).write_bytes(b"")
    study_more_seeds = _study(tmp, [0, 1])
    study_typo = _study(tmp, [0], ["eval/authors_factorvae", "codes/shape_agrement"])

    train = "launch.train"
    resume = ["--config", DEBUG, "--set", f"train.storage_path={storage}"]
    resume += ["--set", "train.run_name=r1"]
    table = {
        "resume_seed": (
            train,
            [*resume, "--set", "seed=1"],
            ["seed: the run has 0, this command 1"],
        ),
        "resume_lr_more_steps": (
            train,
            [*resume, "--set", "optim.lr=1e-4", "--set", "train.num_steps=60"],
            ["optim.lr: the run has 0.001, this command 0.0001", "train.run_name="],
        ),
        "resume_seed_more_steps": (
            train,
            [*resume, "--set", "seed=1", "--set", "train.num_steps=60"],
            ["seed: the run has 0, this command 1"],
        ),
        "resume_num_continuous": (
            train,
            [*resume, "--set", "model.num_continuous=4"],
            ["model.num_continuous: the run has 6, this command 4"],
        ),
        "resume_workers": (
            train,
            [*resume, "--set", "train.num_workers=2"],
            ["train.num_workers: the run has 1, this command 2"],
        ),
        "second_writer": (
            train,
            ["--config", DEBUG, "--set", f"train.storage_path={held_root}"]
            + ["--set", "train.run_name=held"],
            [f"pid {holder_pid} on host", "is in use by another command", "the holder"],
        ),
        "storage_under_proc": (
            train,
            ["--config", DEBUG, "--set", "train.storage_path=/proc/cascadevae_probe/runs"],
            ["train.storage_path: cannot write to /proc/cascadevae_probe/runs"],
        ),
        "storage_through_a_file": (
            train,
            ["--config", DEBUG, "--set", f"train.storage_path={a_file}/runs"],
            [f"train.storage_path: cannot write to {a_file}/runs"],
        ),
        "cache_through_a_file": (
            train,
            ["--config", DEBUG, "--set", f"train.storage_path={storage}"]
            + ["--set", f"data.cache_dir={a_file}/cache"],
            [f"data.cache_dir: cannot write to {a_file}/cache"],
        ),
        "num_steps_too_large": (
            train,
            ["--config", DEBUG, "--set", "train.num_steps=1000000000000000"],
            ["train.num_steps: must be <= 1000000000"],
        ),
        "unknown_field": (
            train,
            ["--config", DEBUG, "--set", "train.num_step=5"],
            ["train.num_step"],
        ),
        "batch_not_divisible": (
            train,
            ["--config", DEBUG, "--set", "train.global_batch=7", "--set", "train.num_workers=2"],
            ["train.global_batch: 7 is not divisible by train.num_workers=2"],
        ),
        "nan_lr": (train, ["--config", DEBUG, "--set", "optim.lr=nan"], ["optim.lr"]),
        "empty_config": (train, ["--config", str(empty)], [f"{empty} is empty"]),
        "evaluate_other_shape": (
            "launch.evaluate",
            ["--checkpoint", str(checkpoint), "--set", "model.num_continuous=8"],
            ["model.num_continuous: the checkpoint was trained with 6, --set gives 8"],
        ),
        "tune_resume_changed_space": (
            "launch.tune",
            ["--config", str(sweep_changed)],
            ["search.space.lambda: the experiment has {'grid': [0.001, 1.0]}", "another `name`"],
        ),
        "study_resume_more_seeds": (
            "launch.study",
            ["--config", str(study_more_seeds)],
            ["runs.cascade-s1: not a run of the experiment"],
        ),
        "study_curve_metric_typo": (
            "launch.study",
            ["--config", str(study_typo)],
            ["curve_metrics: 'codes/shape_agrement' is reported by no run"],
        ),
    }
    plan = [[name, module, argv] for name, (module, argv, _) in table.items()]
    ray_tmp = tmp / "ray_tmp"
    ray_tmp.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", RUNNER, json.dumps(plan)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "RAY_TMPDIR": str(ray_tmp)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert list(ray_tmp.iterdir()) == []  # no Ray session was created
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert (run / CONFIG_FILE).read_text() == config_before  # no refused resume rewrote it
    return {
        name: (module, fragments, results[name]) for name, (module, _, fragments) in table.items()
    }


PROBES = [
    "resume_seed",
    "resume_lr_more_steps",
    "resume_seed_more_steps",
    "resume_num_continuous",
    "resume_workers",
    "second_writer",
    "storage_under_proc",
    "storage_through_a_file",
    "cache_through_a_file",
    "num_steps_too_large",
    "unknown_field",
    "batch_not_divisible",
    "nan_lr",
    "empty_config",
    "evaluate_other_shape",
    "tune_resume_changed_space",
    "study_resume_more_seeds",
    "study_curve_metric_typo",
]


@pytest.mark.parametrize("name", PROBES)
def test_the_probe_exits_2_naming_the_field_before_ray(probes, name):
    module, fragments, result = probes[name]
    assert result["rc"] == 2, result
    for fragment in fragments:
        assert fragment in result["stderr"], (fragment, result["stderr"])
    assert not result["ray_initialized"], "Ray was started before the refusal"
    if module in ("launch.train", "launch.evaluate"):
        assert not result["ray_imported"], "Ray was imported before the refusal"


def test_every_probe_of_the_table_is_checked(probes):
    assert sorted(probes) == sorted(PROBES)
