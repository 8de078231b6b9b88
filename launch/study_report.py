"""The results of a study: per-run selection, a table over seeds, and plots. No Ray here.

Every run of a study leaves `metrics.parquet` (one row per log interval; `eval/*` columns filled
at evaluations). Two readings of a run, both reported:
  best-by-metric  the evaluation with the highest selection metric (the authors' protocol: they
                  keep the checkpoint that scores best on the test metric, so it selects on it);
  last            the final evaluation.
`summarise` gives mean +- std over seeds per (model, metric, reading); `write_report` writes
results.md, results.parquet and PNG plots (each metric against step per model with a band over
seeds, and the final table as bars), and, for runs that evaluated `factor_dim_mi`, factor_dim.md
with each run's factor x dim table and code x shape counts at the evaluation nearest the
discrete start and at the last one (PNGs in factor_dim/).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from trainer.observe.run_log import read_metrics
from trainer.observe.tables import confusion_table, factor_dim_table, markdown, save_heatmap

READINGS = ("best", "last")
READING_TEXT = {
    "best": "best-by-metric (the authors' protocol; it selects on the test metric)",
    "last": "last",
}
METRIC_NAMES = {
    "eval/authors_factorvae": "authors' FactorVAE",
    "eval/factorvae": "FactorVAE",
    "eval/discrete_accuracy": "shape accuracy",
    "eval/mig": "MIG",
    "eval/active_dims": "active dims",
    "eval/mi_shape_z": "shape in one z dim",
    "codes/shape_agreement": "training-code agreement",
}


@dataclass(frozen=True)
class RunRecord:
    """One finished (or partial) run: its model, seed and metrics table rows."""

    model: str
    seed: int
    rows: list[dict[str, float]]
    discrete_start: int | None = None
    """The step the discrete stage starts at (cascade.stage_length x discrete_start_stage)."""
    diagnostic_steps: frozenset[int] = frozenset()
    """Evaluations off the run's eval_every cadence (`train.eval_at_discrete_start`): in the
    curves and the factor x dim tables, never a best or last reading."""

    @property
    def last_step(self) -> int:
        return int(max((r["step"] for r in self.rows), default=0))


def read_run(
    model: str,
    seed: int,
    table_path: Path,
    discrete_start: int | None = None,
    diagnostic_steps: frozenset[int] = frozenset(),
) -> RunRecord | None:
    """The run's metrics table, or None when it has none yet."""
    if not table_path.exists():
        return None
    rows = read_metrics(table_path.parent).to_pylist()
    return RunRecord(model, seed, rows, discrete_start, diagnostic_steps)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def eval_rows(run: RunRecord, metrics: Sequence[str]) -> list[dict[str, float]]:
    """Rows holding at least one of `metrics` (the evaluations) in step order, less the
    diagnostic ones (`RunRecord.diagnostic_steps`)."""
    rows = [
        r
        for r in run.rows
        if any(_finite(r.get(m)) for m in metrics) and int(r["step"]) not in run.diagnostic_steps
    ]
    return sorted(rows, key=lambda r: r["step"])


def select(run: RunRecord, selection_metric: str, metrics: Sequence[str]) -> dict[str, dict]:
    """{"best": row, "last": row} of the run's evaluations; empty when it has none. Best = the
    highest `selection_metric` (the earliest on ties); a model without that metric (e.g. no
    discrete code) is ranked by its first listed metric it reports."""
    rows = eval_rows(run, metrics)
    if not rows:
        return {}
    ranking = selection_metric
    if not any(_finite(r.get(ranking)) for r in rows):
        ranking = next((m for m in metrics if any(_finite(r.get(m)) for r in rows)), ranking)
    scored = [r for r in rows if _finite(r.get(ranking))]
    best = max(scored, key=lambda r: (r[ranking], -r["step"])) if scored else rows[-1]
    return {"best": best, "last": rows[-1]}


def summarise(
    runs: Iterable[RunRecord], selection_metric: str, metrics: Sequence[str]
) -> list[dict]:
    """One row per (model, metric, reading): mean, std (ddof 1; nan for n = 1), n, values, and
    the mean step of the selected evaluations."""
    by_model: dict[str, list[RunRecord]] = {}
    for run in runs:
        by_model.setdefault(run.model, []).append(run)
    out = []
    for model, model_runs in by_model.items():
        picks = [select(r, selection_metric, metrics) for r in model_runs]
        for metric in metrics:
            for reading in READINGS:
                chosen = [p[reading] for p in picks if p and _finite(p[reading].get(metric))]
                values = [float(row[metric]) for row in chosen]
                if not values:
                    continue
                out.append(
                    {
                        "model": model,
                        "metric": metric,
                        "reading": reading,
                        "mean": float(np.mean(values)),
                        "std": float(np.std(values, ddof=1)) if len(values) > 1 else math.nan,
                        "median": float(np.median(values)),
                        "n": len(values),
                        "values": ",".join(f"{v:.4f}" for v in values),
                        "mean_step": float(np.mean([row["step"] for row in chosen])),
                    }
                )
    return out


def _cell(row: dict | None) -> str:
    if row is None:
        return "—"
    std = "" if math.isnan(row["std"]) else f" ± {row['std']:.3f}"
    return f"{row['mean']:.3f}{std} (n={row['n']})"


def markdown_table(summary: list[dict], models: Sequence[str], metrics: Sequence[str]) -> str:
    """Rows: model x reading; columns: metrics; cells: mean ± std (n)."""
    index = {(r["model"], r["metric"], r["reading"]): r for r in summary}
    header = ["model", "reading", *[METRIC_NAMES.get(m, m) for m in metrics]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model in models:
        for reading in READINGS:
            cells = [_cell(index.get((model, m, reading))) for m in metrics]
            if all(c == "—" for c in cells):
                continue
            lines.append("| " + " | ".join([model, reading, *cells]) + " |")
    return "\n".join(lines)


def curves(runs: Iterable[RunRecord], metric: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{model: (steps_S, values_RS)} on the steps every seed of the model reports `metric`."""
    by_model: dict[str, list[dict[int, float]]] = {}
    for run in runs:
        series = {int(r["step"]): float(r[metric]) for r in run.rows if _finite(r.get(metric))}
        if series:
            by_model.setdefault(run.model, []).append(series)
    out = {}
    for model, serieses in by_model.items():
        steps = sorted(set.intersection(*(set(s) for s in serieses)))
        if steps:
            out[model] = (np.array(steps), np.array([[s[t] for t in steps] for s in serieses]))
    return out


def plot_curves(runs: list[RunRecord], metrics: Sequence[str], path: Path) -> Path:
    """One panel per metric: mean over seeds against step per model, band = min..max."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [m for m in metrics if curves(runs, m)]
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(4.2 * max(len(panels), 1), 3.4))
    axes = np.atleast_1d(axes)
    for ax, metric in zip(axes, panels, strict=False):
        for model, (steps, values) in curves(runs, metric).items():
            (line,) = ax.plot(steps, values.mean(axis=0), label=f"{model} (n={len(values)})")
            if len(values) > 1:
                ax.fill_between(
                    steps, values.min(axis=0), values.max(axis=0), alpha=0.2, color=line.get_color()
                )
        ax.set_title(METRIC_NAMES.get(metric, metric))
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def plot_bars(summary: list[dict], models: Sequence[str], metrics: Sequence[str], path: Path):
    """Final table as bars: one panel per metric, best and last side by side per model, error
    bars = std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    index = {(r["model"], r["metric"], r["reading"]): r for r in summary}
    panels = [m for m in metrics if any(k[1] == m for k in index)]
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(4.2 * max(len(panels), 1), 3.4))
    axes = np.atleast_1d(axes)
    x = np.arange(len(models))
    for ax, metric in zip(axes, panels, strict=False):
        for offset, reading in ((-0.2, "best"), (0.2, "last")):
            rows = [index.get((m, metric, reading)) for m in models]
            means = [r["mean"] if r else 0.0 for r in rows]
            stds = [0.0 if (r is None or math.isnan(r["std"])) else r["std"] for r in rows]
            ax.bar(x + offset, means, 0.4, yerr=stds, capsize=3, label=reading)
        ax.set_xticks(x, models, rotation=30, fontsize=8)
        ax.set_title(METRIC_NAMES.get(metric, metric))
        ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3, axis="y")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def table_rows(run: RunRecord) -> list[dict[str, float]]:
    """The run's evaluations that hold a factor x dim table (`mi/` keys), in step order."""
    rows = [r for r in run.rows if any(k.startswith("mi/") and _finite(v) for k, v in r.items())]
    return sorted(rows, key=lambda r: r["step"])


def table_readings(run: RunRecord) -> dict[str, dict[str, float]]:
    """{"discrete start": row, "end": row} of the run's tables: the evaluation nearest the
    discrete start (the earlier one on ties; absent when the start is unknown) and the last."""
    rows = table_rows(run)
    if not rows:
        return {}
    out = {}
    if run.discrete_start is not None:
        start = run.discrete_start
        out["discrete start"] = min(rows, key=lambda r: (abs(r["step"] - start), r["step"]))
    out["end"] = rows[-1]
    return out


def write_factor_dim_tables(out_dir: Path, runs: Sequence[RunRecord]) -> list[Path]:
    """factor_dim.md and one PNG per table under factor_dim/: each run's factor x dim table and
    code x shape counts at the evaluation nearest the discrete start and at the last one.
    Nothing (no paths) when no run has a table."""
    readings = [(run, table_readings(run)) for run in runs]
    readings = [(run, picks) for run, picks in readings if picks]
    if not readings:
        return []
    png_dir = out_dir / "factor_dim"
    png_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    lines = [
        "# Factor x dim tables",
        "",
        "Normalised mutual information I(column; factor) / H(factor) of each continuous dim (mu,",
        "discretised into equal-width bins as MIG does) and of the discrete code (the category",
        "at z = mu) with each factor that varies, on the evaluation sample: 1 = the column",
        "determines the factor, 0 = independent (plug-in estimate). Column labels: the training",
        "KL of the dim (nats) and its KL weight beta, both means over the log interval. Counts:",
        "images of the evaluation sample by learned category and true shape.",
    ]
    for run, picks in sorted(readings, key=lambda item: (item[0].model, item[0].seed)):
        name = f"{run.model}-s{run.seed}"
        lines += ["", f"## `{name}`"]
        for reading, row in picks.items():
            step = int(row["step"])
            where = f"step {step:,}"
            if reading == "discrete start" and run.discrete_start is not None:
                where += f"; the discrete stage starts at step {run.discrete_start:,}"
            lines += ["", f"### At the {reading} ({where})", ""]
            drawn = (
                ("mi", factor_dim_table(row, f"{name}: MI / H(factor), step {step}")),
                ("codes", confusion_table(row, f"{name}: code x shape, step {step}")),
            )
            for suffix, table in drawn:
                if table is None:
                    continue
                png = png_dir / f"{name}-step{step}-{suffix}.png"
                save_heatmap(table, png)
                paths.append(png)
                lines += [markdown(table), "", f"![{table.title}](factor_dim/{png.name})", ""]
    text = "\n".join(lines).rstrip() + "\n"
    (out_dir / "factor_dim.md").write_text(text)
    return [out_dir / "factor_dim.md", *paths]


def write_report(
    out_dir: Path,
    runs: list[RunRecord],
    *,
    title: str,
    preamble: str,
    models: Sequence[str],
    selection_metric: str,
    metrics: Sequence[str],
    curve_metrics: Sequence[str],
    run_lines: Sequence[str] = (),
) -> list[Path]:
    """results.md, results.parquet, curves.png and bars.png in `out_dir`; returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarise(runs, selection_metric, metrics)
    table = markdown_table(summary, models, metrics)
    readings = "\n".join(f"- **{k}**: {v}" for k, v in READING_TEXT.items())
    text = (
        f"# {title}\n\n{preamble.strip()}\n\n"
        f"Readings of each run (selection metric `{selection_metric}`):\n{readings}\n\n"
        f"Cells: mean ± std over seeds (n = seeds).\n\n{table}\n\n"
        "![metrics against step](curves.png)\n\n![final table](bars.png)\n"
    )
    if run_lines:
        text += "\n## Runs\n\n" + "\n".join(f"- {line}" for line in run_lines) + "\n"
    paths = [out_dir / "results.md", out_dir / "results.parquet"]
    paths[0].write_text(text)
    keys = ["model", "metric", "reading", "mean", "std", "median", "n", "values", "mean_step"]
    pq.write_table(pa.table({k: [r[k] for r in summary] for k in keys}), paths[1])
    paths.append(plot_curves(runs, curve_metrics, out_dir / "curves.png"))
    paths.append(plot_bars(summary, models, metrics, out_dir / "bars.png"))
    tables = write_factor_dim_tables(out_dir, runs)
    if tables:
        link = (
            "\nWhat each latent dim holds, at the discrete start and at the end: "
            "[factor x dim tables](factor_dim.md).\n"
        )
        paths[0].write_text(text + link)
    return paths + tables
