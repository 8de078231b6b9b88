"""The lock of a run or experiment folder around a command's work (launch.train, launch.tune,
launch.study). Imports no Ray: a refused folder exits 2 before Ray is imported."""

from __future__ import annotations

import sys
from collections.abc import Callable

from trainer.config import ConfigError
from trainer.run_folder import RunFolderBusyError, RunLock


def run_locked(prepare: Callable[[], tuple[RunLock, list[str]]], body: Callable[[], int]) -> int:
    """`prepare()` checks a run or experiment folder and takes its lock, returning (lock, lines
    to print); then `body()` runs with the lock held and gives the exit status. A refused
    folder (ConfigError, RunFolderBusyError) prints its message and exits 2."""
    try:
        lock, lines = prepare()
    except (ConfigError, RunFolderBusyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for line in lines:
        print(f"[cascadevae] {line}", file=sys.stderr, flush=True)
    try:
        return body()
    finally:
        lock.release()
