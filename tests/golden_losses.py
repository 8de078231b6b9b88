"""The golden loss file: a short debug run's per-step losses, stored in the repository.

`run_golden(cache_dir)` runs the debug config (configs/debug.yaml) with OVERRIDES in this
process (benchmarks.local_loop: the solver in-process, no Ray), one worker, seed 0, float32,
THREADS torch threads, and returns its per-step values of KEYS and the codes' counts.
tests/test_golden.py compares a fresh run with GOLDEN_FILE.

A change that moves these numbers updates the file on purpose, and its commit says why:

    .venv/bin/python -m tests.golden_losses --update
"""

from __future__ import annotations

import argparse
import json
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


def run_golden(cache_dir: Path, overrides: tuple[str, ...] = ()) -> dict:
    """The debug run with OVERRIDES (then `overrides`) -> {"steps": [{key: value}],
    "codes": [{count_k: n}] per step (empty before the discrete stage), "seed", "num_workers"}."""
    from benchmarks.local_loop import local_loop
    from trainer.config import load_config

    config = load_config(DEBUG_CONFIG, [f"data.cache_dir={cache_dir}", *OVERRIDES, *overrides])
    previous = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        loop, _ = local_loop(config, torch.device("cpu"))
        rows = [dict(loop.step(step)) for step in range(config.train.num_steps)]
    finally:
        torch.set_num_threads(previous)
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


def golden_record(run: dict) -> dict:
    """The file's content: what produced the numbers, then the numbers."""
    return {
        "config": str(DEBUG_CONFIG.relative_to(ROOT)),
        "overrides": list(OVERRIDES),
        "torch_threads": THREADS,
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
    args = parser.parse_args()
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
