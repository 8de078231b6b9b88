"""The commands: `python -m launch.train`, `launch.sweep`, `launch.study`, `launch.evaluate`."""

import os

# Ray's driver merges lines that look alike, numbers aside, from different processes into one
# ("[repeated 2x across cluster]"), so the progress of one of two concurrent trials or workers
# disappears from the log. Lines matching this pattern are always printed. Ray reads it when it
# is first imported, which is after this package in every command.
os.environ.setdefault("RAY_DEDUP_LOGS_ALLOW_REGEX", r"\[cascadevae\]")
