"""The run folder as a record: resume checks, the config history, the one-writer lock, the
checks of storage before any work, and checkpoint folders that are whole or absent. No Ray.

A run folder (`<train.storage_path>/<run name>`) holds the run's `config.yaml`, checkpoints,
metrics and TensorBoard events. Running a command again on the same folder resumes the run, so
the folder is only truthful if:

- the config of a resume trains the same state (`check_resume`): fields that change the trained
  state (`state_fields`) must equal the run's own; the other fields may change (more steps,
  evaluation, logging and checkpoint cadence, ...), and each accepted change is appended to
  `config_history.jsonl` and `attempts.jsonl` with the step it took effect (`record_changes`);
- one command writes it at a time (`RunLock`: an flock held for the whole run);
- a checkpoint folder appears only complete (`upload_checkpoint`: copy, fsync, rename), and a
  partial one left by an older copy is found and removed (`remove_partial_checkpoints`).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from trainer.checkpoint import META_FILE, STATE_FILE, read_newest_intact
from trainer.config import Config, ConfigError
from trainer.observe.run_log import ATTEMPTS
from trainer.variants.registry import variant_of

CONFIG_FILE = "config.yaml"
HISTORY_FILE = "config_history.jsonl"
"""One line per accepted config change of a resume: time, step, {field: {old, new}}."""
LOCK_FILE = ".lock"
"""Holds the running command's pid, host and start time while it holds the flock."""
CHECKPOINT_PREFIX = "checkpoint_"
PARTIAL_PREFIX = ".partial-"
"""A checkpoint folder being copied: hidden from `checkpoint_*` globs until it is complete."""

RUN_SECTIONS = ("train", "eval")
"""Sections that say how a run is driven and evaluated; every OTHER section (data, model,
cascade, solver, optim and each variant's own: jointvae, factorvae, ...) defines the trained
state, with the exceptions in NOT_STATE."""
NOT_STATE = frozenset(
    {
        "data.cache_dir",
        "solver.timeout_s",
        "solver.actor_name",
        "solver.placement",
        "solver.transport",
    }
)
"""Fields of the state sections that only say where, how or how long: the same data, the same
solve (the transport and the actor's node move the same codes, not what they are)."""
TRAIN_STATE_FIELDS = frozenset(
    {
        "seed",
        "train.global_batch",  # the batch of every step
        "train.num_workers",  # data shards and noise are functions of (seed, step, rank)
        "train.use_gpu",  # another device: other numerics
        "train.autocast",  # bfloat16 networks: other numerics
        "train.compile",  # compiled kernels: other rounding
        "train.channels_last",  # other convolution kernels: other rounding
    }
)
"""Fields outside the state sections that change the trained state."""


def state_fields(config: Config) -> set[str]:
    """The dotted fields of `config` that a resume must not change: every field of the model,
    data, cascade, solver, optimiser and variant sections (but NOT_STATE), the seed, the batch,
    the worker count, the device and the numerics switches; and `train.num_steps` where the
    schedule depends on it (JointVAE's capacity ramp with `jointvae.capacity_steps: 0`)."""
    fields = {
        key
        for key in config.flat()
        if "." in key and key.split(".")[0] not in RUN_SECTIONS and key not in NOT_STATE
    }
    fields |= TRAIN_STATE_FIELDS
    if variant_of(config).schedule_follows_num_steps(config):
        fields.add("train.num_steps")
    return fields


@dataclass(frozen=True)
class Change:
    field: str
    old: Any
    new: Any

    def line(self) -> str:
        return f"{self.field}: the run has {self.old!r}, this command {self.new!r}"


def _flat(raw: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            out.update({f"{key}.{sub}": v for sub, v in value.items()})
        else:
            out[key] = value
    return out


def read_run_config(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The run folder's config.yaml (or, where it has none, its newest checkpoint's) as a flat
    {dotted field: value}, normalised through the schema where it validates (fields added to
    the schema later take their defaults); None when the folder has neither."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        path = next(
            (f / CONFIG_FILE for f in checkpoint_folders(run_dir) if (f / CONFIG_FILE).is_file()),
            path,
        )
    if not path.is_file():
        return None
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError([f"{path}: not valid YAML: {err}"], str(path)) from err
    if not isinstance(raw, dict):
        raise ConfigError([f"{path}: expected a mapping, got {raw!r}"], str(path))
    try:
        return _flat(Config.from_dict(raw, source=str(path)).to_dict())
    except ConfigError:
        return _flat(raw)


def config_changes(old: dict[str, Any], config: Config) -> tuple[list[Change], list[Change]]:
    """(refused, accepted) changes from the run's flat config `old` to `config`."""
    new = _flat(config.to_dict())
    protected = state_fields(config)
    refused: list[Change] = []
    accepted: list[Change] = []
    for key in sorted(old.keys() | new.keys()):
        before, after = old.get(key), new.get(key)
        if before == after:
            continue
        (refused if key in protected else accepted).append(Change(key, before, after))
    return refused, accepted


class ResumeConfigError(ConfigError):
    """A command whose config differs from its run folder's in fields that change the trained
    state; `problems` names each field with both values."""

    def __init__(self, run_dir: str, refused: list[Change], run_name: str):
        self.run_dir, self.refused, self.run_name = run_dir, list(refused), run_name
        super().__init__([c.line() for c in self.refused], f"{run_dir}/{CONFIG_FILE}")
        self.args = (
            f"run folder {run_dir} holds a run with another config; resuming it with this "
            f"command would mix two runs. {len(self.refused)} field(s) that change the trained "
            "state differ:\n"
            + "\n".join(f"  - {c.line()}" for c in self.refused)
            + "\nTo train with the new settings, start a new run in its own folder: add "
            f"--set train.run_name=<a new name> (e.g. {run_name}_2). To resume this run, use "
            "its own values (its config.yaml).",
        )

    def __str__(self) -> str:
        return self.args[0]

    def __reduce__(self):
        return (self.__class__, (self.run_dir, self.refused, self.run_name))


def checkpoint_folders(run_dir: str | os.PathLike) -> list[Path]:
    """The run's `checkpoint_*` folders, newest first (Ray Train names them by time)."""
    folders = [p for p in Path(run_dir).glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir()]
    return sorted(folders, reverse=True)


def newest_intact(run_dir: str | os.PathLike) -> tuple[Path | None, int, list[str]]:
    """(newest intact checkpoint folder or None, its next step (0 when None), one line per newer
    folder skipped: which and why). Reads and verifies state.pt files."""
    found, skipped = read_newest_intact(checkpoint_folders(run_dir))
    if found is None:
        return None, 0, skipped
    payload, folder = found
    return folder, int(payload["next_step"]), skipped


def check_resume(run_dir: str | os.PathLike, config: Config) -> list[Change]:
    """The accepted changes of resuming `run_dir` with `config` ([] for a new folder or the same
    config); raises ResumeConfigError naming every field that would change the trained state."""
    old = read_run_config(run_dir)
    if old is None:
        return []
    refused, accepted = config_changes(old, config)
    if refused:
        raise ResumeConfigError(str(run_dir), refused, config.run_name)
    return accepted


def record_changes(run_dir: str | os.PathLike, changes: list[Change], step: int) -> dict:
    """Append the accepted `changes`, effective from `step`, to config_history.jsonl and
    attempts.jsonl (a line with `rank: null`: the driver). Returns the record."""
    record = {
        "time": time.time(),
        "step": step,
        "changes": {c.field: {"old": c.old, "new": c.new} for c in changes},
    }
    run_dir = Path(run_dir)
    with open(run_dir / HISTORY_FILE, "a", encoding="utf-8") as out:
        out.write(json.dumps(record, sort_keys=True) + "\n")
    attempt = {
        "event": "config_change",
        "rank": None,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        **record,
    }
    with open(run_dir / ATTEMPTS, "a", encoding="utf-8") as out:
        out.write(json.dumps(attempt, sort_keys=True) + "\n")
    return record


def read_history(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(run_dir) / HISTORY_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def prepare_run_folder(run_dir: str | os.PathLike, config: Config, header: str = "") -> list[str]:
    """Check a (re)start of `run_dir` with `config`, record accepted changes, then write
    config.yaml (`header`, YAML comment lines, first). Returns lines for the user. Raises
    ResumeConfigError before writing anything."""
    run_dir = Path(run_dir)
    changes = check_resume(run_dir, config)
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = [f"removed partial checkpoint folder {p}" for p in remove_partial_checkpoints(run_dir)]
    if changes:
        _, step, _ = newest_intact(run_dir)
        record_changes(run_dir, changes, step)
        lines.append(
            f"config changes recorded in {run_dir / HISTORY_FILE} (from step {step}): "
            + "; ".join(f"{c.field} {c.old!r} -> {c.new!r}" for c in changes)
        )
    (run_dir / CONFIG_FILE).write_text(header + config.to_yaml())
    return lines


# --------------------------------------------------------------------------- one writer
class RunFolderBusyError(RuntimeError):
    """Another live command holds the run folder's lock; the message names it."""

    def __init__(self, folder: str, holder: dict[str, Any]):
        self.folder, self.holder = folder, dict(holder)
        super().__init__(
            f"{folder} is in use by another command ({describe_holder(holder)}); one command "
            "writes a run folder at a time. Wait for it to end, stop it, or choose another "
            "train.run_name."
        )

    def __reduce__(self):
        return (self.__class__, (self.folder, self.holder))


def describe_holder(holder: dict[str, Any]) -> str:
    started = holder.get("started")
    when = (
        time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started))
        if isinstance(started, (int, float))
        else "?"
    )
    return (
        f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, started {when}: "
        f"{holder.get('command', '?')}"
    )


class RunLock:
    """An exclusive flock on `<folder>/.lock`, held by this process until `release` (or its
    death: the kernel drops the lock of a dead process). The file names the holder.
    `taken_over`: the holder record found in the file when it was left by a process that is
    gone (None when the file was empty)."""

    def __init__(self, folder: str | os.PathLike, command: str = ""):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / LOCK_FILE
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(self._fd)
            os.close(self._fd)
            self._fd = None
            raise RunFolderBusyError(str(self.folder), holder) from None
        self.taken_over = _read_holder(self._fd) or None
        self.holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.time(),
            "command": command,
        }
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, json.dumps(self.holder).encode(), 0)
        os.fsync(self._fd)

    def message(self) -> str | None:
        """What to tell the user about a taken-over stale lock, or None."""
        if not self.taken_over:
            return None
        return (
            f"took over the lock of {self.folder} left by a command that is no longer running "
            f"({describe_holder(self.taken_over)})"
        )

    def release(self) -> None:
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)  # an empty file: nobody holds it (the file itself stays)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> dict[str, Any]:
    data = os.pread(fd, 65536, 0)
    if not data.strip():
        return {}
    try:
        holder = json.loads(data)
    except ValueError:
        return {"command": f"unreadable lock file ({data[:80]!r})"}
    return holder if isinstance(holder, dict) else {}


# --------------------------------------------------------------------------- storage checks
def writable_problem(path: str | os.PathLike, field: str) -> str | None:
    """None when a file can be created in folder `path` (created when missing); otherwise one
    line naming the field, the path and the OS error."""
    folder = Path(path).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-probe-{os.getpid()}"
        with open(probe, "wb") as f:
            f.write(b"0")
        probe.unlink()
    except OSError as err:
        reason = err.strerror or str(err)
        where = f" ({err.filename})" if err.filename and str(err.filename) != str(folder) else ""
        return f"{field}: cannot write to {folder}: {reason}{where}"
    return None


def cache_folder(config: Config) -> Path:
    from trainer.data.dsprites import default_cache_dir

    if config.data.cache_dir:
        return Path(config.data.cache_dir).expanduser()
    return default_cache_dir()


def storage_problems(config: Config, storage: str | os.PathLike) -> list[str]:
    """The run's storage folder and data cache folder must be writable (one line each if not)."""
    problems = [writable_problem(storage, "train.storage_path")]
    field = "data.cache_dir" if config.data.cache_dir else "data.cache_dir (default)"
    problems.append(writable_problem(cache_folder(config), field))
    return [p for p in problems if p]


def checkpoint_bytes(config: Config) -> int:
    """Estimated size of one checkpoint: float32 weights plus Adam's two moments, and 64 KiB
    for the rest (schedule, RNG states, config)."""
    from trainer.build import build_model

    num_params = sum(p.numel() for p in build_model(config).parameters())
    return 3 * 4 * num_params + 65536


def space_warning(config: Config, storage: str | os.PathLike) -> str | None:
    """A warning when the free space of `storage` is below what the kept checkpoints need:
    (num_checkpoints_kept + 1: the latest is kept besides them while a new one is written)
    x the estimated checkpoint size."""
    need = (config.train.num_checkpoints_kept + 1) * checkpoint_bytes(config)
    free = shutil.disk_usage(Path(storage).expanduser()).free
    if free >= need:
        return None
    return (
        f"warning: {storage} has {_mb(free)} free; the kept checkpoints need about {_mb(need)} "
        f"({config.train.num_checkpoints_kept} kept + 1 being written, "
        f"~{_mb(checkpoint_bytes(config))} each)"
    )


def _mb(num_bytes: float) -> str:
    return f"{num_bytes / 2**20:.1f} MiB"


# --------------------------------------------------------------------------- checkpoints
class DiskFullError(OSError):
    """A checkpoint could not be written for lack of space: which path, how many bytes it
    needed and the last intact checkpoint of the run (the one a resume starts from)."""

    def __init__(self, path: str, needed: int, free: int, last_intact: str):
        self.path, self.needed, self.free, self.last_intact = path, needed, free, last_intact
        super().__init__(
            errno.ENOSPC,
            f"no space left for checkpoint {path}: {needed} bytes needed, {free} free; last "
            f"intact checkpoint: {last_intact}",
        )

    def __str__(self) -> str:
        return str(self.strerror)

    def __reduce__(self):
        return (self.__class__, (self.path, self.needed, self.free, self.last_intact))


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _last_intact_name(run_dir: Path) -> str:
    folder, step, _ = newest_intact(run_dir)
    return f"{folder} (step {step})" if folder is not None else "none"


def upload_checkpoint(source: str | os.PathLike, run_dir: str | os.PathLike, name: str) -> Path:
    """Copy the checkpoint folder `source` to `<run_dir>/<name>` so that it appears complete or
    not at all: the files go into a hidden `.partial-<name>` folder, each is fsynced, then the
    folder is renamed and the rename fsynced. No space: the partial folder is removed and
    DiskFullError raised (before any byte is written when the free space is known too small)."""
    source, run_dir = Path(source), Path(run_dir)
    final, partial = run_dir / name, run_dir / f"{PARTIAL_PREFIX}{name}"
    needed = _folder_bytes(source)
    free = shutil.disk_usage(run_dir).free
    if free < needed:
        raise DiskFullError(str(final), needed, free, _last_intact_name(run_dir))
    try:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        for file in sorted(source.rglob("*")):
            target = partial / file.relative_to(source)
            if file.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(file, "rb") as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
                dst.flush()
                os.fsync(dst.fileno())
        _fsync_dir(partial)
        os.replace(partial, final)
        _fsync_dir(run_dir)
    except OSError as err:
        shutil.rmtree(partial, ignore_errors=True)
        if err.errno == errno.ENOSPC:
            raise DiskFullError(
                str(final), needed, shutil.disk_usage(run_dir).free, _last_intact_name(run_dir)
            ) from err
        raise
    return final


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"
"""Ray Train's record of the checkpoints it registered, in the run folder."""


def is_partial(folder: Path) -> bool:
    """A checkpoint folder whose copy did not complete: no state.pt, or a state.json whose
    state.pt or config.yaml is missing or whose recorded size differs from state.pt's. (A
    state.pt without state.json is a checkpoint written before checksums were recorded.)"""
    state, meta = folder / STATE_FILE, folder / META_FILE
    if not state.is_file():
        return True
    if not meta.is_file():
        return False
    if not (folder / CONFIG_FILE).is_file():
        return True
    try:
        recorded = json.loads(meta.read_text()).get("bytes")
    except (OSError, ValueError, AttributeError):
        return True
    return recorded != state.stat().st_size


def registered_names(run_dir: Path) -> str:
    """The text of Ray Train's checkpoint snapshot ('' when there is none): a folder named there
    was registered, and a resume may be handed it, so it is never removed (a damaged one is
    named and skipped at the resume instead)."""
    path = run_dir / RAY_SNAPSHOT
    try:
        return path.read_text() if path.is_file() else ""
    except OSError:
        return ""


def remove_partial_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Remove hidden `.partial-*` folders, and `checkpoint_*` folders that Ray Train never
    registered and whose copy did not complete (is_partial); returns the folders removed."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    registered = registered_names(run_dir)
    removed = [p for p in run_dir.glob(f"{PARTIAL_PREFIX}*") if p.is_dir()]
    removed += [
        p for p in checkpoint_folders(run_dir) if p.name not in registered and is_partial(p)
    ]
    for folder in removed:
        shutil.rmtree(folder, ignore_errors=True)
    return sorted(removed)
