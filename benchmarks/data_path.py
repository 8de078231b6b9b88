"""The device data path against the host one, measured in one run on whatever device is here.

1. Per batch: the host path (trainer.loop.load_batch: gather the packed rows from the memory
   map, np.unpackbits, copy to the device) against the device path (trainer.data.device: index
   the packed tensor on the device and unpack it with torch bit operations). Batches of
   `--batch` random indices, the two paths interleaved call by call; medians in microseconds.
2. Per step: the plain loop (benchmarks.local_loop) with its interval meter
   (trainer.observe.cadence.Hooks, read every `--log-every` steps), metrics read every step
   (train.metrics_on_device=false) against metrics left on the device and read once per
   interval (true), both on the data path of 1.; blocks of `--log-every` steps alternate
   between the two (in both orders), so drifting load on the machine falls on both; medians of
   the blocks' ms per step.

Prints both medians and their ratio per part (host / device: above 1 means the device path is
faster).

    python -m benchmarks.data_path [--batch 64] [--calls 300] [--steps 160] [--log-every 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.local_loop import local_loop
from trainer.config import load_config
from trainer.data.device import DeviceDSprites
from trainer.loop import load_batch
from trainer.observe.cadence import Cadence, Hooks

ROOT = Path(__file__).resolve().parent.parent


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def unpack_us(config, device: torch.device, batch: int, calls: int) -> tuple[float, float]:
    """(host, device) median microseconds per batch."""
    from trainer.build import open_data

    dataset = open_data(config, progress=True)
    on_device = DeviceDSprites(dataset, device)
    rng = np.random.default_rng(0)
    host_us, device_us = [], []
    for _ in range(calls):
        indices = rng.integers(0, len(dataset), batch)
        started = time.perf_counter()
        load_batch(dataset, indices, device)
        _sync(device)
        host_us.append(1e6 * (time.perf_counter() - started))
        started = time.perf_counter()
        on_device.images(torch.from_numpy(indices).to(device))
        _sync(device)
        device_us.append(1e6 * (time.perf_counter() - started))
    return statistics.median(host_us), statistics.median(device_us)


def step_ms(config, device: torch.device, steps: int, log_every: int) -> tuple[float, float]:
    """(metrics read every step, read once per interval) median ms per step over blocks."""
    loops = {}
    for on_device in (False, True):
        arm = config.model_copy(deep=True)
        arm.train.metrics_on_device = on_device
        torch.manual_seed(0)
        loop, _ = local_loop(arm, device)
        hooks = Hooks([], ends=[Cadence(log_every)], num_steps=steps, global_batch=16)
        loops[on_device] = (loop, hooks)
    blocks: dict[bool, list[float]] = {False: [], True: []}
    for block, first in enumerate(range(0, steps, log_every)):
        for on_device in (False, True) if block % 2 == 0 else (True, False):
            loop, hooks = loops[on_device]
            _sync(device)
            started = time.perf_counter()
            for step in range(first, first + log_every):
                hooks.after_step(step, loop.step(step))
            _sync(device)
            blocks[on_device].append(1000.0 * (time.perf_counter() - started) / log_every)
    # The first block of each arm holds the warm-up (allocations, first kernels).
    return statistics.median(blocks[False][1:]), statistics.median(blocks[True][1:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--steps", type=int, default=160)
    parser.add_argument("--log-every", type=int, default=20)
    parser.add_argument("--scales", type=int, default=6)
    parser.add_argument("--orientations", type=int, default=20)
    parser.add_argument("--positions", type=int, default=16)
    args = parser.parse_args(argv)
    if args.steps < 2 * args.log_every or args.steps % args.log_every:
        parser.error("--steps must be a multiple of --log-every, at least two blocks")
    from trainer.runtime import keep_freed_memory

    keep_freed_memory()  # as the Train workers do: activation buffers are reused, not re-faulted
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    config = load_config(
        ROOT / "configs" / "debug.yaml",
        [
            f"data.num_scales={args.scales}",
            f"data.num_orientations={args.orientations}",
            f"data.num_positions={args.positions}",
            f"train.global_batch={args.batch}",
            f"train.num_steps={args.steps}",
            "train.data_on_device=true",
            "model.variant=cascade_c",  # no discrete stage: the solver stays out of the figures
            "eval.protocols=[authors_factorvae]",
        ],
    )
    host_us, device_us = unpack_us(config, device, args.batch, args.calls)
    every_ms, interval_ms = step_ms(config, device, args.steps, args.log_every)
    print(f"device {device}, batch {args.batch}, torch threads {torch.get_num_threads()}")
    print(
        f"unpack per batch: host {host_us:.1f} us, device path {device_us:.1f} us, "
        f"ratio host/device {host_us / device_us:.2f}"
    )
    print(
        f"step: metrics read every step {every_ms:.2f} ms, once per interval of "
        f"{args.log_every} {interval_ms:.2f} ms, ratio {every_ms / interval_ms:.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
