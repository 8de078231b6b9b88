"""The golden loss file: a short debug run's per-step losses, stored in the repository.

`run_golden(cache_dir)` runs the debug config (configs/debug.yaml) with OVERRIDES in a Python
process of its own (benchmarks.local_loop: the solver in-process, no Ray), one worker, seed 0,
float32, THREADS torch threads, on kernels that depend as little as they can on the x86 CPU
(REFERENCE_KERNELS), and returns its per-step values of KEYS and the codes' counts.
tests/test_golden.py compares a fresh run with GOLDEN_FILE.

A change that moves these numbers updates the file on purpose, and its commit says why:

    .venv/bin/python -m tests.golden_losses --update
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
DEBUG_CONFIG = ROOT / "configs" / "debug.yaml"
GOLDEN_FILE = Path(__file__).resolve().parent / "golden" / "debug_losses.json"

OVERRIDES = (
    "train.num_steps=8",
    "cascade.stage_length=2",
    "cascade.discrete_start_stage=2",
    "train.autocast=none",
    "train.channels_last=false",
    "train.compile=none",
)
"""8 steps, 2-step stages, the discrete stage (solver codes) from step 4; float32 everywhere
(bf16 kernels differ between CPUs)."""
THREADS = 1
"""torch threads of the golden run."""
KEYS = ("loss/total", "loss/recon", "loss/kl", "loss/weight_penalty", "discrete/active", "lr")
"""Per-step values compared within the test's tolerance (plus the per-step KL of each
continuous latent, `kl/z*`)."""


REFERENCE_KERNELS = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE"}
"""Read when torch loads, hence a process of its own; with oneDNN off as well (`_run_here`):
torch's own kernels without SIMD dispatch, and MKL's GEMM on its CPU-independent code path (the
images are rendered by numpy and Python's math, as in every run). They make the run repeat
exactly on one machine and shrink what differs between CPUs, but do not remove it: on an Intel
Xeon the same run on torch's AVX512 kernels and on its plain ones differs by up to 0.8 %
relative at step 7 (kl/z0); on these kernels the file written there and a run on an AMD EPYC
differ by 2e-7 at step 0 and 4e-3 at step 7 (tests/test_golden.py's tolerance grows with the
step for this reason). A run with MKL held to AVX2 (MKL_ENABLE_INSTRUCTIONS=AVX2) or SSE4.2
agrees exactly with the same machine's plain run."""


def _run_here(cache_dir: Path, overrides: tuple[str, ...]) -> dict:
    """The run in this process (which must have REFERENCE_KERNELS in its environment)."""
    from benchmarks.local_loop import local_loop
    from trainer.config import load_config

    missing = {k: v for k, v in REFERENCE_KERNELS.items() if os.environ.get(k) != v}
    if missing:
        raise RuntimeError(f"the golden run needs {missing} in its environment before torch loads")
    config = load_config(DEBUG_CONFIG, [f"data.cache_dir={cache_dir}", *OVERRIDES, *overrides])
    torch.set_num_threads(THREADS)
    with torch.backends.mkldnn.flags(enabled=False):
        loop, _ = local_loop(config, torch.device("cpu"))
        rows = [dict(loop.step(step)) for step in range(config.train.num_steps)]
    steps = [
        {key: float(v) for key, v in row.items() if key in KEYS or key.startswith("kl/z")}
        for row in rows
    ]
    codes = [
        {key: int(v) for key, v in row.items() if key.startswith("codes/count_")} for row in rows
    ]
    return {
        "seed": config.seed,
        "num_workers": config.train.num_workers,
        "steps": steps,
        "codes": codes,
    }


def run_golden(cache_dir: Path, overrides: tuple[str, ...] = ()) -> dict:
    """The debug run with OVERRIDES (then `overrides`) in a new Python process with
    REFERENCE_KERNELS -> {"steps": [{key: value}], "codes": [{count_k: n}] per step (empty
    before the discrete stage), "seed", "num_workers"}."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "run.json"
        command = [sys.executable, "-m", "tests.golden_losses", "--here", "--out", str(out)]
        command += ["--cache-dir", str(Path(cache_dir).resolve())]
        command += [f"--set={o}" for o in overrides]
        done = subprocess.run(
            command, cwd=ROOT, env={**os.environ, **REFERENCE_KERNELS}, capture_output=True,
            text=True,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(
                f"the golden run exited with status {done.returncode}:\n"
                f"{done.stdout[-1500:]}{done.stderr[-3000:]}"
            )
        return json.loads(out.read_text())


def golden_record(run: dict) -> dict:
    """The file's content: what produced the numbers, then the numbers."""
    return {
        "config": str(DEBUG_CONFIG.relative_to(ROOT)),
        "overrides": list(OVERRIDES),
        "torch_threads": THREADS,
        "kernels": {**REFERENCE_KERNELS, "onednn": "off"},
        "torch_version": torch.__version__,
        **run,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--update", action="store_true", help=f"write the run to {GOLDEN_FILE.name}"
    )
    parser.add_argument(
        "--cache-dir", type=Path, help="the rendered images' cache (default: a temporary one)"
    )
    parser.add_argument("--here", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--set", action="append", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.here:  # the run itself, started by run_golden
        if args.out is None or args.cache_dir is None:
            parser.error("--here needs --out and --cache-dir")
        args.out.write_text(json.dumps(_run_here(args.cache_dir, tuple(args.set))))
        return
    with tempfile.TemporaryDirectory() as cache:
        record = golden_record(run_golden(args.cache_dir or Path(cache)))
    text = json.dumps(record, indent=1) + "\n"
    if args.update:
        GOLDEN_FILE.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN_FILE.write_text(text)
        print(f"wrote {GOLDEN_FILE}")
    else:
        print(text)


if __name__ == "__main__":
    main()
