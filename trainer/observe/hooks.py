"""The rank-0 hooks of a run that need no Ray: evaluation, pictures, the run log and the
progress line. Each runs at the end of the log intervals its `Cadence` selects
(trainer.observe.cadence).
"""

from __future__ import annotations

import time

import torch

from trainer.build import evaluation_kwargs
from trainer.config import Config
from trainer.core.model import CascadeVAE
from trainer.data.dsprites import DSprites
from trainer.eval import evaluate_model
from trainer.observe.cadence import Cadence
from trainer.observe.images import category_means, reconstructions, traversals
from trainer.observe.progress import codes_text, eval_text, format_eta, say
from trainer.observe.run_log import NullRunLog
from trainer.observe.tables import confusion_table, factor_dim_table, heatmap_image


class EvaluationHook:
    """Adds the configured metrics (`eval/...`) and `perf/eval_s` to the interval (the keys
    trainer.reported.evaluation_keys declares)."""

    def __init__(
        self, cadence: Cadence, config: Config, model: CascadeVAE, dataset: DSprites, device
    ):
        self.cadence = cadence
        self.config, self.model, self.dataset, self.device = config, model, dataset, device

    def run(self, done: int, interval: dict[str, float]) -> None:
        started = time.perf_counter()
        self.model.eval()
        try:
            interval.update(
                evaluate_model(
                    self.model, self.dataset, device=self.device, **evaluation_kwargs(self.config)
                )
            )
        finally:
            self.model.train()
        interval["perf/eval_s"] = time.perf_counter() - started


class ImageHook:
    """Reconstructions, category means and traversals of a fixed preview batch, to the log."""

    def __init__(
        self, cadence: Cadence, model: CascadeVAE, preview_x: torch.Tensor, log: NullRunLog
    ):
        self.cadence = cadence
        self.model, self.preview_x, self.log = model, preview_x, log

    def run(self, done: int, interval: dict[str, float]) -> None:
        model, log = self.model, self.log
        model.eval()
        try:
            log.image("images/reconstructions", done, reconstructions(model, self.preview_x[:8]))
            if model.num_categories:
                log.image("images/category_means", done, category_means(model, self.preview_x))
            for category, grid in traversals(model, self.preview_x[:1]).items():
                tag = (
                    "images/traversal"
                    if category is None
                    else f"images/traversal_category{category}"
                )
                log.image(tag, done, grid)
        finally:
            model.train()
        log.flush()


def log_tables(log: NullRunLog, done: int, interval: dict[str, float]) -> None:
    """The factor x dim table (`tables/factor_dim_mi`) and the category x shape confusion matrix
    (`tables/code_shape`) of an evaluation in `interval`, as heatmap images; nothing when the
    interval holds no evaluation of them."""
    drawn = (
        ("tables/factor_dim_mi", factor_dim_table(interval, f"MI / H(factor), step {done}")),
        ("tables/code_shape", confusion_table(interval, f"code x shape, step {done}")),
    )
    for tag, table in drawn:
        if table is not None:
            log.image(tag, done, heatmap_image(table))


class LogHook:
    """The interval's scalars to TensorBoard and the metrics table, the evaluation's tables as
    images, and one progress line."""

    def __init__(self, cadence: Cadence, log: NullRunLog, *, num_steps: int, start_step: int):
        self.cadence = cadence
        self.log = log
        self.num_steps = num_steps
        self.start_step = start_step
        self.started = time.perf_counter()

    def run(self, done: int, interval: dict[str, float]) -> None:
        self.log.scalars(done, interval)
        log_tables(self.log, done, interval)
        rate = (done - self.start_step) / max(time.perf_counter() - self.started, 1e-9)
        line = (
            f"[cascadevae] step {done}/{self.num_steps} | "
            f"{interval['perf/images_per_s']:.0f} img/s | "
            f"ETA {format_eta((self.num_steps - done) / max(rate, 1e-9))} | "
            f"loss {interval['loss/total']:.2f} (recon {interval['loss/recon']:.2f})"
        )
        if "codes/shape_agreement" in interval:
            line += f" | {codes_text(interval)}"
        if any(key.startswith("eval/") for key in interval):
            line += f" | {eval_text(interval)}"
        say(line)
