"""Study files and reports: validation, the per-run readings, the table over seeds."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from launch.study import load_study, main
from launch.study_report import RunRecord, markdown_table, select, summarise
from trainer.config import ConfigError
from trainer.observe.run_log import RunLog, read_metrics

DEBUG = Path(__file__).resolve().parents[1] / "configs" / "debug.yaml"
RUNS = ["cascade-s0", "cascade-s1", "beta_vae-s0"]
"""The runs of `_study`'s file."""


def _study(tmp_path: Path, **changes) -> Path:
    raw = {
        "name": "tiny",
        "base": str(DEBUG),
        "models": {
            "cascade": {"seeds": [0, 1], "set": {"model.variant": "cascade"}},
            "beta_vae": {
                "seeds": [0],
                "set": {"model.variant": "beta_vae", "eval.protocols": ["authors_factorvae"]},
            },
        },
        "metrics": ["eval/authors_factorvae", "eval/discrete_accuracy"],
        "storage_path": str(tmp_path / "runs"),
        "results_dir": str(tmp_path / "results"),
        **changes,
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_a_study_is_one_trial_per_model_and_seed(tmp_path):
    study = load_study(_study(tmp_path))
    assert list(study.runs) == ["cascade-s0", "cascade-s1", "beta_vae-s0"]
    config = study.trial_config({"run": "cascade-s1"})
    assert config.seed == 1 and config.model.variant == "cascade"
    assert study.trial_config({"run": "beta_vae-s0"}).model.effective_categories == 0


def test_every_problem_is_listed_before_ray_starts(tmp_path):
    bad = _study(
        tmp_path,
        colour="red",
        metrics=["eval/mig"],
        models={
            "cascade": {"seeds": [0, 0]},
            "beta_vae": {"seeds": [0], "set": {"model.variant": "beta_vae"}},
        },
    )
    with pytest.raises(ConfigError) as err:
        load_study(bad)
    text = str(err.value)
    assert "colour: unknown key" in text
    assert "models.cascade.seeds" in text
    # beta_vae has no discrete code, so the debug config's discrete_accuracy is refused.
    assert "models.beta_vae seed 0" in text and "discrete_accuracy" in text
    assert main(["--config", str(bad)]) == 2


def test_empty_study_and_base_files_are_refused_naming_them(tmp_path, capsys, no_ray):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError) as err:
        load_study(empty)
    assert err.value.problems == [f"{empty} is empty; expected a mapping of settings"]
    assert main(["--config", str(empty)]) == 2
    assert f"{empty} is empty" in capsys.readouterr().err
    with pytest.raises(ConfigError) as err:
        load_study(_study(tmp_path, base=str(empty)))
    assert f"base: {empty} is empty; expected a mapping of settings" in err.value.problems


def test_a_bad_npz_of_the_base_config_stops_the_study_with_status_2(tmp_path, capsys, no_ray):
    npz = tmp_path / "dsprites.npz"
    npz.write_bytes(b"not a zip")
    path = _study(tmp_path, set={"data.source": "npz", "data.npz_path": str(npz)})
    assert main(["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path} (base config): 1 problem(s)" in err
    assert f"data.npz_path: {npz}: not a valid .npz archive" in err


def _run(model, seed, evals):
    rows = [{"step": 10.0 * i, "loss/total": 1.0} for i in range(1, 8)]
    for step, value, acc in evals:
        rows.append({"step": step, "eval/authors_factorvae": value, "eval/discrete_accuracy": acc})
    return RunRecord(model, seed, rows)


def test_best_by_metric_and_last_readings():
    run = _run("cascade", 0, [(20.0, 0.5, 0.4), (40.0, 0.9, 0.6), (60.0, 0.7, 0.8)])
    picks = select(run, "eval/authors_factorvae", ["eval/authors_factorvae"])
    assert picks["best"]["step"] == 40.0 and picks["best"]["eval/discrete_accuracy"] == 0.6
    assert picks["last"]["step"] == 60.0


def test_table_over_seeds_known_answer():
    runs = [
        _run("cascade", 0, [(20.0, 0.6, 0.5), (40.0, 0.8, 0.9)]),
        _run("cascade", 1, [(20.0, 0.9, 0.7), (40.0, 0.7, 0.6)]),
    ]
    metrics = ["eval/authors_factorvae", "eval/discrete_accuracy"]
    rows = summarise(runs, "eval/authors_factorvae", metrics)
    index = {(r["metric"], r["reading"]): r for r in rows}
    best = index["eval/authors_factorvae", "best"]
    assert best["mean"] == pytest.approx(0.85) and best["n"] == 2
    assert best["std"] == pytest.approx(math.sqrt((0.8 - 0.85) ** 2 + (0.9 - 0.85) ** 2))
    # The best seed-1 model is its step-20 one, so its shape accuracy there is reported.
    assert index["eval/discrete_accuracy", "best"]["mean"] == pytest.approx((0.9 + 0.7) / 2)
    assert index["eval/discrete_accuracy", "last"]["mean"] == pytest.approx((0.9 + 0.6) / 2)
    table = markdown_table(rows, ["cascade"], metrics)
    assert "| cascade | best | 0.850 ± 0.071 (n=2) | 0.800 ± 0.141 (n=2) |" in table


def test_report_from_run_folders(tmp_path):
    """--report reads each trial's params.json and train/metrics.parquet (as the run log writes
    it, or a single file) and writes the markdown table, the parquet summary and both plots."""
    study = load_study(_study(tmp_path))
    for index, (name, evals) in enumerate(
        [("cascade-s0", [(40.0, 0.8, 0.9)]), ("cascade-s1", [(40.0, 0.6, 0.7)])]
    ):
        trial = tmp_path / "runs" / "tiny" / f"t{index}_run={name}"
        (trial / "train").mkdir(parents=True)
        (trial / "params.json").write_text(f'{{"run": "{name}"}}')
        log = RunLog(trial / "train", "name: tiny\n")
        for row in _run("cascade", index, evals).rows:
            log.scalars(int(row["step"]), {k: v for k, v in row.items() if k != "step"})
        log.close()
    unfinished = tmp_path / "runs" / "tiny" / "t2_run=beta_vae-s0"
    (unfinished / "train").mkdir(parents=True)
    (unfinished / "params.json").write_text('{"run": "beta_vae-s0"}')
    pq.write_table(
        pa.table({"step": [20.0], "eval/authors_factorvae": [0.99]}),
        unfinished / "train/metrics.parquet",
    )
    assert main(["--config", str(_study(tmp_path)), "--report"]) == 0
    results = Path(study.results_dir)
    text = (results / "results.md").read_text()
    assert "| cascade | last | 0.700 ± 0.141 (n=2) | 0.800 ± 0.141 (n=2) |" in text
    assert "best-by-metric (the authors' protocol" in text
    assert "`beta_vae-s0`: unfinished at step 20 of 40" in text and "| beta_vae |" not in text
    summary = pq.read_table(results / "results.parquet").to_pylist()
    assert {r["model"] for r in summary} == {"cascade"}
    for png in ("curves.png", "bars.png"):
        assert (results / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # No run evaluated factor_dim_mi: no tables.
    assert not (results / "factor_dim.md").exists() and "factor_dim.md" not in text
    # --partial keeps the unfinished run, and the report says it is partial.
    assert main(["--config", str(_study(tmp_path)), "--partial"]) == 2
    assert main(["--config", str(_study(tmp_path)), "--report", "--partial"]) == 0
    text = (results / "results.md").read_text()
    assert text.startswith("# Study `tiny` (partial)\n\n**A partial report**")
    assert "`beta_vae-s0`: unfinished at step 20 of 40 (in this partial report" in text
    assert "| beta_vae | last | 0.990 (n=1) |" in text


def test_a_finished_runs_record_outlives_its_folder_and_is_not_trained_again(
    tmp_path, capsys, no_ray
):
    """A report keeps each finished run's record beside it (results_dir/runs/<run>); with the
    experiment folder gone, the next report reads the runs from there, and a new experiment
    trains only the runs without a record."""
    import shutil

    from launch.study import _skip_recorded_runs, collect_runs, record_problem

    path = _study(tmp_path)
    configs = {name: load_study(path).trial_config({"run": name}).to_yaml() for name in RUNS}
    for index, name in enumerate(["cascade-s0", "cascade-s1"]):
        trial = tmp_path / "runs" / "tiny" / f"t{index}_run={name}"
        (trial / "train").mkdir(parents=True)
        (trial / "params.json").write_text(f'{{"run": "{name}"}}')
        (trial / "result.json").write_text(json.dumps({"time_total_s": 90.0 * (index + 1)}))
        log = RunLog(trial / "train", configs[name])
        for row in _run("cascade", index, [(40.0, 0.8 - index / 5, 0.9)]).rows:
            log.scalars(int(row["step"]), {k: v for k, v in row.items() if k != "step"})
        log.close()
    unfinished = tmp_path / "runs" / "tiny" / "t2_run=beta_vae-s0"
    (unfinished / "train").mkdir(parents=True)
    (unfinished / "params.json").write_text('{"run": "beta_vae-s0"}')
    pq.write_table(pa.table({"step": [20.0]}), unfinished / "train/metrics.parquet")
    assert main(["--config", str(path), "--report"]) == 0
    first = (tmp_path / "results" / "results.md").read_text()
    kept = tmp_path / "results" / "runs"
    assert sorted(p.name for p in kept.iterdir()) == ["cascade-s0", "cascade-s1"]
    assert (kept / "cascade-s1" / "config.yaml").read_text() == configs["cascade-s1"]
    record = json.loads((kept / "cascade-s1" / "run.json").read_text())
    assert record == {
        "run": "cascade-s1",
        "model": "cascade",
        "seed": 1,
        "line": "`cascade-s1`: 70 steps, 3.0 min wall time",
    }
    table = pq.read_table(kept / "cascade-s1" / "metrics.parquet").to_pylist()
    evaluations = [row["eval/authors_factorvae"] for row in table if row["eval/authors_factorvae"]]
    assert evaluations == [pytest.approx(0.6)]

    shutil.rmtree(tmp_path / "runs")  # the machine with the experiment folder is gone
    assert main(["--config", str(path), "--report"]) == 0
    second = (tmp_path / "results" / "results.md").read_text()
    table_of = lambda text: text.split("| model |")[1].split("\n\n")[0]  # noqa: E731
    assert table_of(second) == table_of(first)
    assert "| cascade | last | 0.700 ± 0.141 (n=2) |" in second
    runs = second.split("## Runs\n\n")[1].splitlines()[:3]
    assert runs[0].startswith("- `cascade-s0`: 70 steps, 1.5 min wall time (read from its record")
    assert runs[1].startswith("- `cascade-s1`: 70 steps, 3.0 min wall time (read from its record")
    assert runs[2] == "- `beta_vae-s0`: no results yet"

    study = load_study(path)
    assert _skip_recorded_runs(study) is True
    assert study.trained_runs() == ["beta_vae-s0"] and study.num_trials() == 1
    assert len(study.runs) == 3  # the report and the experiment's record hold every run
    assert "cascade-s0: finished, its record is in" in capsys.readouterr().out
    # With every run recorded, the study command writes the report and starts nothing.
    shutil.copytree(kept / "cascade-s0", kept / "beta_vae-s0")
    (kept / "beta_vae-s0" / "config.yaml").write_text(configs["beta_vae-s0"])
    capsys.readouterr()
    assert main(["--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "every run has a finished record; report only" in out and "wrote " in out

    # A record stands only for the run the file now defines: other trained-state settings or
    # fewer steps, and the run has no results and is trained again.
    changed = _study(tmp_path, set={"solver.lam": 0.5})
    study = load_study(changed)
    assert _skip_recorded_runs(study) is True and study.trained_runs() == RUNS
    records, lines = collect_runs(study)
    assert records == [] and lines[0] == (
        "`cascade-s0`: no results yet (its record is not used: trained with other settings "
        "(solver.lam: the run has 0.001, this command 0.5))"
    )
    longer = load_study(_study(tmp_path, set={"train.num_steps": 80}))
    assert record_problem(longer, "cascade-s0") == "it ends at step 70 of 80"


def _write_record(study, name: str) -> None:
    """A finished record of run `name` under the study's results_dir/runs/."""
    config = study.trial_config({"run": name})
    kept = Path(study.results_dir) / "runs" / name
    kept.mkdir(parents=True)
    pq.write_table(pa.table({"step": [float(config.train.num_steps)]}), kept / "metrics.parquet")
    (kept / "config.yaml").write_text(config.to_yaml())
    (kept / "run.json").write_text(json.dumps({"run": name}))


def test_a_resumed_study_names_the_runs_its_experiment_trains(tmp_path, capsys):
    """Tune restores the grid an experiment started with, so a resume names that grid, not
    every run of the file: the list in the experiment's record, or, for a record without one,
    the runs with a trial folder there and those without a finished record."""
    from launch.study import _resumed_runs, _skip_recorded_runs, experiment_dir
    from launch.tune import TRAINED_RUNS, experiment_problems, write_experiment_record

    path = _study(tmp_path)
    study = load_study(path)
    _write_record(study, "cascade-s0")  # finished before this experiment started
    assert _skip_recorded_runs(study) is True
    folder = experiment_dir(study)
    write_experiment_record(study, folder)
    (folder / "tuner.pkl").write_bytes(b"")
    record = json.loads((folder / "cascadevae_experiment.json").read_text())
    assert record[TRAINED_RUNS] == ["cascade-s1", "beta_vae-s0"]
    # cascade-s1 finishes in this experiment, and a report keeps its record.
    (folder / "t0_run=cascade-s1").mkdir()
    (folder / "t0_run=cascade-s1" / "params.json").write_text('{"run": "cascade-s1"}')
    _write_record(study, "cascade-s1")

    resumed = load_study(path)
    _resumed_runs(resumed, folder)
    assert resumed.trained_runs() == ["cascade-s1", "beta_vae-s0"]
    assert experiment_problems(resumed, folder) == []

    del record[TRAINED_RUNS]  # a record written before it listed the grid
    (folder / "cascadevae_experiment.json").write_text(json.dumps(record))
    older = load_study(path)
    _resumed_runs(older, folder)
    assert older.trained_runs() == ["cascade-s1", "beta_vae-s0"]
    assert experiment_problems(older, folder) == []
    # A run added to the file is still refused: a study's runs are fixed when it starts.
    grown = load_study(_study(tmp_path, models={"cascade": {"seeds": [0, 1, 2]}}))
    assert any("runs.cascade-s2: not a run" in p for p in experiment_problems(grown, folder))


def test_storage_path_flag_reads_the_study_from_another_folder(tmp_path):
    """--storage-path replaces the file's storage_path: the report reads the runs there."""
    elsewhere = tmp_path / "outside"
    trial = elsewhere / "tiny" / "t0_run=cascade-s0"
    (trial / "train").mkdir(parents=True)
    (trial / "params.json").write_text('{"run": "cascade-s0"}')
    log = RunLog(trial / "train", "name: tiny\n")
    for row in _run("cascade", 0, [(40.0, 0.8, 0.9)]).rows:
        log.scalars(int(row["step"]), {k: v for k, v in row.items() if k != "step"})
    log.close()
    path = _study(tmp_path)
    with pytest.raises(SystemExit, match="no run results under .*/runs/tiny"):
        main(["--config", str(path), "--report"])
    assert main(["--config", str(path), "--report", "--storage-path", str(elsewhere)]) == 0
    text = (tmp_path / "results" / "results.md").read_text()
    assert "`cascade-s0`: 70 steps" in text and "| cascade | last |" in text
    assert f"--config {path} --storage-path {elsewhere}`." in text


def _table_row(step: float, shape_in_z1: float) -> dict[str, float]:
    """An evaluation row with a factor x dim table of 2 dims and the code, and the counts."""
    row = {"step": step, "eval/authors_factorvae": 1.0 - step / 100, "loss/total": 1.0}
    row |= {f"mi/{f}/z0": 0.0 for f in ("shape", "scale", "orientation", "posX", "posY")}
    row |= {f"mi/{f}/z1": 0.0 for f in ("scale", "orientation", "posX", "posY")}
    row |= {f"mi/{f}/code": 0.0 for f in ("scale", "orientation", "posX", "posY")}
    row |= {"mi/shape/z1": shape_in_z1, "mi/shape/code": 1.0 - shape_in_z1, "mi/posX/z0": 0.9}
    row |= {"kl/z0": 2.5, "kl/z1": 0.01, "beta/z0": 0.1, "beta/z1": 10.0}
    shapes = ("square", "ellipse", "heart")
    row |= {
        f"confusion/code{k}/{s}": float(step if k == i else 0)
        for k in range(3)
        for i, s in enumerate(shapes)
    }
    return row


def test_report_writes_the_factor_dim_tables_at_the_discrete_start_and_the_end(tmp_path):
    """The debug schedule starts the discrete stage at step 20 (5-step stages, stage 4): seed 0
    evaluated there, seed 1 at 15 and 25 (the earlier is taken) besides the last step 40."""
    path = _study(tmp_path, set={"train.eval_at_discrete_start": True})
    study = load_study(path)
    evaluations = {"cascade-s0": [20.0, 40.0], "cascade-s1": [15.0, 25.0, 40.0]}
    for index, (name, steps) in enumerate(evaluations.items()):
        trial = tmp_path / "runs" / "tiny" / f"t{index}_run={name}"
        (trial / "train").mkdir(parents=True)
        (trial / "params.json").write_text(f'{{"run": "{name}"}}')
        log = RunLog(trial / "train", "name: tiny\n")
        rows = [{"step": 10.0, "loss/total": 1.0}] + [_table_row(s, s / 100) for s in steps]
        for row in sorted(rows, key=lambda r: r["step"]):
            log.scalars(int(row["step"]), {k: v for k, v in row.items() if k != "step"})
        log.close()
    assert main(["--config", str(path), "--report"]) == 0
    results = Path(study.results_dir)
    summary = (results / "results.md").read_text()
    assert "[factor x dim tables](factor_dim.md)" in summary
    # Step 20, the discrete start, is off the cadence (eval_every 0: the end only): diagnostic,
    # never the best though it scores higher; seed 1's step 15 counts (an ordinary row here).
    assert "| cascade | best | 0.725 ± 0.177 (n=2) | — |" in summary
    text = (results / "factor_dim.md").read_text()
    sections = [line for line in text.splitlines() if line.startswith("#")]
    start = "the discrete stage starts at step 20"
    assert sections == [
        "# Factor x dim tables",
        "## `cascade-s0`",
        f"### At the discrete start (step 20; {start})",
        "### At the end (step 40)",
        "## `cascade-s1`",
        f"### At the discrete start (step 15; {start})",
        "### At the end (step 40)",
    ]
    s0_start = text.split("## `cascade-s0`")[1].split("### At the end")[0]
    assert "| | z0<br>KL 2.5<br>beta 0.1 | z1<br>KL 0.01<br>beta 10 | code |" in s0_start
    assert "| shape | 0.00 | 0.20 | 0.80 |" in s0_start
    assert "| posX | 0.90 | 0.00 | 0.00 |" in s0_start
    assert "| code1 | 0 | 20 | 0 |" in s0_start
    s1_start = text.split("## `cascade-s1`")[1].split("### At the end")[0]
    assert "| shape | 0.00 | 0.15 | 0.85 |" in s1_start and "| code2 | 0 | 0 | 15 |" in s1_start
    pngs = sorted(p.name for p in (results / "factor_dim").iterdir())
    assert pngs == sorted(
        f"cascade-s{seed}-step{step}-{kind}.png"
        for seed, steps in ((0, (20, 40)), (1, (15, 40)))
        for step in steps
        for kind in ("mi", "codes")
    )
    for png in pngs:
        assert f"](factor_dim/{png})" in text
        assert (results / "factor_dim" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_tiny_study_end_to_end(ray_session, tmp_path, capsys):
    """Two models of the debug config through Tune and Ray Train, then the report. The oracle
    trains with the true shapes as codes, so its training-code agreement is exactly 1."""
    study = _study(
        tmp_path,
        set={"train.num_steps": 30, "train.eval_every": 30},
        models={
            "cascade": {"seeds": [0]},
            "oracle": {"seeds": [3], "set": {"model.variant": "oracle"}},
        },
        curve_metrics=["codes/shape_agreement"],
        max_concurrent_trials=2,
    )
    assert main(["--config", str(study)]) == 0
    out = capsys.readouterr().out
    assert "study 'tiny' finished" in out and "0 failed" in out
    results = tmp_path / "results"
    text = (results / "results.md").read_text()
    assert "| cascade | last |" in text and "| oracle | last |" in text
    assert "`oracle-s3`: 30 steps" in text
    oracle_table = next((tmp_path / "runs" / "tiny").glob("*run=oracle-s3/train/metrics.parquet"))
    rows = read_metrics(oracle_table.parent).to_pylist()
    agreement = [r["codes/shape_agreement"] for r in rows if r.get("codes/shape_agreement")]
    assert agreement and all(a == 1.0 for a in agreement)


def test_the_wall_time_of_a_resumed_run_is_labelled_as_its_last_start(tmp_path):
    from launch.study import _wall_time

    trial = tmp_path / "t00000"
    (trial / "train").mkdir(parents=True)
    (trial / "result.json").write_text(json.dumps({"time_total_s": 600.0}) + "\n")
    attempt = {"rank": 0, "start_step": 0, "time": 1.0}
    lines = [attempt, {**attempt, "rank": 1}]
    (trial / "train" / "attempts.jsonl").write_text("".join(json.dumps(a) + "\n" for a in lines))
    assert _wall_time(trial) == ", 10.0 min wall time"
    lines += [{"event": "config_change", "rank": None, "step": 20}, {**attempt, "start_step": 20}]
    (trial / "train" / "attempts.jsonl").write_text("".join(json.dumps(a) + "\n" for a in lines))
    assert _wall_time(trial) == (
        ", 10.0 min wall time since its last start (from step 20; started 2 times)"
    )


STUDIES = sorted((Path(__file__).resolve().parents[1] / "configs" / "studies").glob("*.yaml"))


@pytest.mark.parametrize("study_file", STUDIES, ids=[p.stem for p in STUDIES])
def test_the_run_records_of_every_shipped_study_are_not_ignored_by_git(study_file):
    """A record that git ignores is never committed, and is lost with the machine. Asked of
    .gitignore itself (`--no-index`), so a record already committed does not hide the rule."""
    import subprocess

    from launch.study import RECORD_FILES, archive_dir

    root = study_file.parents[2]
    inside = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "--is-inside-work-tree"], capture_output=True
    )
    if inside.returncode != 0:
        pytest.skip(f"{root} is not a git work tree")
    study = load_study(study_file)
    records = [str(archive_dir(study) / run / name) for run in study.runs for name in RECORD_FILES]
    asked = subprocess.run(
        ["git", "-C", str(root), "check-ignore", "--no-index", "-v", *records],
        capture_output=True,
        text=True,
    )
    assert asked.returncode in (0, 1), f"git check-ignore failed: {asked.stderr}"
    assert asked.returncode == 1, f"git ignores:\n{asked.stdout}"
