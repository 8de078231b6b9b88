"""Benchmark of the dSprites data layer: build, reopen, memory and delivery rate.

Each phase runs in a fresh Python process so its memory figures are its own:
  build  open_dsprites on an empty cache folder (renders and writes the Arrow cache)
  train  import torch, reopen the cache (no rebuild), then stream random global batches the way
         a training loop does (batch_indices_for_step -> images -> float32 tensor (B, 1, 64, 64))

Memory is read from /proc/self/status: VmRSS (resident now) and VmHWM (peak resident).
Usage: python -m benchmarks.data [--cache-dir DIR] [--positions 32 --orientations 40 ...]
The last line printed is `SUMMARY build_s=.. reopen_s=.. rss_mb=.. images_per_s=..`, where
rss_mb is the training process's peak resident memory (VmHWM) after streaming.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def proc_status_mb() -> dict[str, float]:
    """VmRSS, VmHWM, RssAnon (private heap) and RssFile (mapped file pages) in MB."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(rest.split()[0]) / 1024.0
    return out


def grid_kwargs(args: argparse.Namespace) -> dict:
    return {
        "num_scales": args.scales,
        "num_orientations": args.orientations,
        "num_positions": args.positions,
        "cache_dir": args.cache_dir,
    }


def phase_build(args: argparse.Namespace) -> dict:
    from trainer.data.dsprites import open_dsprites

    t0 = time.perf_counter()
    ds = open_dsprites(**grid_kwargs(args), progress=True)
    build_s = time.perf_counter() - t0
    mem = proc_status_mb()
    return {
        "build_s": build_s,
        "images": len(ds),
        "file_mb": ds.cache_path.stat().st_size / 1e6,
        "mtime_ns": ds.cache_path.stat().st_mtime_ns,
        "build_rss_mb": mem["VmRSS"],
        "build_hwm_mb": mem["VmHWM"],
    }


def phase_train(args: argparse.Namespace) -> dict:
    import torch

    from trainer.data.dsprites import batch_indices_for_step, open_dsprites

    torch.set_num_threads(1)
    base = proc_status_mb()
    t0 = time.perf_counter()
    ds = open_dsprites(**grid_kwargs(args))
    reopen_s = time.perf_counter() - t0
    after_open = proc_status_mb()

    n, total = len(ds), 0.0
    t0 = time.perf_counter()
    for step in range(args.batches):
        idx_B = batch_indices_for_step(
            n, seed=0, step=step, rank=0, world_size=1, global_batch=args.batch_size
        )
        x_B1HW = torch.from_numpy(ds.images(idx_B)).to(torch.float32).unsqueeze(1)
        total += float(x_B1HW.sum())  # consume the batch so nothing is optimised away
    stream_s = time.perf_counter() - t0
    after_stream = proc_status_mb()

    # The packed-byte gather alone, to show how much of a batch's time is the memory map.
    t0 = time.perf_counter()
    for step in range(min(args.batches, 500)):
        idx_B = batch_indices_for_step(
            n, seed=1, step=step, rank=0, world_size=1, global_batch=args.batch_size
        )
        ds._cache.packed(idx_B)
    gather_s = (time.perf_counter() - t0) / min(args.batches, 500)
    return {
        "reopen_s": reopen_s,
        "mtime_ns": ds.cache_path.stat().st_mtime_ns,
        "rss_torch_mb": base["VmRSS"],
        "rss_after_open_mb": after_open["VmRSS"],
        "rss_after_stream_mb": after_stream["VmRSS"],
        "anon_after_stream_mb": after_stream["RssAnon"],
        "file_after_stream_mb": after_stream["RssFile"],
        "hwm_mb": after_stream["VmHWM"],
        "images_per_s": args.batches * args.batch_size / stream_s,
        "ms_per_batch": 1e3 * stream_s / args.batches,
        "gather_ms_per_batch": 1e3 * gather_s,
        "pixel_mean": total / (args.batches * args.batch_size * 64 * 64),
    }


def run_phase(phase: str, argv: list[str]) -> dict:
    """Run one phase in a child process; it prints its result as the last line (JSON)."""
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.data", "--phase", phase, *argv],
        cwd=ROOT,
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", default=None, help="default: a fresh temp folder")
    parser.add_argument("--scales", type=int, default=6)
    parser.add_argument("--orientations", type=int, default=40)
    parser.add_argument("--positions", type=int, default=32)
    parser.add_argument("--batches", type=int, default=3000, help="batches streamed")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--phase", choices=("build", "train"), default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.phase == "build":
        print(json.dumps(phase_build(args)))
        return
    if args.phase == "train":
        print(json.dumps(phase_train(args)))
        return

    tmp = None
    if args.cache_dir is None:
        tmp = tempfile.mkdtemp(prefix="cascadevae-bench-data-")
        args.cache_dir = tmp
    argv = [
        f"--cache-dir={args.cache_dir}",
        f"--scales={args.scales}",
        f"--orientations={args.orientations}",
        f"--positions={args.positions}",
        f"--batches={args.batches}",
        f"--batch-size={args.batch_size}",
    ]
    try:
        build = run_phase("build", argv)
        train = run_phase("train", argv)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    rows = [
        ("images in grid", f"{build['images']}"),
        ("cache file (MB)", f"{build['file_mb']:.1f}"),
        ("build time (s)", f"{build['build_s']:.2f}"),
        ("build process peak RSS (MB)", f"{build['build_hwm_mb']:.0f}"),
        ("reopen time (s)", f"{train['reopen_s']:.3f}"),
        ("reopen rebuilt the file", str(train["mtime_ns"] != build["mtime_ns"])),
        ("RSS after import torch (MB)", f"{train['rss_torch_mb']:.0f}"),
        ("RSS after open (MB)", f"{train['rss_after_open_mb']:.0f}"),
        (
            f"RSS after {args.batches} batches of {args.batch_size} (MB)",
            f"{train['rss_after_stream_mb']:.0f}",
        ),
        ("  of which anonymous (heap) (MB)", f"{train['anon_after_stream_mb']:.0f}"),
        ("  of which file-backed (mapped) (MB)", f"{train['file_after_stream_mb']:.0f}"),
        ("training process peak RSS (MB)", f"{train['hwm_mb']:.0f}"),
        ("ms per batch (indices+images+tensor)", f"{train['ms_per_batch']:.3f}"),
        ("ms per batch (packed gather only)", f"{train['gather_ms_per_batch']:.3f}"),
        ("images per second delivered", f"{train['images_per_s']:.0f}"),
        ("mean pixel value streamed", f"{train['pixel_mean']:.4f}"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    print(
        f"SUMMARY build_s={build['build_s']:.2f} reopen_s={train['reopen_s']:.3f} "
        f"rss_mb={train['hwm_mb']:.0f} images_per_s={train['images_per_s']:.0f}"
    )


if __name__ == "__main__":
    main()
