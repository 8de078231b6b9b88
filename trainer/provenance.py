"""Which code a run ran: the git revision of the project's repository and whether its work
tree held changes that no commit records.

`read_provenance` runs git twice (`rev-parse HEAD`, `status --porcelain`) and is called once
per run, by the process that starts it; the result travels to the workers as a plain dict. When
the revision cannot be known, for example in a `ray job submit` working directory (uploaded
without `.git`) or on a machine without git, the record says "unknown" and why, instead of
failing the run.
"""

from __future__ import annotations

import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

UNKNOWN = "unknown"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
"""The folder that holds the `trainer` package: the repository root of a source checkout."""
GIT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Provenance:
    """git_revision: the 40-hex commit of HEAD, or "unknown". git_dirty: whether tracked files
    differ from that commit or untracked, not ignored files exist; None when unknown.
    unknown_reason: why the revision is unknown ("" when it is known)."""

    git_revision: str
    git_dirty: bool | None
    unknown_reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The fields as JSON-ready values (state.json, the workers' loop config)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Provenance:
        return cls(raw["git_revision"], raw["git_dirty"], raw.get("unknown_reason", ""))

    def hparams(self) -> dict[str, str]:
        """The TensorBoard hparams: `git.revision` and `git.dirty` ("true", "false", "unknown")."""
        dirty = UNKNOWN if self.git_dirty is None else str(self.git_dirty).lower()
        return {"git.revision": self.git_revision, "git.dirty": dirty}

    def yaml_header(self) -> str:
        """YAML comment lines that open a run's config.yaml: the file stays a config that
        `launch.train --config` reads, and says which code made the run."""
        dirty = UNKNOWN if self.git_dirty is None else str(self.git_dirty).lower()
        lines = [f"# git_revision: {self.git_revision}", f"# git_dirty: {dirty}"]
        if self.unknown_reason:
            lines.append(f"# unknown because: {self.unknown_reason}")
        return "".join(line + "\n" for line in lines)


def read_provenance(root: str | Path = PROJECT_ROOT) -> Provenance:
    """The provenance of the git work tree whose top folder is `root`. "unknown" with the reason
    when git is missing or fails, or when `root` is not the top of a work tree (an uploaded
    copy without `.git`, or a copy inside some other repository)."""
    root = Path(root).resolve()
    try:
        top = _git(root, "rev-parse", "--show-toplevel")
        if Path(top).resolve() != root:
            return _unknown(f"{root} is not the top of a git work tree (git found {top})")
        revision = _git(root, "rev-parse", "HEAD")
        status = _git(root, "status", "--porcelain")
    except FileNotFoundError:
        return _unknown("no git executable on PATH")
    except subprocess.TimeoutExpired:
        return _unknown(f"git did not answer within {GIT_TIMEOUT_S:g} s in {root}")
    except subprocess.CalledProcessError as err:
        message = (err.stderr or "").strip().splitlines()
        detail = message[0] if message else f"exit status {err.returncode}"
        return _unknown(f"git {' '.join(err.cmd[3:])} failed in {root}: {detail}")
    return Provenance(revision, bool(status))


def _git(root: Path, *args: str) -> str:
    """Stdout of `git -C root args`, stripped; raises what subprocess.run raises."""
    done = subprocess.run(
        ["git", "-C", str(root), *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=GIT_TIMEOUT_S,
    )
    return done.stdout.strip()


def _unknown(reason: str) -> Provenance:
    return Provenance(UNKNOWN, None, reason)
