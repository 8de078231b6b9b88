"""Which 3-way partition does the discrete objective prefer when z holds only position and scale?

An ideal decoder that knows an image's position and scale (from z) and its category (from d),
but not its orientation, reconstructs it at best with the mean image of its (category, scale)
group: the unary cost of the group is then |group| * H(mean) nats (H = the summed Bernoulli
entropy of the mean's pixels). Positions are pixel shifts of the same mask, so the masks of one
scale stand for every position. This script compares, per ellipse aspect ratio:
  - the gain of the true-shape partition over no partition (one category);
  - the gain of the best partition local search finds over (shape, orientation) items, with its
    confusion against the true shapes.
If the best partition beats shape, a code learned before the continuous dims hold orientation
is expected to split by orientation (here: the ellipse's tilt) rather than by shape.

    python benchmarks/code_objective.py [--orientations 40] [--restarts 200]
"""

from __future__ import annotations

import argparse
import math
from unittest import mock

import numpy as np
from scipy.optimize import linear_sum_assignment

from trainer.data import render as data_render
from trainer.data.render import SHAPE_NAMES, render_mask

SCALES = np.linspace(0.5, 1.0, 6)
NUM_CATEGORIES = 3


def bernoulli_entropy(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return -(p * np.log(p) + (1 - p) * np.log(1 - p))


RENDERER_MAJOR_PX, RENDERER_MINOR_PX = data_render.ELLIPSE_SEMI_AXES_PX
RENDERER_RATIO = RENDERER_MINOR_PX / RENDERER_MAJOR_PX  # ~0.565 (official frames: ~1 / 1.75)


def masks(num_orientations: int, ellipse_minor: float) -> tuple[np.ndarray, np.ndarray]:
    """(S*O, scales, pixels) float masks and (S*O,) shape labels; the ellipse keeps the
    renderer's long semi-axis and has minor/major axis ratio `ellipse_minor`."""
    axes = (RENDERER_MAJOR_PX, ellipse_minor * RENDERER_MAJOR_PX)
    thetas = np.linspace(0.0, 2 * math.pi, num_orientations)
    items, labels = [], []
    with mock.patch.object(data_render, "ELLIPSE_SEMI_AXES_PX", axes):
        for shape in range(len(SHAPE_NAMES)):
            for theta in thetas:
                items.append([render_mask(shape, s, theta).ravel() for s in SCALES])
                labels.append(shape)
    return np.asarray(items, dtype=np.float64), np.asarray(labels)


def partition_cost(items_ISP: np.ndarray, labels_I: np.ndarray) -> float:
    """Sum over categories and scales of |group| * H(group mean), nats per image on average."""
    total = 0.0
    for k in np.unique(labels_I):
        group = items_ISP[labels_I == k]
        total += len(group) * bernoulli_entropy(group.mean(axis=0)).sum()
    return total / (len(items_ISP) * items_ISP.shape[1])


def balance_penalty(labels_I: np.ndarray, lam: float, batch: int = 64) -> float:
    """Expected pairwise penalty per image of a batch of `batch` drawn from the partition:
    lam * sum_k c_k (c_k - 1) / 2 / batch with c_k = share_k * batch."""
    shares_K = np.bincount(labels_I, minlength=NUM_CATEGORIES) / len(labels_I)
    counts_K = shares_K * batch
    return float(lam * (counts_K * (counts_K - 1) / 2).sum() / batch)


def local_search(
    items_ISP: np.ndarray, rng: np.random.Generator, restarts: int, lam: float = 0.0
) -> np.ndarray:
    """Best partition into NUM_CATEGORIES found by Lloyd-style reassignment under the
    cross-entropy to each group's mean plus the marginal pairwise penalty of a batch of 64
    (lam * 64 * share_k for joining category k), from `restarts` random starts."""
    flat = items_ISP.reshape(len(items_ISP), -1)
    best, best_cost = None, math.inf
    for _ in range(restarts):
        labels = rng.integers(0, NUM_CATEGORIES, len(flat))
        for _ in range(100):
            means = np.stack(
                [
                    flat[labels == k].mean(axis=0) if (labels == k).any() else flat.mean(axis=0)
                    for k in range(NUM_CATEGORIES)
                ]
            )
            p = np.clip(means, 1e-6, 1 - 1e-6)
            cost_IK = -(flat @ np.log(p).T + (1 - flat) @ np.log(1 - p).T) / items_ISP.shape[1]
            shares_K = np.bincount(labels, minlength=NUM_CATEGORIES) / len(labels)
            new = (cost_IK + lam * 64 * shares_K).argmin(axis=1)
            if np.array_equal(new, labels):
                break
            labels = new
        cost = partition_cost(items_ISP, labels) + balance_penalty(labels, lam)
        if cost < best_cost:
            best, best_cost = labels, cost
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--orientations", type=int, default=40)
    parser.add_argument("--restarts", type=int, default=200)
    parser.add_argument(
        "--minors",
        type=float,
        nargs="+",
        default=[RENDERER_RATIO, 0.8],
        help="ellipse minor/major axis ratios (default: the renderer's, then a rounder one)",
    )
    parser.add_argument("--lams", type=float, nargs="+", default=[0.001, 0.3, 1.0, 3.0])
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(
        f"{args.orientations} orientations x 6 scales; cost = nats per image of an ideal "
        "(position, scale, category) decoder"
    )
    print(
        "ellipse minor/major | lambda | one category | shape partition | best found | "
        "(costs include the pairwise penalty of a batch of 64)"
    )
    for minor in args.minors:
        items, shapes = masks(args.orientations, minor)
        for lam in args.lams:
            one = np.zeros(len(items), dtype=int)
            none = partition_cost(items, one) + balance_penalty(one, lam)
            by_shape = partition_cost(items, shapes) + balance_penalty(shapes, lam)
            best = local_search(items, rng, args.restarts, lam)
            found = partition_cost(items, best) + balance_penalty(best, lam)
            if by_shape < found:  # the search missed the shape partition: it is the best seen
                best, found = shapes, by_shape
            confusion_KS = np.zeros((NUM_CATEGORIES, 3), dtype=int)
            np.add.at(confusion_KS, (best, shapes), 1)
            rows, cols = linear_sum_assignment(confusion_KS, maximize=True)
            agreement = confusion_KS[rows, cols].sum() / len(shapes)
            print(
                f"{minor:19.2f} | {lam:6.2f} | {none:12.2f} | {by_shape:15.2f} | {found:10.2f} | "
                f"agreement with shape {agreement:.2f}, categories x shapes "
                f"{confusion_KS.tolist()}"
            )


if __name__ == "__main__":
    main()
