"""trainer.provenance: the git revision and dirty flag of a work tree, "unknown" with a reason
when there is none, on temporary repositories."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from trainer.checkpoint import TrainState, read_meta, save_checkpoint
from trainer.config import load_config
from trainer.provenance import PROJECT_ROOT, UNKNOWN, Provenance, read_provenance

DEBUG = Path(__file__).resolve().parents[1] / "configs" / "debug.yaml"


def _git(root: Path, *args: str) -> str:
    identity = ["-c", "user.name=test", "-c", "user.email=test@example.com"]
    done = subprocess.run(
        ["git", "-C", str(root), *identity, *args], capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A work tree with one commit of one file."""
    root = tmp_path / "repo"
    root.mkdir()
    _git(root, "init", "-q")
    (root / "code.py").write_text("x = 1\n")
    (root / ".gitignore").write_text("runs/\n")
    _git(root, "add", "code.py", ".gitignore")
    _git(root, "commit", "-q", "-m", "first")
    return root


def test_a_clean_tree_records_its_head_and_not_dirty(repo):
    head = _git(repo, "rev-parse", "HEAD")
    assert len(head) == 40
    assert read_provenance(repo) == Provenance(head, False, "")


@pytest.mark.parametrize("change", ["modified", "untracked", "staged"])
def test_a_changed_tree_is_dirty(repo, change):
    if change == "modified":
        (repo / "code.py").write_text("x = 2\n")
    elif change == "untracked":
        (repo / "new.py").write_text("y = 1\n")
    else:
        (repo / "code.py").write_text("x = 3\n")
        _git(repo, "add", "code.py")
    provenance = read_provenance(repo)
    assert provenance.git_revision == _git(repo, "rev-parse", "HEAD")
    assert provenance.git_dirty is True


def test_ignored_files_leave_the_tree_clean(repo):
    (repo / "runs").mkdir()
    (repo / "runs" / "metrics.parquet").write_text("rows")
    assert read_provenance(repo).git_dirty is False


def test_a_folder_without_git_is_unknown_with_the_reason(tmp_path):
    upload = tmp_path / "working_dir"  # e.g. a `ray job submit` upload: the files, no .git
    upload.mkdir()
    (upload / "code.py").write_text("x = 1\n")
    provenance = read_provenance(upload)
    assert provenance.git_revision == UNKNOWN and provenance.git_dirty is None
    assert str(upload) in provenance.unknown_reason


def test_a_subfolder_of_another_repository_is_unknown(repo):
    inner = repo / "inner"  # e.g. the package copied into some other project's tree
    inner.mkdir()
    provenance = read_provenance(inner)
    assert provenance.git_revision == UNKNOWN and provenance.git_dirty is None
    assert "not the top of a git work tree" in provenance.unknown_reason


def test_a_missing_git_is_unknown_with_the_reason(repo, monkeypatch):
    monkeypatch.setenv("PATH", str(repo / "no-such-bin"))
    provenance = read_provenance(repo)
    assert provenance == Provenance(UNKNOWN, None, "no git executable on PATH")


def test_a_repository_without_commits_is_unknown(tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    _git(root, "init", "-q")
    provenance = read_provenance(root)
    assert provenance.git_revision == UNKNOWN
    assert "rev-parse HEAD failed" in provenance.unknown_reason


def test_the_project_root_is_the_folder_of_the_trainer_package():
    assert (PROJECT_ROOT / "trainer" / "provenance.py").is_file()


@pytest.mark.parametrize(
    "provenance, dirty",
    [(Provenance("a" * 40, True), "true"), (Provenance(UNKNOWN, None, "no .git"), "unknown")],
)
def test_the_records_of_a_run(provenance, dirty, tmp_path):
    assert Provenance.from_dict(provenance.as_dict()) == provenance
    assert provenance.hparams() == {"git.revision": provenance.git_revision, "git.dirty": dirty}
    # config.yaml: comment lines that leave the file a config that reads back unchanged.
    config = load_config(DEBUG)
    text = provenance.yaml_header() + config.to_yaml()
    assert text.startswith(f"# git_revision: {provenance.git_revision}\n# git_dirty: {dirty}\n")
    assert ("# unknown because: no .git\n" in text) == (provenance.git_dirty is None)
    assert yaml.safe_load(text) == config.to_dict()
    # state.json of a checkpoint: the fields beside its checksum.
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    folder = save_checkpoint(
        tmp_path / "ck", TrainState(model, optimizer, scheduler, 3), text, provenance.as_dict()
    )
    meta = read_meta(folder)
    assert meta is not None and meta["next_step"] == 3
    assert {k: meta[k] for k in ("git_revision", "git_dirty", "unknown_reason")} == (
        provenance.as_dict()
    )
