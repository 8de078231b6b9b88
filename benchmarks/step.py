"""Benchmark of the single-process train step (the baseline the distributed system is measured
against): images per second with and without the discrete stage, the batched unary matrix
against K decoder passes, and (when trainer/metrics.py is present) metric evaluation time.

All on CPU, after warm-up; every figure is the median of several timed runs. The discrete
chooser is a per-row argmin, so the "discrete" step measures the model's cost only (no solver).
Usage: python benchmarks/step.py [--batch-size 64] [--runs 5] [--steps-per-run 4] [--threads N]
       [--eval-scales 6 --eval-orientations 10 --eval-positions 16] [--skip-metrics]
The last line printed is `SUMMARY images_per_s_plain=.. images_per_s_discrete=..
discrete_cost=.. unary_k_pass_over_batched=.. [metrics_s=..]`.

Shape legend: B batch, M continuous dims, K categories.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trainer.model import CascadeVAE  # noqa: E402
from trainer.schedule import CascadeSchedule, make_optimizer  # noqa: E402
from trainer.step import train_step  # noqa: E402
from trainer.unary import unary_matrix, unary_matrix_k_passes  # noqa: E402


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


def median_seconds(fn: Callable[[], object], runs: int, reps: int, warmup: int) -> float:
    """Median over `runs` of the mean wall time of `reps` calls, after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        times.append((time.perf_counter() - start) / reps)
    return statistics.median(times)


def bench_steps(args: argparse.Namespace, x_B1HW: torch.Tensor) -> dict[str, float]:
    schedule = CascadeSchedule()
    out = {}
    for name, iteration in (("plain", 0), ("discrete", schedule.stage_length * 4)):
        torch.manual_seed(0)
        model = CascadeVAE()
        optimizer, scheduler = make_optimizer(model)
        gen = torch.Generator().manual_seed(0)
        assert schedule.discrete_active(iteration) == (name == "discrete")

        def step(model=model, optimizer=optimizer, scheduler=scheduler, it=iteration, gen=gen):
            return train_step(
                model,
                optimizer,
                scheduler,
                x_B1HW,
                iteration=it,
                schedule=schedule,
                eps_generator=gen,
                choose_codes=lambda unary_BK: unary_BK.argmin(dim=1),
            )

        seconds = median_seconds(step, args.runs, args.steps_per_run, warmup=3)
        out[f"step_ms_{name}"] = 1e3 * seconds
        out[f"images_per_s_{name}"] = x_B1HW.shape[0] / seconds
    return out


def bench_unary(args: argparse.Namespace, x_B1HW: torch.Tensor) -> dict[str, float]:
    torch.manual_seed(0)
    model = CascadeVAE()
    with torch.no_grad():
        mu_BM, sigma_BM = model.encode(x_B1HW)
        z_BM = mu_BM + sigma_BM * torch.randn_like(mu_BM)
    batched = median_seconds(lambda: unary_matrix(model, z_BM, x_B1HW), args.runs, 5, warmup=2)
    k_pass = median_seconds(
        lambda: unary_matrix_k_passes(model, z_BM, x_B1HW), args.runs, 5, warmup=2
    )
    max_diff = unary_matrix(model, z_BM, x_B1HW) - unary_matrix_k_passes(model, z_BM, x_B1HW)
    return {
        "unary_ms_batched": 1e3 * batched,
        "unary_ms_k_passes": 1e3 * k_pass,
        "unary_k_pass_over_batched": k_pass / batched,
        "unary_max_abs_diff": float(max_diff.abs().max()),
    }


def bench_metrics(args: argparse.Namespace) -> dict[str, float]:
    """Wall time of one `evaluate_model` call (default protocols) on a small rendered dSprites
    grid with an untrained model; skipped when trainer/metrics.py is absent or incomplete (it
    is written in parallel)."""
    try:
        from trainer.data import open_dsprites
        from trainer.metrics import evaluate_model
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
        evaluate_model(model, dataset, device="cpu", seed=0)  # warm-up (caches, lazy imports)
        start = time.perf_counter()
        evaluate_model(model, dataset, device="cpu", seed=1)
        seconds = time.perf_counter() - start
    return {"metrics_s": seconds, "metrics_images": float(len(dataset))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--runs", type=int, default=5, help="timed runs; the median is reported")
    parser.add_argument("--steps-per-run", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch)")
    parser.add_argument("--eval-scales", type=int, default=6, help="grid of the metrics timing")
    parser.add_argument("--eval-orientations", type=int, default=10)
    parser.add_argument("--eval-positions", type=int, default=16)
    parser.add_argument("--skip-metrics", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    x_B1HW = squares(args.batch_size, seed=0)
    results = {**bench_steps(args, x_B1HW), **bench_unary(args, x_B1HW)}
    if not args.skip_metrics:
        results.update(bench_metrics(args))
    results["discrete_cost"] = results["step_ms_discrete"] / results["step_ms_plain"]

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}")
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
