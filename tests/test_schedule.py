"""The cascade schedule against a hand-written table, and the authors' optimiser / LR decay.

Shape legend: M continuous dims.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainer.config import CascadeConfig, ModelConfig, OptimConfig
from trainer.core.schedule import CascadeSchedule, make_optimizer

# The authors' run: 300,000 iterations, P = 20,000, T = 4, m = 6 -> stages 0..14.
# Written out by hand from the spec (cascade: s < 4 -> r = s + 1, no code; s >= 4 -> r = min(s, 6),
# code learned; cascade_c: r = min(s + 1, 6)). Columns: stage, first iteration, last iteration,
# r (cascade), discrete active (cascade), r (cascade_c).
AUTHORS_TABLE = [
    (0, 0, 19_999, 1, False, 1),
    (1, 20_000, 39_999, 2, False, 2),
    (2, 40_000, 59_999, 3, False, 3),
    (3, 60_000, 79_999, 4, False, 4),
    (4, 80_000, 99_999, 4, True, 5),
    (5, 100_000, 119_999, 5, True, 6),
    (6, 120_000, 139_999, 6, True, 6),
    (7, 140_000, 159_999, 6, True, 6),
    (8, 160_000, 179_999, 6, True, 6),
    (9, 180_000, 199_999, 6, True, 6),
    (10, 200_000, 219_999, 6, True, 6),
    (11, 220_000, 239_999, 6, True, 6),
    (12, 240_000, 259_999, 6, True, 6),
    (13, 260_000, 279_999, 6, True, 6),
    (14, 280_000, 299_999, 6, True, 6),
]


@pytest.mark.parametrize("stage, first, last, r_cascade, discrete, r_c", AUTHORS_TABLE)
def test_authors_schedule_at_every_stage_boundary(stage, first, last, r_cascade, discrete, r_c):
    cascade = CascadeSchedule()
    cascade_c = CascadeSchedule(discrete_stage=False)
    for iteration in (first, last):
        assert cascade.stage(iteration) == stage
        assert cascade.num_relieved(iteration) == r_cascade
        assert cascade.discrete_active(iteration) is discrete
        betas_M = cascade.betas(iteration)
        assert betas_M.dtype == "float64" and betas_M.shape == (6,)
        assert betas_M.tolist() == [0.1] * r_cascade + [10.0] * (6 - r_cascade)

        assert cascade_c.stage(iteration) == stage
        assert cascade_c.num_relieved(iteration) == r_c
        assert cascade_c.discrete_active(iteration) is False
        assert cascade_c.betas(iteration).tolist() == [0.1] * r_c + [10.0] * (6 - r_c)


def test_discrete_stage_starts_at_iteration_80000():
    schedule = CascadeSchedule()
    assert not schedule.discrete_active(79_999)
    assert schedule.discrete_active(80_000)


def test_custom_settings():
    cascade = CascadeConfig(stage_length=10, discrete_start_stage=1, beta_high=5.0, beta_low=0.5)
    schedule = CascadeSchedule(cascade, num_continuous=3)
    # stage 0: r = 1; stage 1 (discrete): r = 1; stage 2: r = 2; stage 3: 3; stage 9: 3.
    assert [schedule.num_relieved(it) for it in (0, 9, 10, 19, 20, 30, 99)] == [1, 1, 1, 1, 2, 3, 3]
    assert schedule.betas(25).tolist() == [0.5, 0.5, 5.0]
    # T = 0: the code is learned from the first iteration, with r = min(s, M) = 0 at stage 0.
    early = CascadeSchedule(CascadeConfig(discrete_start_stage=0, stage_length=5))
    assert early.discrete_active(0) and early.betas(4).tolist() == [10.0] * 6


# D = 4 (`code_only_stages`), T = 4, M = 6, written out by hand: s < 4 -> r = s + 1; the code
# alone with the same 4 dims for stages 4..7; then r = s - 3: 5 at stage 8, 6 from stage 9 on.
CODE_ONLY_4_TABLE = [(0, 1), (3, 4), (4, 4), (5, 4), (7, 4), (8, 5), (9, 6), (14, 6)]


@pytest.mark.parametrize("stage, r", CODE_ONLY_4_TABLE)
def test_code_only_stages_hold_the_relieved_dims_for_d_stages(stage, r):
    schedule = CascadeSchedule(CascadeConfig(stage_length=100, code_only_stages=4))
    for iteration in (100 * stage, 100 * stage + 99):
        assert schedule.num_relieved(iteration) == r
        assert schedule.discrete_active(iteration) is (stage >= 4)
    # cascade_c has no discrete stage, so D changes nothing there.
    cascade_c = CascadeSchedule(
        CascadeConfig(stage_length=100, code_only_stages=4), discrete_stage=False
    )
    assert cascade_c.num_relieved(100 * stage) == min(stage + 1, 6)


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: ModelConfig(num_continuous=0), "num_continuous"),
        (lambda: CascadeConfig(stage_length=0), "stage_length"),
        (lambda: CascadeConfig(discrete_start_stage=-1), "discrete_start_stage"),
        (lambda: CascadeConfig(code_only_stages=0), "code_only_stages"),
        (lambda: CascadeConfig(beta_low=-0.1), "beta_low"),
    ],
)
def test_schedule_settings_are_validated_by_their_config_section(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_schedule_reads_its_config_section():
    cascade = CascadeConfig(stage_length=7, discrete_start_stage=2, beta_high=3.0, beta_low=0.2)
    schedule = CascadeSchedule(cascade, num_continuous=2)
    assert (schedule.stage_length, schedule.discrete_start_stage) == (7, 2)
    assert (schedule.beta_high, schedule.beta_low) == (3.0, 0.2)
    assert schedule.betas(0).tolist() == [0.2, 3.0]  # stage 0: r = 1
    assert schedule.betas(14).tolist() == [0.2, 0.2]  # stage 2, discrete: r = min(2, M) = 2
    assert not schedule.discrete_active(13) and schedule.discrete_active(14)


def test_negative_iteration_rejected():
    with pytest.raises(ValueError, match="iteration"):
        CascadeSchedule().stage(-1)


def test_optimizer_is_authors_adam():
    optimizer, _ = make_optimizer(nn.Linear(2, 2))
    assert isinstance(optimizer, torch.optim.Adam)
    group = optimizer.param_groups[0]
    assert group["lr"] == 1e-4 and group["betas"] == (0.9, 0.999)


def test_lr_staircase_decays_by_point_three_every_50000():
    _, scheduler = make_optimizer(nn.Linear(2, 2))
    assert isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR)
    factor = scheduler.lr_lambdas[0]
    # 0.3 ** k for k = iteration // 50,000; 0.3^2 = 0.09, 0.3^5 = 0.00243.
    expected = {0: 1.0, 49_999: 1.0, 50_000: 0.3, 99_999: 0.3, 100_000: 0.09, 299_999: 0.00243}
    for iteration, value in expected.items():
        assert factor(iteration) == pytest.approx(value, rel=1e-12), iteration


def test_scheduler_steps_and_state_dict_round_trip():
    layer = nn.Linear(2, 2)
    optimizer, scheduler = make_optimizer(layer, OptimConfig(decay_every=3))
    lrs = []
    for _ in range(7):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    # 1e-4 for iterations 0-2, 3e-5 for 3-5, 9e-6 from 6.
    assert lrs == pytest.approx([1e-4] * 3 + [3e-5] * 3 + [9e-6], rel=1e-12)

    state = scheduler.state_dict()
    assert state["lr_lambdas"][0] == {"decay_every": 3, "decay_rate": 0.3}
    optimizer2, scheduler2 = make_optimizer(layer, OptimConfig(decay_every=3))
    optimizer2.load_state_dict(optimizer.state_dict())
    scheduler2.load_state_dict(state)
    assert scheduler2.last_epoch == 7
    assert optimizer2.param_groups[0]["lr"] == pytest.approx(9e-6, rel=1e-12)
    for _ in range(2):
        optimizer2.step()
        scheduler2.step()
    assert optimizer2.param_groups[0]["lr"] == pytest.approx(2.7e-6, rel=1e-12)  # iteration 9


def test_optimizer_settings_are_validated_by_their_config_section():
    with pytest.raises(ValueError, match="decay_every"):
        OptimConfig(decay_every=0)
    with pytest.raises(ValueError, match="decay_rate"):
        OptimConfig(decay_rate=0.0)


def _two_adam_steps(implementation: str) -> tuple[torch.optim.Optimizer, torch.Tensor]:
    """Two Adam steps of a small conv net from a fixed start; (optimizer, flat parameters)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    optimizer, _ = make_optimizer(model, OptimConfig(lr=1e-2, implementation=implementation))
    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    for _ in range(2):
        optimizer.zero_grad()
        model(x).pow(2).mean().backward()
        optimizer.step()
    return optimizer, torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize(
    "implementation, foreach, fused",
    [("for_loop", False, False), ("foreach", True, False), ("fused", False, True),
     ("auto", True, False)],  # auto on CPU: foreach
)  # fmt: skip
def test_the_adam_implementation_is_the_one_configured(implementation, foreach, fused):
    optimizer, _ = _two_adam_steps(implementation)
    group = optimizer.param_groups[0]
    assert group["foreach"] is foreach and group["fused"] is fused


def test_adam_implementations_take_the_for_loop_step():
    _, reference = _two_adam_steps("for_loop")
    # foreach on CPU: the same operations grouped, bit for bit (what lets auto use it there).
    assert torch.equal(_two_adam_steps("foreach")[1], reference)
    torch.testing.assert_close(_two_adam_steps("fused")[1], reference, rtol=1e-5, atol=1e-6)


def test_auto_adam_is_fused_on_cuda_and_foreach_on_cpu():
    from trainer.core.schedule import adam_implementation

    assert adam_implementation("auto", torch.device("cuda")) == "fused"
    assert adam_implementation("auto", torch.device("cpu")) == "foreach"
    assert adam_implementation("for_loop", torch.device("cuda")) == "for_loop"
