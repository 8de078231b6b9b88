"""Exceptions that cross process boundaries intact.

An exception raised in a Ray worker or actor reaches the driver pickled. Python pickles an
exception as `cls(*self.args)`, which fails or loses its fields when `__init__` takes other
arguments than the message (`NonFiniteLossError(step, metrics)`). `PicklableError` pickles the
message and the instance's fields instead, so the driver receives the same exception.
"""

from __future__ import annotations

from typing import Any


def _rebuild(cls: type[BaseException], args: tuple, state: dict[str, Any]) -> BaseException:
    error = cls.__new__(cls)
    BaseException.__init__(error, *args)
    error.__dict__.update(state)
    return error


class PicklableError(BaseException):
    """Mixin (list it first among the bases): pickles as (class, args, fields), not
    `cls(*args)`."""

    def __reduce__(self):
        return (_rebuild, (type(self), self.args, dict(self.__dict__)))


PROJECT_PACKAGES = ("trainer.", "solver.", "launch.")


def is_project_error(error: BaseException) -> bool:
    return type(error).__module__.startswith(PROJECT_PACKAGES)


def project_cause(error: BaseException, _seen: set[int] | None = None) -> BaseException | None:
    """The first exception of this project inside `error` (itself, or what Ray wrapped: a Train
    worker group's per-rank failures, a controller failure, a task error's cause, chained
    causes); None when there is none."""
    seen = _seen if _seen is not None else set()
    if error is None or id(error) in seen:
        return None
    seen.add(id(error))
    if is_project_error(error):
        return error
    inner: list[Any] = []
    failures = getattr(error, "worker_failures", None)
    if isinstance(failures, dict):
        inner += [failures[rank] for rank in sorted(failures)]
    for name in ("_base_exc", "controller_failure", "cause"):
        inner.append(getattr(error, name, None))
    inner += [error.__cause__, error.__context__]
    for candidate in inner:
        if isinstance(candidate, BaseException):
            found = project_cause(candidate, seen)
            if found is not None:
                return found
    return None
