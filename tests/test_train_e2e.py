"""End-to-end training with real Ray on CPU: 1 and 2 workers, the debug config.

Two runs are shared by the tests of this module (each costs ~10-30 s):
  one_worker   debug config, 1 worker
  two_workers  debug config, 2 workers, unary shards and codes recorded
Crashes, stops and interrupts of real processes are in test_real_faults.py.
"""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import numpy as np
import pytest

from trainer.checkpoint import read_checkpoint, read_meta
from trainer.observe.run_log import read_attempts, read_metrics
from trainer.provenance import PROJECT_ROOT, UNKNOWN, Provenance, read_provenance
from trainer.run_folder import read_history

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(fit_debug, two_workers_run, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    keep_best = ["train.eval_every=10", "train.keep_best_by=eval/authors_factorvae"]
    one_worker = fit_debug(root, "one_worker", [*keep_best, "train.num_checkpoints_kept=1"])
    return {"one_worker": one_worker, "two_workers": two_workers_run}


def _recorded_provenance(run_dir: Path) -> Provenance:
    """The provenance every checkpoint of the run records (the same in all), checked to be this
    repository's: HEAD or, when a commit was made while the tests ran, an ancestor of it."""
    folders = sorted(p for p in run_dir.glob("checkpoint_*") if p.is_dir())
    assert folders
    metas = [read_meta(folder) for folder in folders]
    recorded = {Provenance.from_dict(meta) for meta in metas if meta is not None}
    assert len(metas) == len(folders) and len(recorded) == 1, recorded
    provenance = recorded.pop()
    now = read_provenance()
    if now.git_revision == UNKNOWN:
        assert provenance.git_revision == UNKNOWN and provenance.git_dirty is None
    else:
        ancestry = ["git", "-C", str(PROJECT_ROOT), "merge-base", "--is-ancestor"]
        subprocess.run([*ancestry, provenance.git_revision, "HEAD"], check=True)
        assert isinstance(provenance.git_dirty, bool)
    return provenance


def _table(run_dir: Path) -> list[dict]:
    return read_metrics(run_dir).to_pylist()


@pytest.mark.parametrize("name", ["one_worker", "two_workers"])
def test_loss_falls_and_run_finishes(runs, name):
    config, result, run_dir = runs[name]
    rows = _table(run_dir)
    assert [r["step"] for r in rows] == [10, 20, 30, 40]
    assert rows[-1]["loss/recon"] < 0.8 * rows[0]["loss/recon"]
    assert result.metrics["step"] == config.train.num_steps
    # Ray gives each worker's torch as many threads as the whole CPUs it asks for.
    starts = [a for a in read_attempts(run_dir) if a["rank"] is not None]  # not the driver's
    threads = [attempt["torch_threads"] for attempt in starts]
    expected = max(math.floor(config.train.cpus_per_worker), 1)
    assert threads == [expected] * config.train.num_workers
    # The final report carries the evaluation of the trained model.
    assert 0.0 <= result.metrics["eval/authors_factorvae"] <= 1.0
    assert 0.0 <= result.metrics["eval/discrete_accuracy"] <= 1.0
    # Discrete stage from step 20: solver timings only in the intervals after it.
    assert rows[1].get("solver/solve_ms") is None
    assert rows[-1]["solver/solve_ms"] > 0
    assert sum(rows[-1][f"codes/count_{k}"] for k in range(3)) == pytest.approx(16)
    payload, config_yaml = read_checkpoint(result.checkpoint.path)
    assert payload["next_step"] == 40 and "name: debug" in config_yaml
    # The code's git revision is in every state.json and heads config.yaml (comments).
    provenance = _recorded_provenance(run_dir)
    run_yaml = provenance.yaml_header() + config.to_yaml()
    assert (run_dir / "config.yaml").read_text() == run_yaml == config_yaml


def test_codes_are_slices_of_one_global_assignment(runs):
    from solver import assign, assignment_cost
    from solver.reference import expanded_assignment

    config, _, run_dir = runs["two_workers"]
    shards = [np.load(run_dir / f"codes_rank{r}.npz") for r in range(2)]
    np.testing.assert_array_equal(shards[0]["steps"], shards[1]["steps"])
    assert list(shards[0]["steps"]) == [20, 21, 22, 23, 24]  # the first discrete steps
    for t in range(len(shards[0]["steps"])):
        unary_NK = np.concatenate([s["unary"][t] for s in shards])  # rank order
        assert unary_NK.shape == (16, 3)
        expected = assign(unary_NK, config.solver.lam)
        trained_with = np.concatenate([s["codes"][t] for s in shards])
        np.testing.assert_array_equal(trained_with, expected)
        # The codes are optimal by an independent exact method (scipy on the expanded matrix).
        lam = config.solver.lam
        reference = expanded_assignment(unary_NK.astype(np.float64), lam)
        assert assignment_cost(unary_NK, trained_with, lam) == pytest.approx(
            assignment_cost(unary_NK, reference, lam), rel=1e-9, abs=1e-9
        )


def test_tensorboard_holds_scalars_images_and_hparams(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    _, _, run_dir = runs["one_worker"]
    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    expected = {
        "loss/total",
        "loss/recon",
        "loss/kl",
        "kl/z0",
        "kl/z5",
        "beta/z0",
        "beta/z5",
        "lr",
        "perf/images_per_s",
        "codes/count_0",
        "solver/solve_ms",
        "solver/round_trip_ms",
        "eval/authors_factorvae",
        "eval/discrete_accuracy",
    }
    assert expected <= scalars, expected - scalars
    images = set(acc.Tags()["images"])
    assert {
        "images/reconstructions",
        "images/traversal_category0",
        "images/traversal_category2",
    } <= images
    # hparams (for TensorBoard's HPARAMS view) live in the same event folder as the scalars.
    hparams = acc.PluginTagToContent("hparams")
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(hparams)
    start = HParamsPluginData.FromString(hparams["_hparams_/session_start_info"])
    values = {k: v.string_value for k, v in start.session_start_info.hparams.items()}
    recorded = _recorded_provenance(run_dir).hparams()
    assert {k: values[k] for k in ("git.revision", "git.dirty")} == recorded
    # The solver's transport as used: `compiled`, or `ordinary` while the graph was still being
    # built when the run ended; `ordinary (reason)` would say that it could not be built.
    assert values["solver.transport"] in ("compiled", "ordinary"), values["solver.transport"]
    assert "config/text_summary" in acc.Tags()["tensors"]  # the resolved config, as text
    assert "hparam/loss/total" in scalars
    # The cascade is visible in the betas (5-step stages, discrete from stage 4): dim 0 is
    # relieved from stage 0; dim 5 starts at beta_h and is relieved from stage 6 (steps 30-39).
    assert acc.Scalars("beta/z0")[0].value == pytest.approx(0.1)
    assert acc.Scalars("beta/z5")[0].value == pytest.approx(10.0)
    assert acc.Scalars("beta/z5")[-1].value == pytest.approx(0.1)
    # Steps 0-9 cover stages 0 and 1: dim 1 had beta_h for 5 steps and beta_l for 5.
    assert acc.Scalars("beta/z1")[0].value == pytest.approx((10.0 + 0.1) / 2)


def test_evaluate_cli_prints_metrics_and_writes_images(runs, tmp_path, capsys):
    import json

    from launch.evaluate import main

    _, result, _ = runs["one_worker"]
    out = tmp_path / "eval"
    code = main(
        [
            "--checkpoint",
            result.checkpoint.path,
            "--out",
            str(out),
            "--protocols",
            "authors_factorvae,discrete_accuracy,mig",
            "--metric-option",
            "num_global=200",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "metrics.json").read_text())
    assert json.loads(printed[printed.index("{") :]) == report
    assert report["step"] == 40 and report["num_images"] == 384
    for key in ("eval/authors_factorvae", "eval/discrete_accuracy", "eval/mig"):
        assert 0.0 <= report[key] <= 1.0
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == ["reconstructions.png"] + [f"traversal_category{k}.png" for k in range(3)]
    assert main(["--checkpoint", str(tmp_path / "nothing")]) == 2
    assert "checkpoint path does not exist" in capsys.readouterr().err


def test_keep_best_by_keeps_the_best_evaluated_model_and_the_latest(runs):
    """Every evaluation writes a checkpoint; with num_checkpoints_kept=1 the run keeps the one
    whose evaluation scored best, plus the latest."""
    _, result, run_dir = runs["one_worker"]
    scores = {
        int(r["step"]): r["eval/authors_factorvae"]
        for r in _table(run_dir)
        if r.get("eval/authors_factorvae") is not None
    }
    assert sorted(scores) == [10, 20, 30, 40]
    best_step = max(sorted(scores), key=lambda step: scores[step])  # the earliest on ties
    folders = [p for p in run_dir.glob("checkpoint_*") if p.is_dir()]
    kept = {read_checkpoint(p)[0]["next_step"] for p in folders}
    assert kept == {best_step, 40}
    assert max(scores[s] for s in kept) == max(scores.values())


@pytest.mark.parametrize("name", ["one_worker", "two_workers"])
def test_every_reported_key_is_declared_and_accepted_as_a_sweep_metric(runs, name):
    from launch.sweep import reported_metrics  # what a sweep's `metric:` is checked against

    config, result, run_dir = runs[name]
    declared = reported_metrics(config)
    seen = set(result.metrics) | {key for row in _table(run_dir) for key in row}
    seen = {key for key in seen if isinstance(result.metrics.get(key, 0.0), int | float)}
    assert seen - declared == set()
    # And every declared key was reported (the all-gather happens with two ranks only).
    assert declared - seen == ({"solver/gather_ms"} if name == "one_worker" else set())


def test_a_corrupt_newest_checkpoint_is_skipped_for_the_newest_intact_one(fit_debug, tmp_path):
    every = ["train.checkpoint_every=10", "cascade.discrete_start_stage=2"]
    _, first, run_dir = fit_debug(tmp_path, "corrupt", ["train.num_steps=20", *every])
    newest = Path(first.checkpoint.path)
    older = [p for p in run_dir.glob("checkpoint_*") if p.is_dir() and p != newest]
    assert [read_checkpoint(p)[0]["next_step"] for p in older] == [10]
    state = newest / "state.pt"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])  # truncated

    # The finished run resumed with more steps: it runs them and records the change.
    _, second, _ = fit_debug(tmp_path, "corrupt", ["train.num_steps=30", *every])
    assert second.metrics["step"] == 30
    # Resumed at step 10: the table was rewound there and steps 11-30 trained again.
    assert [r["step"] for r in _table(run_dir)] == [10, 20, 30]
    assert read_checkpoint(second.checkpoint.path)[0]["next_step"] == 30
    (history,) = read_history(run_dir)
    assert history["step"] == 10
    assert history["changes"] == {"train.num_steps": {"old": 20, "new": 30}}
    changes = [a for a in read_attempts(run_dir) if a.get("event") == "config_change"]
    assert [a["step"] for a in changes] == [10]
    # The run's own learning rate throughout (a mean over the interval's steps).
    assert [r["lr"] for r in _table(run_dir)] == pytest.approx([1e-3] * 3, rel=1e-9)
