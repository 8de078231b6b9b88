"""The factor x dim table and the category x shape confusion matrix of an evaluation, read back
from its flat keys (`mi/<factor>/<column>`, `confusion/code<k>/<shape>`, see
trainer.eval.factor_dim_mi), as arrays, markdown and heatmap images.

Columns are labelled with the training interval's KL per dim (`kl/z<j>`, nats) and the cascade's
KL weight (`beta/z<j>`) when the interval holds them. No Ray and no TensorBoard here.

Shape legend: F factors (rows), C columns (continuous dims, then the code), K categories,
S shapes, H/W image height and width in pixels.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from trainer.eval.factor_dim_mi import CODE_COLUMN, FACTOR_NAMES
from trainer.eval.factor_dim_mi import shape_name as _shape_name

MI_KEY = re.compile(r"^mi/([^/]+)/(z\d+|code)$")
CONFUSION_KEY = re.compile(r"^confusion/code(\d+)/([^/]+)$")
DPI = 100
CELL_W_IN, CELL_H_IN = 0.9, 0.45
LEFT_IN, RIGHT_IN, TOP_IN = 1.2, 0.1, 0.4
"""Margins: row labels, right edge, title."""


@dataclass(frozen=True)
class Table:
    """A labelled matrix: values_RC with row and column labels (columns may span lines)."""

    values_RC: np.ndarray
    rows: list[str]
    columns: list[str]
    title: str
    integer: bool = False


def _column_order(column: str) -> tuple[int, int]:
    return (1, 0) if column == CODE_COLUMN else (0, int(column[1:]))


def factor_dim_table(metrics: Mapping[str, float], title: str = "") -> Table | None:
    """The factor x column table of the `mi/` keys in `metrics` (None when there are none):
    rows in dSprites' factor order, columns z0.. then the code, each continuous column labelled
    with `kl/z<j>` and `beta/z<j>` when present."""
    cells = {}
    for key, value in metrics.items():
        match = MI_KEY.match(key)
        if match is not None and value is not None and math.isfinite(value):
            cells[match.groups()] = float(value)
    if not cells:
        return None
    present = {factor for factor, _ in cells}
    factors = [f for f in FACTOR_NAMES if f in present] + sorted(present - set(FACTOR_NAMES))
    columns = sorted({column for _, column in cells}, key=_column_order)
    values_FC = np.full((len(factors), len(columns)), np.nan)
    for (factor, column), value in cells.items():
        values_FC[factors.index(factor), columns.index(column)] = value
    return Table(values_FC, factors, [_column_label(c, metrics) for c in columns], title)


def _column_label(column: str, metrics: Mapping[str, float]) -> str:
    lines = [column]
    for prefix, name in (("kl", "KL"), ("beta", "beta")):
        value = metrics.get(f"{prefix}/{column}")
        if value is not None and math.isfinite(value):
            lines.append(f"{name} {value:.2g}")
    return "\n".join(lines)


def confusion_table(metrics: Mapping[str, float], title: str = "") -> Table | None:
    """The category x shape counts of the `confusion/` keys in `metrics` (None when there are
    none): rows code0.., columns the shapes in dSprites' order."""
    cells = {}
    for key, value in metrics.items():
        match = CONFUSION_KEY.match(key)
        if match is not None and value is not None and math.isfinite(value):
            cells[(int(match.group(1)), match.group(2))] = float(value)
    if not cells:
        return None
    known = [_shape_name(s) for s in range(8)]
    shapes = sorted({s for _, s in cells}, key=lambda s: (known.index(s) if s in known else 99, s))
    num_k = max(k for k, _ in cells) + 1
    counts_KS = np.zeros((num_k, len(shapes)))
    for (k, shape), value in cells.items():
        counts_KS[k, shapes.index(shape)] = value
    return Table(counts_KS, [f"code{k}" for k in range(num_k)], shapes, title, integer=True)


def markdown(table: Table) -> str:
    """The table as a markdown table (values to 2 decimals, counts as integers)."""
    header = "| | " + " | ".join(c.replace("\n", "<br>") for c in table.columns) + " |"
    lines = [header, "|---" * (len(table.columns) + 1) + "|"]
    for row, values in zip(table.rows, table.values_RC, strict=True):
        cells = [_cell_text(v, table.integer) for v in values]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell_text(value: float, integer: bool) -> str:
    if not math.isfinite(value):
        return "-"
    return f"{value:.0f}" if integer else f"{value:.2f}"


def _bottom_in(table: Table) -> float:
    """The bottom margin: room for the column labels' lines."""
    return 0.25 + 0.15 * max(c.count("\n") + 1 for c in table.columns)


def figure_size_px(table: Table) -> tuple[int, int]:
    """(height, width) in pixels of the heatmap of `table`."""
    rows, cols = table.values_RC.shape
    return (
        round((TOP_IN + _bottom_in(table) + CELL_H_IN * rows) * DPI),
        round((LEFT_IN + RIGHT_IN + CELL_W_IN * cols) * DPI),
    )


def heatmap_figure(table: Table):
    """A matplotlib figure: the table as a heatmap with the value in each cell (MI tables on a
    fixed 0..1 scale, counts scaled by each row's total). Size: `figure_size_px`."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    height, width = figure_size_px(table)
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    # The cells fill the figure less the margins: row labels left, the title above, the
    # (up to three-line) column labels below.
    left, right, top, bottom = LEFT_IN, RIGHT_IN, TOP_IN, _bottom_in(table)
    ax = fig.add_axes(
        (
            left * DPI / width,
            bottom * DPI / height,
            1 - (left + right) * DPI / width,
            1 - (top + bottom) * DPI / height,
        )
    )
    values_RC = table.values_RC
    if table.integer:
        shade_RC = values_RC / np.maximum(values_RC.sum(axis=1, keepdims=True), 1.0)
    else:
        shade_RC = np.nan_to_num(values_RC)
    ax.imshow(shade_RC, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    for r in range(values_RC.shape[0]):
        for c in range(values_RC.shape[1]):
            color = "black" if shade_RC[r, c] > 0.6 else "white"
            text = _cell_text(values_RC[r, c], table.integer)
            ax.text(c, r, text, ha="center", va="center", color=color, fontsize=8)
    ax.set_xticks(range(len(table.columns)), table.columns, fontsize=7)
    ax.set_yticks(range(len(table.rows)), table.rows, fontsize=8)
    ax.set_title(table.title, fontsize=9)
    return fig


def heatmap_image(table: Table) -> torch.Tensor:
    """The heatmap as a float (3, H, W) image in [0, 1], H x W = `figure_size_px(table)`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = heatmap_figure(table)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgba_HW4 = np.asarray(canvas.buffer_rgba())
    return torch.from_numpy(rgba_HW4[:, :, :3].copy()).permute(2, 0, 1).float() / 255.0


def save_heatmap(table: Table, path) -> None:
    """The heatmap as a PNG file of `figure_size_px(table)`."""
    heatmap_figure(table).savefig(path, dpi=DPI)
