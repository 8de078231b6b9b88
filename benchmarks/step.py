"""Benchmark of the single-process train step (the baseline the distributed system is measured
against): images per second with and without the discrete stage, the batched unary matrix
against K decoder passes, and (when trainer/metrics.py is present) metric evaluation time.

All on CPU, after warm-up; every figure is the median of several timed runs. The discrete
chooser is a per-row argmin, so the "discrete" step measures the model's cost only (no solver).
Usage: python -m benchmarks.step [--batch-size 64] [--runs 5] [--steps-per-run 4] [--threads N]
       [--eval-scales 6 --eval-orientations 10 --eval-positions 16] [--skip-metrics]
The last line printed is `SUMMARY images_per_s_plain=.. images_per_s_discrete=..
discrete_cost=.. unary_k_pass_over_batched=.. [metrics_s=..]`.

Shape legend: B batch, M continuous dims, K categories.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable

import torch

from trainer.core.model import CascadeVAE
from trainer.core.schedule import CascadeSchedule, make_optimizer
from trainer.core.step import train_step
from trainer.core.unary import unary_matrix, unary_matrix_k_passes
from trainer.distributed.runtime import keep_freed_memory


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


def median_seconds(
    fns: dict[str, Callable[[], object]], runs: int, reps: int, warmup: int
) -> dict[str, float]:
    """Per name, the median over `runs` of the mean wall time of `reps` calls, after `warmup`
    calls each. The variants take turns run by run, so load from other processes on this
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
    return {name: statistics.median(values) for name, values in times.items()}


def make_step(x_B1HW: torch.Tensor, iteration: int) -> Callable[[], dict[str, float]]:
    """A closure running train_step at `iteration` on its own fresh model and optimiser."""
    schedule = CascadeSchedule()
    torch.manual_seed(0)
    model = CascadeVAE()
    optimizer, scheduler = make_optimizer(model)
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
        )

    return step


def bench_steps(args: argparse.Namespace, x_B1HW: torch.Tensor) -> dict[str, float]:
    first_discrete = CascadeSchedule().stage_length * CascadeSchedule().discrete_start_stage
    steps = {"plain": make_step(x_B1HW, 0), "discrete": make_step(x_B1HW, first_discrete)}
    assert steps["plain"]()["discrete/active"] == 0.0
    assert steps["discrete"]()["discrete/active"] == 1.0
    seconds = median_seconds(steps, args.runs, args.steps_per_run, warmup=2)
    out = {}
    for name, value in seconds.items():
        out[f"step_ms_{name}"] = 1e3 * value
        out[f"images_per_s_{name}"] = x_B1HW.shape[0] / value
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
    x_B1HW = squares(args.batch_size, seed=0)
    results = {**bench_steps(args, x_B1HW), **bench_unary(args, x_B1HW)}
    if not args.skip_metrics:
        results.update(bench_metrics(args))
    results["discrete_cost"] = results["step_ms_discrete"] / results["step_ms_plain"]

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}, "
        f"{os.cpu_count()} CPUs, load average {load_at_start:.2f} at start, "
        f"{os.getloadavg()[0]:.2f} at end (other processes skew absolute times)"
    )
    rows = [
        ("train step, before the discrete stage (ms)", f"{results['step_ms_plain']:.1f}"),
        ("train step, discrete stage (ms)", f"{results['step_ms_discrete']:.1f}"),
        ("images/s, before the discrete stage", f"{results['images_per_s_plain']:.0f}"),
        ("images/s, discrete stage", f"{results['images_per_s_discrete']:.0f}"),
        ("discrete step / plain step", f"{results['discrete_cost']:.2f}"),
        ("unary, one batched pass over B*K rows (ms)", f"{results['unary_ms_batched']:.1f}"),
        ("unary, K passes over B rows (ms)", f"{results['unary_ms_k_passes']:.1f}"),
        ("unary K passes / batched", f"{results['unary_k_pass_over_batched']:.2f}"),
        ("unary max |batched - K passes|", f"{results['unary_max_abs_diff']:.2e}"),
    ]
    if "metrics_s" in results:
        images = int(results["metrics_images"])
        rows.append((f"metric evaluation, {images}-image grid (s)", f"{results['metrics_s']:.2f}"))
    width = max(len(key) for key, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    summary = (
        f"SUMMARY images_per_s_plain={results['images_per_s_plain']:.0f} "
        f"images_per_s_discrete={results['images_per_s_discrete']:.0f} "
        f"discrete_cost={results['discrete_cost']:.2f} "
        f"unary_k_pass_over_batched={results['unary_k_pass_over_batched']:.2f}"
    )
    if "metrics_s" in results:
        summary += f" metrics_s={results['metrics_s']:.2f}"
    print(summary)


if __name__ == "__main__":
    main()
