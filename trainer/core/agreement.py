"""How well the training codes match the true shapes: a contingency table and its best match.

Legend: B = batch, K = learned categories, S = true shapes (dSprites: 3).

Per step, `joint_counts` gives the (K, S) table of (code, shape) pairs as flat metrics
`codes/joint_k{k}_s{s}`; means over a log interval and sums over ranks keep it a table of one
global batch. `agreement_metrics` turns it into the best one-to-one match (Hungarian) accuracy
`codes/shape_agreement` and each category's share of the batch `codes/share_{k}`.
"""

from __future__ import annotations

import re

import numpy as np

from trainer.core.matching import best_matching

JOINT_PREFIX = "codes/joint_"
_JOINT_KEY = re.compile(r"^codes/joint_k(\d+)_s(\d+)$")


def agreement_keys(num_categories: int) -> set[str]:
    """The keys `agreement_metrics` returns for K categories."""
    return {"codes/shape_agreement"} | {f"codes/share_{k}" for k in range(num_categories)}


def joint_key(category: int, shape: int) -> str:
    return f"{JOINT_PREFIX}k{category}_s{shape}"


def joint_counts(codes_B: np.ndarray, shapes_B: np.ndarray, num_categories: int, num_shapes: int):
    """{codes/joint_k{k}_s{s}: count} for every k < K, s < S (zeros included)."""
    table_KS = np.zeros((num_categories, num_shapes), dtype=np.float64)
    np.add.at(table_KS, (np.asarray(codes_B), np.asarray(shapes_B)), 1.0)
    return {
        joint_key(k, s): float(table_KS[k, s])
        for k in range(num_categories)
        for s in range(num_shapes)
    }


def best_match_accuracy(table_KS: np.ndarray) -> float:
    """Matched mass of the best one-to-one category -> shape match over the table's total."""
    total = float(table_KS.sum())
    if total <= 0:
        return float("nan")
    rows, cols = best_matching(table_KS, maximize=True)
    return float(table_KS[rows, cols].sum() / total)


def agreement_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """Remove the `codes/joint_*` entries of `metrics` (in place) and return
    `codes/shape_agreement` plus `codes/share_{k}`; empty when there are none."""
    cells = {}
    for key in [k for k in metrics if k.startswith(JOINT_PREFIX)]:
        match = _JOINT_KEY.match(key)
        value = metrics.pop(key)
        if match:
            cells[int(match.group(1)), int(match.group(2))] = value
    if not cells:
        return {}
    num_categories = 1 + max(k for k, _ in cells)
    num_shapes = 1 + max(s for _, s in cells)
    table_KS = np.zeros((num_categories, num_shapes))
    for (k, s), value in cells.items():
        table_KS[k, s] = value
    out = {"codes/shape_agreement": best_match_accuracy(table_KS)}
    total = table_KS.sum()
    for k in range(num_categories):
        out[f"codes/share_{k}"] = float(table_KS[k].sum() / total) if total > 0 else float("nan")
    return out
