"""Benchmark of the single-process train step (the baseline the distributed system is measured
against): images per second of the float32 step and of the fast CPU path (what
`train.autocast: auto` and `train.channels_last: auto` choose on this machine: bf16 autocast and
channels_last on a CPU with AMX or AVX512-BF16), before and during the discrete stage (which
adds the unary matrix: a decoder pass over B x K rows), with the networks of configs/quick.yaml
(the paper's encoder and decoder); then the batched unary matrix against K decoder passes and
(unless skipped) the metric evaluation time.

All on CPU in one process, after warm-up. The arms take turns run by run (fp32, fast, ...), so
load from other processes hits them alike; each run gives one fast/fp32 ratio per stage, and
the median and range of those paired ratios are printed. The discrete chooser is a per-row
argmin, so the "discrete" step measures the model's cost only (no solver). `--compile` adds an
arm with the fast path's encoder and decoder compiled by torch.compile (Inductor), and prints
its warm-up (compile) time.
Usage: python -m benchmarks.step [--batch-size 64] [--runs 7] [--steps-per-run 4] [--threads N]
       [--compile] [--skip-metrics] [--eval-scales 6 --eval-orientations 10 --eval-positions 16]
The last line printed is `SUMMARY fast=<precision> images_per_s_plain_fp32=..
images_per_s_plain_fast=.. ratio_plain=.. images_per_s_discrete_fp32=..
images_per_s_discrete_fast=.. ratio_discrete=.. unary_k_pass_over_batched=.. [metrics_s=..]`.

Shape legend: B batch, M continuous dims, K categories.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from trainer.build import (
    Precision,
    apply_memory_format,
    build_model,
    build_optimizer,
    build_schedule,
    compile_networks,
    resolve_precision,
)
from trainer.config import Config, load_config
from trainer.core.model import CascadeVAE
from trainer.core.step import train_step
from trainer.core.unary import unary_matrix, unary_matrix_k_passes
from trainer.runtime import keep_freed_memory

ROOT = Path(__file__).resolve().parents[1]

QUICK = ROOT / "configs" / "quick.yaml"
FP32 = Precision(autocast_bf16=False, channels_last=False)


def squares(count: int, seed: int) -> torch.Tensor:
    """(count, 1, 64, 64) binary images of one to three squares: dSprites-like sparsity."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.zeros(count, 1, 64, 64)
    for i in range(count):
        for _ in range(int(torch.randint(1, 4, (), generator=gen))):
            side = int(torch.randint(6, 17, (), generator=gen))
            row, col = torch.randint(0, 64 - side + 1, (2,), generator=gen).tolist()
            images[i, 0, row : row + side, col : col + side] = 1.0
    return images


def timed_runs(
    fns: dict[str, Callable[[], object]], runs: int, reps: int, warmup: int
) -> dict[str, list[float]]:
    """Per name, the mean wall time (s) of `reps` calls in each of `runs` runs, after `warmup`
    calls each. The functions take turns run by run, so load from other processes on this
    shared machine hits them alike and the ratios stay fair."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(reps):
                fn()
            times[name].append((time.perf_counter() - start) / reps)
    return times


def median_seconds(
    fns: dict[str, Callable[[], object]], runs: int, reps: int, warmup: int
) -> dict[str, float]:
    """Per name, the median over `runs` of timed_runs' mean times."""
    times = timed_runs(fns, runs, reps, warmup)
    return {name: statistics.median(values) for name, values in times.items()}


def make_step(
    config: Config,
    x_B1HW: torch.Tensor,
    iteration: int,
    precision: Precision,
    compiled: bool = False,
) -> Callable[[], dict[str, float]]:
    """A closure running train_step at `iteration` on its own fresh model (configs' networks)
    and optimiser, with `precision` as the training loop applies it."""
    torch.manual_seed(0)
    model = build_model(config)
    optimizer, scheduler = build_optimizer(config, model)
    apply_memory_format(model, precision)
    if compiled:
        compile_networks(model, "default")
    if precision.channels_last:
        x_B1HW = x_B1HW.contiguous(memory_format=torch.channels_last)
    schedule = build_schedule(config)
    gen = torch.Generator().manual_seed(0)

    def step() -> dict[str, float]:
        return train_step(
            model,
            optimizer,
            scheduler,
            x_B1HW,
            iteration=iteration,
            schedule=schedule,
            eps_generator=gen,
            choose_codes=lambda unary_BK: unary_BK.argmin(dim=1),
            weight_penalty_coef=config.model.weight_penalty,
            autocast_bf16=precision.autocast_bf16,
        )

    return step


def bench_steps(
    args: argparse.Namespace, config: Config, x_B1HW: torch.Tensor, fast: Precision
) -> dict[str, float]:
    """images/s of every arm in both stages, and the per-run fast/fp32 ratios."""
    cascade = config.cascade
    stages = {"plain": 0, "discrete": cascade.stage_length * cascade.discrete_start_stage}
    arms: dict[str, tuple[Precision, bool]] = {"fp32": (FP32, False), "fast": (fast, False)}
    if args.compile:
        arms["fast_compiled"] = (fast, True)
    steps: dict[str, Callable[[], dict[str, float]]] = {}
    out: dict[str, float] = {}
    for stage, iteration in stages.items():
        for arm, (precision, compiled) in arms.items():
            step = make_step(config, x_B1HW, iteration, precision, compiled)
            started = time.perf_counter()
            metrics = step()  # the first call builds (or compiles) the kernels
            out[f"first_step_s_{stage}_{arm}"] = time.perf_counter() - started
            assert metrics["discrete/active"] == (1.0 if stage == "discrete" else 0.0)
            steps[f"{stage}_{arm}"] = step
    times = timed_runs(steps, args.runs, args.steps_per_run, warmup=2)
    for name, values in times.items():
        out[f"step_ms_{name}"] = 1e3 * statistics.median(values)
        out[f"images_per_s_{name}"] = x_B1HW.shape[0] / statistics.median(values)
    for stage in stages:
        for arm in arms:
            if arm == "fp32":
                continue
            paired = [
                base / other
                for base, other in zip(times[f"{stage}_fp32"], times[f"{stage}_{arm}"], strict=True)
            ]
            suffix = "" if arm == "fast" else f"_{arm}"
            out[f"ratio_{stage}{suffix}"] = statistics.median(paired)
            out[f"ratio_{stage}{suffix}_min"] = min(paired)
            out[f"ratio_{stage}{suffix}_max"] = max(paired)
    return out


def bench_unary(args: argparse.Namespace, x_B1HW: torch.Tensor) -> dict[str, float]:
    torch.manual_seed(0)
    model = CascadeVAE()
    with torch.no_grad():
        mu_BM, sigma_BM = model.encode(x_B1HW)
        z_BM = mu_BM + sigma_BM * torch.randn_like(mu_BM)
    seconds = median_seconds(
        {
            "batched": lambda: unary_matrix(model, z_BM, x_B1HW),
            "k_passes": lambda: unary_matrix_k_passes(model, z_BM, x_B1HW),
        },
        args.runs,
        reps=args.steps_per_run,
        warmup=2,
    )
    max_diff = unary_matrix(model, z_BM, x_B1HW) - unary_matrix_k_passes(model, z_BM, x_B1HW)
    return {
        "unary_ms_batched": 1e3 * seconds["batched"],
        "unary_ms_k_passes": 1e3 * seconds["k_passes"],
        "unary_k_pass_over_batched": seconds["k_passes"] / seconds["batched"],
        "unary_max_abs_diff": float(max_diff.abs().max()),
    }


def bench_metrics(args: argparse.Namespace) -> dict[str, float]:
    """Wall time of one `evaluate_model` call (default protocols) on a small rendered dSprites
    grid with an untrained model; skipped when trainer/metrics.py is absent or incomplete (it
    is written in parallel)."""
    try:
        from trainer.data.dsprites import open_dsprites
        from trainer.eval import evaluate_model
    except (ImportError, AttributeError) as error:
        print(f"metrics skipped: {error}")
        return {}
    with tempfile.TemporaryDirectory(prefix="cascadevae-bench-step-") as cache_dir:
        dataset = open_dsprites(
            num_scales=args.eval_scales,
            num_orientations=args.eval_orientations,
            num_positions=args.eval_positions,
            cache_dir=cache_dir,
        )
        torch.manual_seed(0)
        model = CascadeVAE().eval()
        # One call: it represents tens of thousands of images, so one-off costs are noise.
        start = time.perf_counter()
        evaluate_model(model, dataset, device="cpu", seed=0)
        seconds = time.perf_counter() - start
    return {"metrics_s": seconds, "metrics_images": float(len(dataset))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--runs", type=int, default=7, help="timed runs; the median is reported")
    parser.add_argument("--steps-per-run", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch)")
    parser.add_argument(
        "--compile", action="store_true", help="add the fast path compiled by torch.compile"
    )
    parser.add_argument("--eval-scales", type=int, default=6, help="grid of the metrics timing")
    parser.add_argument("--eval-orientations", type=int, default=10)
    parser.add_argument("--eval-positions", type=int, default=16)
    parser.add_argument("--skip-metrics", action="store_true")
    parser.add_argument(
        "--default-malloc", action="store_true", help="leave glibc malloc at its defaults"
    )
    args = parser.parse_args()
    if not args.default_malloc:
        keep_freed_memory()  # as training and evaluation do (trainer/runtime.py)
    if args.threads:
        torch.set_num_threads(args.threads)

    load_at_start = os.getloadavg()[0]
    config = load_config(QUICK)
    fast = resolve_precision(config.train, torch.device("cpu"))  # what `auto` gives here
    x_B1HW = squares(args.batch_size, seed=0)
    results = {**bench_steps(args, config, x_B1HW, fast), **bench_unary(args, x_B1HW)}
    if not args.skip_metrics:
        results.update(bench_metrics(args))

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}, "
        f"{os.cpu_count()} CPUs, load average {load_at_start:.2f} at start, "
        f"{os.getloadavg()[0]:.2f} at end (other processes skew absolute times)"
    )
    print(f"fast path (auto on this CPU): {fast.describe()}; fp32: {FP32.describe()}")
    arms = ["fp32", "fast", "fast_compiled"] if args.compile else ["fp32", "fast"]
    rows = []
    for stage, title in (("plain", "before the discrete stage"), ("discrete", "discrete stage")):
        for arm in arms:
            rows.append(
                (
                    f"images/s, {title}, {arm}",
                    f"{results[f'images_per_s_{stage}_{arm}']:.0f}"
                    f"  ({results[f'step_ms_{stage}_{arm}']:.1f} ms/step, first step "
                    f"{results[f'first_step_s_{stage}_{arm}']:.1f} s)",
                )
            )
        for arm in arms[1:]:
            suffix = "" if arm == "fast" else f"_{arm}"
            key = f"ratio_{stage}{suffix}"
            rows.append(
                (
                    f"{arm} / fp32, {title} (median, range of {args.runs} paired runs)",
                    f"{results[key]:.2f}  "
                    f"({results[key + '_min']:.2f}-{results[key + '_max']:.2f})",
                )
            )
    rows += [
        ("unary, one batched pass over B*K rows, fp32 (ms)", f"{results['unary_ms_batched']:.1f}"),
        ("unary, K passes over B rows, fp32 (ms)", f"{results['unary_ms_k_passes']:.1f}"),
        ("unary K passes / batched", f"{results['unary_k_pass_over_batched']:.2f}"),
        ("unary max |batched - K passes|", f"{results['unary_max_abs_diff']:.2e}"),
    ]
    if "metrics_s" in results:
        images = int(results["metrics_images"])
        rows.append((f"metric evaluation, {images}-image grid (s)", f"{results['metrics_s']:.2f}"))
    width = max(len(key) for key, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    summary = f"SUMMARY fast={fast.dtype_name},{fast.memory_format_name}"
    for stage in ("plain", "discrete"):
        summary += (
            f" images_per_s_{stage}_fp32={results[f'images_per_s_{stage}_fp32']:.0f}"
            f" images_per_s_{stage}_fast={results[f'images_per_s_{stage}_fast']:.0f}"
            f" ratio_{stage}={results[f'ratio_{stage}']:.2f}"
        )
        if args.compile:
            summary += f" ratio_{stage}_fast_compiled={results[f'ratio_{stage}_fast_compiled']:.2f}"
    summary += f" unary_k_pass_over_batched={results['unary_k_pass_over_batched']:.2f}"
    if "metrics_s" in results:
        summary += f" metrics_s={results['metrics_s']:.2f}"
    print(summary)


if __name__ == "__main__":
    main()
