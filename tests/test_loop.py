"""The Ray-free training loop: the step pipeline the worker and the benchmark share, cadences,
and where log intervals end."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.build import build_capacities, build_model, build_optimizer, build_schedule, open_data
from trainer.config import load_config
from trainer.core.step import train_step
from trainer.data.dsprites import batch_indices_for_step
from trainer.loop import SHAPE_FACTOR, TrainLoop, load_batch, step_seed
from trainer.observe.cadence import Cadence, Hooks, evaluation_cadence

DEBUG = Path(__file__).resolve().parent.parent / "configs" / "debug.yaml"


def _config(tmp_path, *overrides):
    return load_config(DEBUG, [f"data.cache_dir={tmp_path / 'cache'}", *overrides])


def _parts(config):
    torch.manual_seed(config.seed)
    model = build_model(config)
    optimizer, scheduler = build_optimizer(config, model)
    return model, optimizer, scheduler


@pytest.mark.parametrize(
    "every, at_end, done, last, due",
    [(10, True, 10, False, True), (10, True, 15, False, False), (10, True, 15, True, True),
     (0, True, 7, False, False), (0, True, 7, True, True), (0, False, 7, True, False),
     (4, False, 8, True, True)],
)  # fmt: skip
def test_cadence(every, at_end, done, last, due):
    assert Cadence(every, at_end).due(done, last) is due


def test_the_evaluation_cadence_adds_the_discrete_start(tmp_path):
    # debug: 5-step stages, the discrete stage from stage 4, 40 steps, evaluation at the end only.
    plain = evaluation_cadence(_config(tmp_path))
    assert [done for done in range(1, 41) if plain.due(done, done == 40)] == [40]
    config = _config(tmp_path, "train.eval_at_discrete_start=true", "train.eval_every=15")
    cadence = evaluation_cadence(config)
    assert [done for done in range(1, 41) if cadence.due(done, done == 40)] == [15, 20, 30, 40]
    hooks = Hooks([], ends=[Cadence(8), cadence], num_steps=40, global_batch=16)
    intervals = [hooks.after_step(step, {"loss/total": 1.0}) for step in range(40)]
    ends = [step + 1 for step, interval in enumerate(intervals) if interval is not None]
    assert ends == [8, 15, 16, 20, 24, 30, 32, 40]


def test_the_extra_evaluation_is_diagnostic(tmp_path, monkeypatch):
    import ray.train

    from trainer.distributed.worker import UNRANKED_SCORE, ReportHook
    from trainer.observe.cadence import extra_evaluation_steps
    from trainer.provenance import Provenance
    from trainer.reported import CHECKPOINT_SCORE

    flag = "train.eval_at_discrete_start=true"
    assert extra_evaluation_steps(_config(tmp_path)) == frozenset()
    assert extra_evaluation_steps(_config(tmp_path, flag, "train.eval_every=10")) == frozenset()
    config = _config(
        tmp_path,
        flag,
        "train.eval_every=15",
        "train.checkpoint_every=30",
        "train.keep_best_by=eval/authors_factorvae",
    )
    assert extra_evaluation_steps(config) == frozenset({20})
    # At the discrete start (step 20) the evaluation is reported but ranks no checkpoint.
    reports: list = []
    monkeypatch.setattr(ray.train, "report", lambda report, **kw: reports.append((report, kw)))
    provenance = Provenance("a" * 40, False)
    hook = ReportHook(
        config,
        state=None,
        log=None,
        rank=0,
        run_dir=tmp_path,
        provenance=provenance,  # type: ignore[arg-type]
    )
    hook.run(20, {"eval/authors_factorvae": 0.9, "mi/shape/z0": 0.5})
    ((report, kwargs),) = reports
    assert kwargs == {} and report[CHECKPOINT_SCORE] == UNRANKED_SCORE
    assert report["eval/authors_factorvae"] == 0.9 and report["mi/shape/z0"] == 0.5


def test_checkpoint_scores_survive_ray_trains_json_snapshot():
    """Ray Train keeps checkpoint scores in a pydantic JSON snapshot that it reads on resume;
    an unranked or non-finite score must come back as the same finite number."""
    import pydantic

    from trainer.distributed.worker import UNRANKED_SCORE, checkpoint_score

    class Snapshot(pydantic.BaseModel):
        scores: list[float]

    key = "eval/authors_factorvae"
    scores = [
        checkpoint_score({key: 0.75}, key, ranked=True),
        checkpoint_score({key: 0.75}, key, ranked=False),
        checkpoint_score({}, key, ranked=True),
        checkpoint_score({key: math.nan}, key, ranked=True),
        checkpoint_score({key: -math.inf}, key, ranked=True),
    ]
    assert scores == [0.75] + [UNRANKED_SCORE] * 4
    assert all(s < -1e300 for s in scores[1:])
    restored = Snapshot.model_validate_json(Snapshot(scores=scores).model_dump_json())
    assert restored.scores == scores
    # What -inf itself would have become: null, which cannot be read back as a float.
    with pytest.raises(pydantic.ValidationError):
        Snapshot.model_validate_json(Snapshot(scores=[-math.inf]).model_dump_json())


class _Recorder:
    def __init__(self, cadence, name, calls):
        self.cadence, self.name, self.calls = cadence, name, calls

    def run(self, done, interval):
        self.calls.append((self.name, done, interval["steps_seen"]))
        interval[f"seen_by_{self.name}"] = 1.0


def test_an_eval_cadence_that_is_not_a_multiple_of_the_log_cadence_is_honoured():
    calls: list = []
    hooks = Hooks(
        [_Recorder(Cadence(6), "eval", calls), _Recorder(Cadence(4), "log", calls)],
        ends=[Cadence(4), Cadence(6)],
        num_steps=14,
        global_batch=8,
    )
    intervals = [hooks.after_step(step, {"steps_seen": 1.0}) for step in range(14)]
    ends = [step + 1 for step, interval in enumerate(intervals) if interval is not None]
    assert ends == [4, 6, 8, 12, 14]
    # Every due hook runs once at its steps, eval before log, and the last step runs both.
    assert calls == [("log", 4, 1.0), ("eval", 6, 1.0), ("log", 8, 1.0), ("eval", 12, 1.0),
                     ("log", 12, 1.0), ("eval", 14, 1.0), ("log", 14, 1.0)]  # fmt: skip
    # An earlier hook's keys reach the later ones' interval.
    assert intervals[11]["seen_by_eval"] == 1.0 and intervals[11]["seen_by_log"] == 1.0


def test_interval_means_are_reduced_then_rank0s_own_keys_added():
    seen = {}

    def reduce(metrics):
        seen.update(metrics)
        return {k: 2 * v for k, v in metrics.items()}

    hooks = Hooks(
        [],
        ends=[Cadence(2)],
        num_steps=2,
        global_batch=4,
        reduce=reduce,
        extra=lambda: ({"solver/wait_ms": 3.0}, {"solver/solve_ms": 1.5}),
    )
    hooks.after_step(0, {"loss/total": 1.0, "codes/joint_k0_s0": 2.0, "codes/joint_k1_s1": 2.0})
    interval = hooks.after_step(
        1, {"loss/total": 3.0, "codes/joint_k0_s0": 4.0, "codes/joint_k1_s1": 0.0}
    )
    assert seen == {"loss/total": 2.0, "codes/joint_k0_s0": 3.0, "codes/joint_k1_s1": 1.0,
                    "solver/wait_ms": 3.0}  # fmt: skip
    assert interval["loss/total"] == 4.0 and interval["solver/wait_ms"] == 6.0
    assert interval["solver/solve_ms"] == 1.5  # not reduced
    # The joint table (6, 2) after the reduction: best match 8 of 8 -> agreement 1.
    assert interval["codes/shape_agreement"] == 1.0
    assert interval["codes/share_0"] == pytest.approx(0.75)
    assert "codes/joint_k0_s0" not in interval
    assert interval["perf/code_wait_share"] == interval["solver/wait_ms"] / interval["perf/step_ms"]


@pytest.mark.parametrize(
    "precision",
    [["train.autocast=none", "train.channels_last=false"],
     ["train.autocast=bf16", "train.channels_last=true"]],
)  # fmt: skip
def test_the_loop_step_is_the_train_step_on_the_steps_batch_and_noise(
    tmp_path, precision, monkeypatch
):
    config = _config(tmp_path, "cascade.discrete_start_stage=0", *precision)
    dataset = open_data(config)
    model, optimizer, scheduler = _parts(config)
    chooser = lambda unary_BK: unary_BK.argmin(dim=1)  # noqa: E731
    # Known delays in the data part and in the train step: the loop's times must include them.
    data_delay_s, step_delay_s = 0.05, 0.08

    def slow_load(*args):
        time.sleep(data_delay_s)
        return load_batch(*args)

    def slow_chooser(unary_BK):
        time.sleep(step_delay_s)
        return chooser(unary_BK)

    monkeypatch.setattr("trainer.loop.load_batch", slow_load)
    loop = TrainLoop(config, dataset, model, optimizer, scheduler, device=torch.device("cpu"),
                     chooser=slow_chooser)  # fmt: skip
    bf16 = config.train.autocast == "bf16"
    assert (loop.precision.autocast_bf16, loop.precision.channels_last) == (bf16, bf16)
    assert model.encoder[2].weight.is_contiguous(memory_format=torch.channels_last) == bf16
    reference, ref_opt, ref_sched = _parts(config)
    if bf16:
        reference.to(memory_format=torch.channels_last)
    for step in range(3):
        metrics = loop.step(step)
        indices = batch_indices_for_step(len(dataset), seed=config.seed, step=step, rank=0,
                                         world_size=1, global_batch=16)  # fmt: skip
        x_B1HW = load_batch(dataset, indices, torch.device("cpu"))
        if bf16:
            x_B1HW = x_B1HW.contiguous(memory_format=torch.channels_last)
        expected = train_step(
            reference, ref_opt, ref_sched, x_B1HW,
            iteration=step, schedule=build_schedule(config),
            eps_generator=torch.Generator().manual_seed(step_seed(config.seed, step, 0)),
            choose_codes=chooser, weight_penalty_coef=config.model.weight_penalty,
            shapes_B=dataset.latent_classes[indices, SHAPE_FACTOR],
            capacities=build_capacities(config), autocast_bf16=bf16,
        )  # fmt: skip
        assert {k: v for k, v in metrics.items() if not k.startswith("perf/")} == expected
        assert metrics["perf/data_ms"] >= 1000 * data_delay_s
        assert metrics["perf/train_step_ms"] >= 1000 * step_delay_s
        assert metrics["discrete/active"] == 1.0
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.equal(p, q)


def test_the_oracle_loop_decodes_with_the_true_shapes(tmp_path):
    config = _config(tmp_path, "model.variant=oracle", "cascade.discrete_start_stage=0")
    dataset = open_data(config)
    loop = TrainLoop(config, dataset, *_parts(config), device=torch.device("cpu"))
    metrics = loop.step(0)
    indices = batch_indices_for_step(len(dataset), seed=0, step=0, rank=0, world_size=1,
                                     global_batch=16)  # fmt: skip
    counts = np.bincount(dataset.latent_classes[indices, SHAPE_FACTOR], minlength=3)
    assert [metrics[f"codes/count_{k}"] for k in range(3)] == counts.tolist()
    assert sum(metrics[f"codes/joint_k{k}_s{k}"] for k in range(3)) == 16.0


def _run_loop(config, dataset, steps, hooks=None):
    model, optimizer, scheduler = _parts(config)
    chooser = lambda unary_BK: unary_BK.argmin(dim=1)  # noqa: E731
    loop = TrainLoop(config, dataset, model, optimizer, scheduler, device=torch.device("cpu"),
                     chooser=chooser)  # fmt: skip
    metrics, intervals = [], []
    for step in steps:
        metrics.append(loop.step(step))
        if hooks is not None:
            intervals.append(hooks.after_step(step, metrics[-1]))
    return loop, model, metrics, intervals


def _no_perf(metrics) -> dict[str, float]:
    return {k: v for k, v in dict(metrics).items() if not k.startswith("perf/")}


@pytest.mark.parametrize("variant", ["cascade", "jointvae"])
def test_the_device_data_and_metrics_path_gives_the_host_paths_numbers(tmp_path, variant):
    """On CPU with both switches on: the same interval means and weights as the defaults
    (steps 18-21 cross into the discrete stage at 20, so both sets of metric names occur)."""
    base = ["cascade.discrete_start_stage=4", f"model.variant={variant}"]
    host = _config(tmp_path, *base)
    device = _config(tmp_path, *base, "train.data_on_device=true", "train.metrics_on_device=true")
    dataset = open_data(host)
    results = []
    for config in (host, device):
        hooks = Hooks([], ends=[Cadence(2)], num_steps=22, global_batch=16)
        results.append(_run_loop(config, dataset, range(18, 22), hooks))
    (host_loop, host_model, host_steps, host_iv), (dev_loop, dev_model, dev_steps, dev_iv) = results
    assert host_loop.device_data is None and dev_loop.device_data is not None
    assert dev_loop.metrics_on_device and not host_loop.metrics_on_device
    for a, b in zip(host_steps, dev_steps, strict=True):
        assert _no_perf(a) == _no_perf(b)
    for a, b in zip(host_iv, dev_iv, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            assert _no_perf(a) == _no_perf(b)
    for p, q in zip(host_model.parameters(), dev_model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_auto_switches_are_off_on_cpu(tmp_path):
    config = _config(tmp_path)
    assert config.train.data_on_device == "auto" and config.train.metrics_on_device == "auto"
    loop, _, metrics, _ = _run_loop(config, open_data(config), [0])
    assert loop.device_data is None and not loop.metrics_on_device
    assert isinstance(metrics[0], dict)


def test_compiled_steps_match_eager_steps(tmp_path, monkeypatch):
    """`train.compile` through the loop: Dynamo captures the encoder and decoder, and a few
    steps, into the discrete stage, give the eager loss and weights to float tolerance. The
    graphs run on the `aot_eager` backend (Dynamo and AOT autograd, eager kernels): Inductor's
    C++ build of them takes minutes on a cold cache here; the GPU tests run Inductor."""
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **_: real_compile(fn, backend="aot_eager"))
    base = ["cascade.discrete_start_stage=0", "cascade.stage_length=5"]
    eager = _config(tmp_path, *base)
    compiled = _config(tmp_path, *base, "train.compile=default")
    dataset = open_data(eager)
    _, eager_model, eager_steps, _ = _run_loop(eager, dataset, range(3))
    torch._dynamo.reset()
    loop, compiled_model, compiled_steps, _ = _run_loop(compiled, dataset, range(3))
    # Dynamo's own count of the graphs it captured: the encoder, the decoder at B and B * K rows.
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 2
    for a, b in zip(eager_steps, compiled_steps, strict=True):
        assert b["loss/total"] == pytest.approx(a["loss/total"], rel=1e-4)
        assert b["loss/recon"] == pytest.approx(a["loss/recon"], rel=1e-4)
    # Adam moves a weight by at most ~lr = 1e-3 a step whatever its gradient, so a fused
    # kernel's rounding in a near-zero gradient can shift it by a visible share of that: 1e-4.
    for p, q in zip(eager_model.parameters(), compiled_model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-4)
    # Compiled in place: the parameter names, and so checkpoints, are the eager model's.
    assert list(compiled_model.state_dict()) == list(eager_model.state_dict())
