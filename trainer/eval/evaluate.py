"""`evaluate_model`: every asked protocol of the registry over one shared global sample."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from trainer.core.model import CascadeVAE
from trainer.data.dsprites import DSprites
from trainer.eval.inference import ModelRepresenter
from trainer.eval.options import EvalConfig
from trainer.eval.registry import METRICS, select
from trainer.eval.sampling import draw_global_sample
from trainer.schema import validate


def evaluate_model(
    model: CascadeVAE,
    dataset: DSprites,
    *,
    device: str | torch.device = "cpu",
    seed: int = 0,
    **settings: Any,
) -> dict[str, float]:
    """Evaluate `model` on `dataset`; flat keys of the asked protocols only (registry order):
    their outputs and their tables (`registry.table_keys`).

    `settings`: fields of EvalConfig (`protocols`, `num_global`, `batch_size` and the metrics'
    options), the others at EvalConfig's defaults; a bad value raises ConfigError naming it.
    One global sample of `num_global` images (None = all) is represented once and shared by
    every protocol; each protocol draws its votes from its own random stream (seeded by `seed`
    and its place in the registry), so a protocol's score does not depend on which others are
    asked. The model is not modified.
    """
    unknown = sorted(set(settings) - set(EvalConfig.model_fields))
    if unknown:
        raise TypeError(f"unknown overrides {unknown}; allowed: {list(EvalConfig.model_fields)}")
    if "protocols" in settings:
        settings["protocols"] = list(settings["protocols"])
    options: EvalConfig = validate(EvalConfig, settings, source="evaluate_model")
    metrics = select(options.protocols)
    if model.num_categories == 0:
        refused = [m.name for m in metrics if m.needs_codes]
        if refused:
            raise ValueError(f"{refused} need a model with a discrete code (num_categories > 0)")
    values = options.model_dump()
    kwargs = {m.name: m.kwargs(values) for m in metrics}

    represent = ModelRepresenter(model, dataset, device=device, batch_size=options.batch_size)
    streams = np.random.SeedSequence(seed).spawn(1 + len(METRICS))
    rngs = {name: np.random.default_rng(s) for name, s in zip(METRICS, streams[1:], strict=True)}
    sample = draw_global_sample(
        represent,
        dataset,
        np.random.default_rng(streams[0]),
        options.num_global,
        codes=any(m.reads_codes(kwargs[m.name]) for m in metrics),
    )
    out: dict[str, float] = {}
    for metric in metrics:
        result = metric.compute(
            represent, dataset, rngs[metric.name], global_sample=sample, **kwargs[metric.name]
        )
        out.update({o.key: float(o.read(result)) for o in metric.outputs})
        out.update(metric.read_table(result))
    return out
