"""The scalars of one train step, held where they were computed until someone reads them.

`StepMetrics` is a mapping of metric name -> float. Its `host` part is plain floats; its device
part is one float32 vector on the step's device with one entry per name, copied to the host in
one transfer the first time a value of it is asked for (`read`). An interval meter that never
asks (trainer.observe.progress.IntervalMeter) sums the vectors on the device instead, so a step
with metrics on the device makes no host read at all.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping

import torch
from torch import Tensor


class StepMetrics(MutableMapping[str, float]):
    """name -> float; `device_names` are the entries of `device_values` (len(names),), which
    stay unread on the device until `read` (or any lookup of one of them)."""

    def __init__(
        self,
        host: dict[str, float] | None = None,
        device_names: tuple[str, ...] = (),
        device_values: Tensor | None = None,
    ):
        if (device_values is None) != (not device_names):
            raise ValueError("device_names and device_values come together")
        if device_values is not None and device_values.shape != (len(device_names),):
            raise ValueError(
                f"device_values must have shape ({len(device_names)},), "
                f"got {tuple(device_values.shape)}"
            )
        self.host: dict[str, float] = dict(host or {})
        self.device_names = device_names
        self.device_values = device_values

    @property
    def pending(self) -> bool:
        """Whether a device part is still unread."""
        return self.device_values is not None

    def read(self) -> StepMetrics:
        """Copy the device part to the host (one transfer); returns self."""
        if self.device_values is not None:
            values = self.device_values.detach().to("cpu", torch.float64).tolist()
            for name, value in zip(self.device_names, values, strict=True):
                self.host.setdefault(name, value)
            self.device_names, self.device_values = (), None
        return self

    def __getitem__(self, key: str) -> float:
        if key not in self.host and key in self.device_names:
            self.read()
        return self.host[key]

    def __setitem__(self, key: str, value: float) -> None:
        if key in self.device_names:
            self.read()
        self.host[key] = value

    def __delitem__(self, key: str) -> None:
        if key in self.device_names:
            self.read()
        del self.host[key]

    def __iter__(self) -> Iterator[str]:
        yield from self.host
        yield from (name for name in self.device_names if name not in self.host)

    def __len__(self) -> int:
        return len(self.host) + sum(1 for name in self.device_names if name not in self.host)

    def __repr__(self) -> str:
        unread = self.device_values
        state = "read" if unread is None else f"{len(self.device_names)} unread on {unread.device}"
        return f"StepMetrics({self.host}, {state})"
