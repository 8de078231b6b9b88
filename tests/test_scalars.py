"""Step metrics left on the device: read once on demand, summed on the device by the interval
meter to the same numbers as host floats, and a non-finite loss found where the interval is
read, before any hook runs."""

from __future__ import annotations

import math

import pytest
import torch
from step_helpers import (
    AUTHORS,
    argmin_codes,
    model_and_optimizer,
    nan_images,
    squares,
    step_both_ways,
)

from trainer.core.scalars import StepMetrics
from trainer.core.step import NonFiniteLossError, train_step
from trainer.observe.cadence import Cadence, Hooks
from trainer.observe.progress import IntervalMeter

NAMES = ("loss/total", "loss/recon")


def _metrics(total: float, recon: float, **host: float) -> StepMetrics:
    return StepMetrics(host, NAMES, torch.tensor([total, recon], dtype=torch.float32))


def test_step_metrics_read_their_device_part_once_and_behave_as_a_dict():
    metrics = _metrics(3.5, 1.25, lr=0.001)
    assert metrics.pending and len(metrics) == 3
    assert sorted(metrics) == ["loss/recon", "loss/total", "lr"]
    metrics["perf/data_ms"] = 2.0  # a host key: the device part stays unread
    assert metrics.pending and metrics["lr"] == 0.001
    assert metrics["loss/total"] == 3.5 and not metrics.pending
    assert metrics == {"loss/total": 3.5, "loss/recon": 1.25, "lr": 0.001, "perf/data_ms": 2.0}
    with pytest.raises(ValueError, match="shape"):
        StepMetrics({}, NAMES, torch.zeros(3))


def test_device_sums_are_the_host_float_sums_bit_for_bit():
    values = torch.rand(7, 2, generator=torch.Generator().manual_seed(0)) * 1000
    on_device, on_host = IntervalMeter(), IntervalMeter()
    for step in range(7):
        on_device.add(_metrics(*values[step].tolist(), lr=0.5), step)
        on_host.add(_metrics(*values[step].tolist(), lr=0.5).read(), step)
    means, non_finite = on_device.read()
    assert non_finite is None
    assert means == on_host.means()  # exact: float64 sums in the same order
    assert means["loss/total"] == sum(float(v) for v in values[:, 0]) / 7


def test_the_first_non_finite_loss_is_found_with_its_step_and_values():
    meter = IntervalMeter()
    for step, total in [(10, 1.0), (11, math.nan), (12, 2.0), (13, math.inf)]:
        meter.add(_metrics(total, 0.5), step)
    means, non_finite = meter.read()
    assert math.isnan(means["loss/total"])
    assert non_finite is not None
    step, values = non_finite
    assert step == 11 and math.isnan(values["loss/total"]) and values["loss/recon"] == 0.5


def test_steps_with_other_names_are_summed_per_key():
    meter = IntervalMeter()
    meter.add(_metrics(1.0, 2.0), 0)
    meter.add(StepMetrics({}, ("loss/total", "codes/count_0"), torch.tensor([3.0, 4.0])), 1)
    means, _ = meter.read()
    assert means == {"loss/total": 2.0, "loss/recon": 2.0, "codes/count_0": 4.0}


def test_device_metrics_need_their_step():
    with pytest.raises(ValueError, match="step"):
        IntervalMeter().add(_metrics(1.0, 1.0))


class _Saver:
    cadence = Cadence(1)

    def __init__(self):
        self.calls = []

    def run(self, done, interval):
        self.calls.append(done)


def test_a_nan_loss_stops_the_interval_before_any_hook_and_names_its_step():
    saver = _Saver()
    hooks = Hooks([saver], ends=[Cadence(4)], num_steps=8, global_batch=2)
    for step in range(4):
        hooks.after_step(step, _metrics(1.0, 1.0))
    assert saver.calls == [4]
    hooks.after_step(4, _metrics(1.0, 1.0))
    hooks.after_step(5, _metrics(math.inf, 1.0))
    hooks.after_step(6, _metrics(math.nan, 1.0))
    with pytest.raises(NonFiniteLossError) as info:
        hooks.after_step(7, _metrics(1.0, 1.0))
    assert info.value.step == 5 and info.value.stopped_at == 8
    assert str(info.value) == (
        "iteration 5: the loss is not finite (loss/total=inf); training stopped at the end of "
        "the log interval (8 steps done), before any report or checkpoint of it"
    )
    assert saver.calls == [4]  # no hook (report, checkpoint) ran for the bad interval


# --- a train step with its metrics left on the device ----------------------------------


@pytest.mark.parametrize("iteration", [0, 80_000])
def test_metrics_left_on_the_device_are_the_read_metrics(iteration):
    from trainer.core.scalars import StepMetrics

    shapes_B = torch.tensor([0, 1, 2, 0, 1, 1])
    (read, model_a), (unread, model_b) = step_both_ways(iteration, argmin_codes, shapes_B=shapes_B)
    assert isinstance(read, dict) and isinstance(unread, StepMetrics) and unread.pending
    assert dict(unread.read()) == read  # same keys, bit-identical values
    for p, q in zip(model_a.parameters(), model_b.parameters(), strict=True):
        assert torch.equal(p, q)


def test_a_nan_image_with_metrics_on_the_device_is_found_where_the_interval_is_read():
    model, optimizer, scheduler = model_and_optimizer()
    hooks = Hooks([], ends=[Cadence(3)], num_steps=3, global_batch=4)
    for step in range(3):
        images = nan_images(4, seed=9) if step == 1 else squares(4, seed=9)
        metrics = train_step(
            model, optimizer, scheduler, images, iteration=step, schedule=AUTHORS,
            eps_generator=torch.Generator().manual_seed(0), metrics_on_device=True,
        )  # fmt: skip
        if step < 2:
            hooks.after_step(step, metrics)  # no host read, no error yet
    with pytest.raises(NonFiniteLossError, match=r"iteration 1: .*loss/recon=nan.*3 steps done"):
        hooks.after_step(2, metrics)
