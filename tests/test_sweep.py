"""Sweep files refused before any trial: non-finite search spaces, empty or non-mapping files.

Ray-free: `load_sweep` only reads and checks files.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from launch.sweep import load_sweep
from trainer.config import ConfigError

ROOT = Path(__file__).parent.parent
DEBUG = ROOT / "configs" / "debug.yaml"


def _sweep(tmp_path: Path, space: dict, algorithm: str = "grid") -> Path:
    raw = {
        "name": "s",
        "base": str(DEBUG),
        "search": {"algorithm": algorithm, "num_samples": 1, "space": space},
        "metric": "loss/recon",
        "mode": "min",
        "scheduler": {"type": "none"},
        "storage_path": str(tmp_path / "sweeps"),
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_sweep(path)
    assert str(path) in str(info.value)
    return info.value.problems


def test_a_finite_space_is_accepted(tmp_path):
    sweep = load_sweep(_sweep(tmp_path, {"beta_h": {"grid": [4.0, 10]}}))
    assert [(d.name, d.values) for d in sweep.dimensions] == [("beta_h", [4.0, 10])]


@pytest.mark.parametrize(
    "algorithm, space, expected",
    [
        (
            "grid",
            {"beta_h": {"grid": [float("inf"), 10]}},
            "search.space.beta_h.grid: values must be finite numbers, got [inf, 10]",
        ),
        (
            "random",
            {"lambda": {"loguniform": [1e-3, float("nan")]}},
            "search.space.lambda.loguniform: values must be finite numbers, got [0.001, nan]",
        ),
        (
            "random",
            {"lr": {"uniform": [float("-inf"), 1e-3]}},
            "search.space.lr.uniform: values must be finite numbers, got [-inf, 0.001]",
        ),
        (
            "random",
            {"beta_l": {"choice": [0.1, float("nan")]}},
            "search.space.beta_l.choice: values must be finite numbers, got [0.1, nan]",
        ),
    ],
)
def test_non_finite_values_are_refused_naming_the_parameter(tmp_path, algorithm, space, expected):
    assert _problems(_sweep(tmp_path, space, algorithm)) == [expected]


def test_a_non_finite_value_written_as_yaml_is_refused(tmp_path):
    path = _sweep(tmp_path, {"beta_h": {"grid": [4, 10]}})
    path.write_text(path.read_text().replace("- 4", "- .inf"))
    assert _problems(path) == [
        "search.space.beta_h.grid: values must be finite numbers, got [inf, 10]"
    ]


def test_an_empty_sweep_file_is_refused(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text("# nothing yet\n")
    assert _problems(path) == [f"{path} is empty; expected a mapping of settings"]


def test_a_non_mapping_sweep_file_is_refused(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text("[beta_h, lambda]\n")
    assert _problems(path) == [
        f"{path}: expected a mapping at the top level, got list ['beta_h', 'lambda']"
    ]


def test_an_empty_base_config_is_refused_naming_it(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("")
    path = _sweep(tmp_path, {"beta_h": {"grid": [4, 10]}})
    raw = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**raw, "base": str(base)}))
    assert f"base: {base} is empty; expected a mapping of settings" in _problems(path)


def test_a_bad_npz_of_the_base_config_stops_launch_tune_with_status_2(tmp_path, capsys, no_ray):
    from launch.tune import main

    npz = tmp_path / "dsprites.npz"
    npz.write_bytes(b"")
    path = _sweep(tmp_path, {"beta_h": {"grid": [4, 10]}})
    raw = yaml.safe_load(path.read_text())
    raw["set"] = {"data.source": "npz", "data.npz_path": str(npz)}
    path.write_text(yaml.safe_dump(raw))
    assert main(["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path} (base config): 1 problem(s)" in err
    assert f"data.npz_path: {npz}: not a valid .npz archive" in err


def test_every_registry_output_of_the_protocols_is_an_accepted_metric(tmp_path):
    from trainer.eval.registry import METRICS

    path = _sweep(tmp_path, {"beta_h": {"grid": [4, 10]}})
    raw = yaml.safe_load(path.read_text())
    for name, metric in METRICS.items():
        for key in metric.keys:
            # discrete_accuracy needs the debug config's discrete code, which every run has.
            raw |= {"metric": key, "mode": "max", "set": {"eval.protocols": [name]}}
            path.write_text(yaml.safe_dump(raw))
            assert load_sweep(path).metric == key
    # The table keys of the debug model (6 continuous dims, 3 categories) are reported too.
    for key in ("mi/shape/z5", "mi/orientation/code", "confusion/code2/heart"):
        raw |= {"metric": key, "mode": "max", "set": {"eval.protocols": ["factor_dim_mi"]}}
        path.write_text(yaml.safe_dump(raw))
        assert load_sweep(path).metric == key
    raw |= {"metric": "mi/shape/z6"}
    path.write_text(yaml.safe_dump(raw))
    (problem,) = _problems(path)
    assert problem.startswith("metric: 'mi/shape/z6' is never reported by training")
    # A key of a protocol that is not configured is never reported.
    raw |= {"metric": "eval/mig", "set": {"eval.protocols": ["authors_factorvae"]}}
    path.write_text(yaml.safe_dump(raw))
    (problem,) = _problems(path)
    assert problem.startswith("metric: 'eval/mig' is never reported by training with this config")


def test_unknown_keys_and_non_finite_floats_are_named_with_their_dotted_path(tmp_path):
    path = _sweep(tmp_path, {"beta_h": {"grid": [4, 10]}})
    raw = yaml.safe_load(path.read_text())
    raw["search"]["seed"] = 3
    raw["scheduler"] = {"type": "asha", "reduction_factor": float("nan")}
    path.write_text(yaml.safe_dump(raw))
    assert _problems(path) == [
        "search.seed: unknown key (known: algorithm, max_concurrent_trials, num_samples, space)",
        "scheduler.reduction_factor: must be a finite number, got nan",
    ]
    raw["scheduler"] = {"type": "asha", "reduction_factor": 1}
    path.write_text(yaml.safe_dump(raw))
    assert "scheduler.reduction_factor: must be > 1.0, got 1" in _problems(path)


def test_paper_seeds_puts_ten_seeds_at_once_on_one_gpu():
    sweep = load_sweep(ROOT / "configs" / "sweeps" / "paper_seeds.yaml")
    train = sweep.base.train
    assert sweep.num_trials() == 10 and sweep.max_concurrent_trials == 10
    assert train.use_gpu and train.num_workers == 1
    # Ten single-worker trials fit one GPU exactly.
    assert sweep.max_concurrent_trials * train.num_workers * train.gpus_per_worker == 1.0
    (seeds,) = sweep.dimensions
    assert seeds.field == "seed" and seeds.values == list(range(10))
    assert sweep.trial_config({"seed": 7}).seed == 7
    assert sweep.base.train.num_steps == 300_000 and sweep.base.optim.lr == 1e-4
