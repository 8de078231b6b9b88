"""Tests of trainer.core.step: one train step (noise from a generator, the loss it minimises,
the codes chosen only in the discrete stage, the learning rate, DDP), its checks of non-finite
values before any update, and bf16 autocast.

Shape suffixes (CONTRIBUTING.md): B batch, K categories.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.distributed as dist
from step_helpers import (
    AUTHORS,
    argmin_codes,
    model_and_optimizer,
    nan_images,
    squares,
    step_both_ways,
)
from torch.nn.parallel import DistributedDataParallel

from trainer.config import CascadeConfig
from trainer.core.losses import cascade_loss
from trainer.core.model import JointVAE
from trainer.core.schedule import CascadeSchedule, make_optimizer
from trainer.core.step import CapacitySchedule, NonFiniteLossError, sample_eps, train_step
from trainer.core.types import VAEOutput
from trainer.core.unary import unary_matrix
from trainer.distributed.codes import GlobalCodeClient, NonFiniteUnaryError


def test_sample_eps_reproducible_from_generator():
    eps_a = sample_eps(torch.Generator().manual_seed(7), 4, 6, "cpu")
    gen = torch.Generator().manual_seed(7)
    eps_b = sample_eps(gen, 4, 6, torch.device("cpu"))
    assert eps_a.shape == (4, 6) and eps_a.dtype == torch.float32
    torch.testing.assert_close(eps_a, eps_b, rtol=0, atol=0)
    torch.testing.assert_close(eps_a, torch.randn(4, 6, generator=torch.Generator().manual_seed(7)))
    assert not torch.equal(sample_eps(gen, 4, 6, "cpu"), eps_b)  # the stream advances


def test_step_uses_generator_eps_and_reports_the_loss_it_minimised():
    model, optimizer, scheduler = model_and_optimizer()
    images = squares(4, seed=1)
    reference = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(11)
    eps_BM = sample_eps(torch.Generator().manual_seed(11), 4, 6, "cpu")
    mu_BM, sigma_BM, z_BM = reference.encode_sample(images, eps_BM)
    out = VAEOutput(mu_BM, sigma_BM, z_BM, reference.decode(z_BM, None), None, None)
    betas_M = torch.as_tensor(AUTHORS.betas(0), dtype=torch.float32)
    penalty = 4e-5 * reference.weight_penalty()
    expected_loss, expected = cascade_loss(out, images, betas_M, penalty, 3)

    metrics = train_step(
        model, optimizer, scheduler, images, iteration=0, schedule=AUTHORS, eps_generator=gen
    )
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, rel=1e-5), key
    assert metrics["loss/weight_penalty"] == pytest.approx(
        4e-5 * reference.weight_penalty().item(), rel=1e-6
    )
    assert [metrics[f"beta/z{j}"] for j in range(6)] == pytest.approx([0.1] + [10.0] * 5)
    assert metrics["lr"] == 1e-4 and metrics["discrete/active"] == 0.0
    # The step moved the weights (Adam's first step moves each parameter by about lr).
    moved = (model.decoder[-1].bias - reference.decoder[-1].bias).abs().item()
    assert moved == pytest.approx(1e-4, rel=0.01)
    assert expected_loss.item() == pytest.approx(metrics["loss/total"], rel=1e-5)


def test_weight_penalty_switch():
    model, optimizer, scheduler = model_and_optimizer()
    metrics = train_step(
        model,
        optimizer,
        scheduler,
        squares(4, seed=2),
        iteration=0,
        schedule=AUTHORS,
        eps_generator=torch.Generator().manual_seed(0),
        weight_penalty_coef=0.0,
    )
    assert metrics["loss/weight_penalty"] == 0.0
    assert metrics["loss/total"] == pytest.approx(metrics["loss/recon"] + metrics["loss/kl"])


@pytest.mark.parametrize(
    "iteration, num_categories, expect_codes",
    [(79_999, 3, False), (80_000, 3, True), (299_999, 3, True), (100_000, 0, False)],
)
def test_codes_chosen_only_in_discrete_stage_with_one_encoder_pass(
    iteration, num_categories, expect_codes
):
    model, optimizer, scheduler = model_and_optimizer(num_categories)
    calls = {"choose": 0, "encoder": 0}

    def choose(unary_BK: torch.Tensor) -> torch.Tensor:
        calls["choose"] += 1
        return torch.tensor([1, 1, 0, 2, 1])

    def count_encoder_pass(*_) -> None:
        calls["encoder"] += 1

    hook = model.encoder.register_forward_hook(count_encoder_pass)
    try:
        metrics = train_step(
            model,
            optimizer,
            scheduler,
            squares(5, seed=3),
            iteration=iteration,
            schedule=AUTHORS,
            eps_generator=torch.Generator().manual_seed(0),
            choose_codes=choose,
        )
    finally:
        hook.remove()
    assert calls == {"choose": int(expect_codes), "encoder": 1}
    assert metrics["discrete/active"] == float(expect_codes)
    codes = {k: v for k, v in metrics.items() if k.startswith("codes/")}
    if expect_codes:
        assert codes == {"codes/count_0": 1.0, "codes/count_1": 3.0, "codes/count_2": 1.0}
    else:
        assert codes == {}


def test_discrete_stage_without_chooser_is_an_error():
    model, optimizer, scheduler = model_and_optimizer()
    with pytest.raises(ValueError, match="choose_codes"):
        train_step(
            model,
            optimizer,
            scheduler,
            squares(2, seed=4),
            iteration=80_000,
            schedule=AUTHORS,
            eps_generator=torch.Generator(),
        )


def test_schedule_must_match_the_model():
    model, optimizer, scheduler = model_and_optimizer()
    with pytest.raises(ValueError, match="num_continuous"):
        train_step(
            model,
            optimizer,
            scheduler,
            squares(2, seed=4),
            iteration=0,
            schedule=CascadeSchedule(num_continuous=5),
            eps_generator=torch.Generator(),
        )


def test_lr_reported_is_the_one_used_and_decays():
    model, optimizer, scheduler = model_and_optimizer(decay_every=2)
    images = squares(2, seed=5)
    gen = torch.Generator().manual_seed(0)
    lrs = [
        train_step(
            model, optimizer, scheduler, images, iteration=it, schedule=AUTHORS, eps_generator=gen
        )["lr"]
        for it in range(5)
    ]
    assert lrs == pytest.approx([1e-4, 1e-4, 3e-5, 3e-5, 9e-6], rel=1e-12)


def test_ddp_wrapped_step_equals_plain_step(tmp_path):
    """World size 1 over gloo: the wrapper must change nothing (same metrics, same weights)."""
    assert not dist.is_initialized(), (
        "an earlier test left a default process group in this process (it must destroy it)"
    )
    images = squares(4, seed=6)
    plain = model_and_optimizer(seed=3)
    wrapped_inner, opt_wrapped, sched_wrapped = model_and_optimizer(seed=3)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        wrapped = (DistributedDataParallel(wrapped_inner), opt_wrapped, sched_wrapped)
        for it in (79_999, 80_000):  # last plain step, first step with codes
            m_plain, m_wrapped = (
                train_step(
                    *setup,
                    images,
                    iteration=it,
                    schedule=AUTHORS,
                    eps_generator=torch.Generator().manual_seed(it),
                    choose_codes=argmin_codes,
                )
                for setup in (plain, wrapped)
            )
            assert m_wrapped.keys() == m_plain.keys()
            for key in m_plain:
                assert m_wrapped[key] == pytest.approx(m_plain[key], rel=1e-5), key
        assert m_wrapped["discrete/active"] == 1.0
    finally:
        dist.destroy_process_group()
    for p_plain, p_wrapped in zip(plain[0].parameters(), wrapped_inner.parameters(), strict=True):
        torch.testing.assert_close(p_plain, p_wrapped)


def test_a_few_hundred_steps_lower_the_loss():
    """Both phases of a compressed cascade on 64 images of squares: the loss must fall well."""
    images = squares(64, seed=7)
    model, optimizer, scheduler = model_and_optimizer(seed=0, lr=1e-3)
    cascade = CascadeConfig(stage_length=60, discrete_start_stage=2)  # codes from step 120
    schedule = CascadeSchedule(cascade)
    gen = torch.Generator().manual_seed(0)
    batch_gen = torch.Generator().manual_seed(1)
    losses, active = [], []
    for it in range(200):
        batch = images[torch.randint(0, 64, (8,), generator=batch_gen)]
        metrics = train_step(
            model,
            optimizer,
            scheduler,
            batch,
            iteration=it,
            schedule=schedule,
            eps_generator=gen,
            choose_codes=argmin_codes,
        )
        losses.append(metrics["loss/total"])
        active.append(metrics["discrete/active"])
    assert active[119] == 0.0 and active[120] == 1.0
    initial = sum(losses[:10]) / 10
    final = sum(losses[-20:]) / 20
    assert final < 0.8 * initial, (initial, final)


def _assert_untouched(model, optimizer, scheduler, before) -> None:
    for p_now, p_before in zip(model.parameters(), before.parameters(), strict=True):
        torch.testing.assert_close(p_now, p_before, rtol=0, atol=0)
    assert optimizer.state_dict()["state"] == {}  # Adam never stepped
    assert scheduler.last_epoch == 0


def test_an_infinite_kl_weight_stops_the_step_before_any_update():
    model, optimizer, scheduler = model_and_optimizer()
    before = copy.deepcopy(model)
    cascade = CascadeConfig.model_construct(beta_high=float("inf"))  # past the schema's checks
    schedule = CascadeSchedule(cascade)
    with pytest.raises(NonFiniteLossError) as info:
        train_step(
            model,
            optimizer,
            scheduler,
            squares(4, seed=8),
            iteration=3,
            schedule=schedule,
            eps_generator=torch.Generator().manual_seed(0),
        )
    err = info.value
    assert err.step == 3
    # Dims 1..5 carry beta_high = inf: their weights and the weighted KL sum are infinite; the
    # reconstruction and the unweighted KLs are finite.
    assert sorted(err.non_finite) == ["beta/z1", "beta/z2", "beta/z3", "beta/z4", "beta/z5"] + [
        "loss/kl",
        "loss/total",
    ]
    assert math.isfinite(err.metrics["loss/recon"]) and math.isfinite(err.metrics["kl/z1"])
    assert str(err).startswith("iteration 3: the loss is not finite (loss/total=inf, loss/kl=inf")
    _assert_untouched(model, optimizer, scheduler, before)


def test_a_nan_image_stops_the_step_naming_the_reconstruction():
    model, optimizer, scheduler = model_and_optimizer()
    before = copy.deepcopy(model)
    with pytest.raises(NonFiniteLossError, match=r"iteration 0: .*loss/recon=nan") as info:
        train_step(
            model,
            optimizer,
            scheduler,
            nan_images(4, seed=9),
            iteration=0,
            schedule=AUTHORS,
            eps_generator=torch.Generator().manual_seed(0),
        )
    # The NaN pixel reaches the reconstruction and, through the encoder, every batch-mean KL;
    # the KL weights and the weight penalty stay finite.
    kls = [f"kl/z{j}" for j in range(6)]
    assert list(info.value.non_finite) == ["loss/total", "loss/recon", "loss/kl", *kls]
    _assert_untouched(model, optimizer, scheduler, before)


def test_a_nan_image_stops_a_jointvae_step():
    torch.manual_seed(0)
    model = JointVAE(6, 3, 0.67)
    optimizer, scheduler = make_optimizer(model)
    before = copy.deepcopy(model)
    with pytest.raises(NonFiniteLossError, match=r"iteration 5: .*loss/recon=nan"):
        train_step(
            model,
            optimizer,
            scheduler,
            nan_images(4, seed=10),
            iteration=5,
            schedule=AUTHORS,
            eps_generator=torch.Generator().manual_seed(0),
            capacities=CapacitySchedule(),
        )
    _assert_untouched(model, optimizer, scheduler, before)


def test_a_nan_image_in_the_discrete_stage_names_the_unary_not_the_solver():
    model, optimizer, scheduler = model_and_optimizer()
    calls = []

    def solve(unary_NK):
        calls.append(unary_NK)
        return unary_NK.argmin(axis=1), 0.0

    client = GlobalCodeClient(solve, rank=0, world_size=1)
    client.step = 80_000
    with pytest.raises(NonFiniteUnaryError, match=r"step 80000: the unary matrix \(4, 3\)"):
        train_step(
            model,
            optimizer,
            scheduler,
            nan_images(4, seed=11),
            iteration=80_000,
            schedule=AUTHORS,
            eps_generator=torch.Generator().manual_seed(0),
            choose_codes=client,
        )
    assert calls == []  # the solver was never asked


def test_the_chooser_sees_the_unary_of_the_decoded_z_and_its_codes_reach_the_decoder():
    model, optimizer, scheduler = model_and_optimizer(seed=7)
    before = copy.deepcopy(model)
    images = squares(4, seed=8)
    fixed_B = torch.tensor([2, 0, 1, 2], dtype=torch.int32)  # any integer dtype is made int64
    seen_unary, decoder_inputs = [], []

    def choose(unary_BK: torch.Tensor) -> torch.Tensor:
        seen_unary.append(unary_BK)
        return fixed_B

    hook = model.decoder[0].register_forward_hook(
        lambda _m, inputs, _o: decoder_inputs.append(inputs[0].detach())
    )
    try:
        metrics = train_step(
            model, optimizer, scheduler, images, iteration=80_000, schedule=AUTHORS,
            eps_generator=torch.Generator().manual_seed(9), choose_codes=choose,
        )  # fmt: skip
    finally:
        hook.remove()
    eps_BM = sample_eps(torch.Generator().manual_seed(9), 4, 6, "cpu")
    _mu, _sigma, z_BM = before.encode_sample(images, eps_BM)
    # Two decoder passes: the batched unary one (B * K rows), then the decoding (B rows).
    assert [inp.shape[0] for inp in decoder_inputs] == [12, 4]
    expected_d_BK = torch.tensor([[0.0, 0, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1]])
    torch.testing.assert_close(decoder_inputs[1][:, 6:], expected_d_BK)
    torch.testing.assert_close(decoder_inputs[1][:, :6], z_BM.detach())
    assert len(seen_unary) == 1 and not seen_unary[0].requires_grad
    torch.testing.assert_close(seen_unary[0], unary_matrix(before, z_BM, images))
    assert metrics["codes/count_0"] == 1.0 and metrics["codes/count_2"] == 2.0


@pytest.mark.parametrize(
    "codes_B, match",
    [
        (torch.tensor([0, 3, 1, 0]), r"\[0, 3\)"),
        (torch.tensor([0, -1, 1, 0]), r"\[0, 3\)"),
        (torch.tensor([0, 1, 1]), "shape"),
        (torch.tensor([0.0, 1.0, 1.0, 0.0]), "integer"),
    ],
)
def test_bad_codes_from_the_chooser_are_rejected_before_any_update(codes_B, match):
    model, optimizer, scheduler = model_and_optimizer()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=match):
        train_step(
            model, optimizer, scheduler, squares(4, seed=1), iteration=80_000,
            schedule=AUTHORS, eps_generator=torch.Generator(), choose_codes=lambda _u: codes_B,
        )  # fmt: skip
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def _ddp_rank(rank: int, port: int, out_dir: str) -> None:
    import datetime
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=datetime.timedelta(60))
    model, optimizer, scheduler = model_and_optimizer(seed=11)
    images = squares(8, seed=12)[rank * 4 : (rank + 1) * 4]
    ddp = DistributedDataParallel(model)
    train_step(
        ddp, optimizer, scheduler, images, iteration=80_000, schedule=AUTHORS,
        eps_generator=torch.Generator().manual_seed(rank), choose_codes=argmin_codes,
    )  # fmt: skip
    torch.save({n: p.detach().clone() for n, p in model.named_parameters()},
               os.path.join(out_dir, f"rank{rank}.pt"))  # fmt: skip
    dist.destroy_process_group()


def test_two_ddp_ranks_take_the_full_batch_step_of_one_process(tmp_path):
    """Encoding outside DDP's forward: the encoder's gradients must still be all-reduced. Two
    gloo ranks with half the batch each end with the weights of one process on the whole batch
    (same eps per image, codes by argmin, which is per image)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_ddp_rank, args=(port, str(tmp_path)), nprocs=2, start_method="spawn")
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]

    model, optimizer, scheduler = model_and_optimizer(seed=11)
    eps = [sample_eps(torch.Generator().manual_seed(r), 4, 6, "cpu") for r in range(2)]
    full_eps = torch.cat(eps)

    images = squares(8, seed=12)
    # The single process must draw the same eps as the two ranks did: patch sample_eps.
    import trainer.core.step as step_module

    original = step_module.sample_eps
    step_module.sample_eps = lambda *_args, **_kw: full_eps
    try:
        train_step(
            model, optimizer, scheduler, images, iteration=80_000, schedule=AUTHORS,
            eps_generator=torch.Generator(), choose_codes=argmin_codes,
        )  # fmt: skip
    finally:
        step_module.sample_eps = original
    single = dict(model.named_parameters())
    encoder_names = [n for n in single if n.startswith("encoder.")]
    assert encoder_names
    for name, value in single.items():
        torch.testing.assert_close(ranks[0][name], ranks[1][name], rtol=0, atol=0)
        torch.testing.assert_close(ranks[0][name], value.detach(), rtol=1e-5, atol=1e-6)
    # The step moved the encoder: a gradient reached it on both ranks.
    untouched = model_and_optimizer(seed=11)[0]
    assert not torch.equal(ranks[0]["encoder.0.weight"], untouched.encoder[0].weight)


def test_a_bf16_autocast_step_is_finite_and_close_to_float32():
    fp32 = step_both_ways(80_000, argmin_codes)[0][0]  # the float32 step, metrics read
    model, optimizer, scheduler = model_and_optimizer(seed=3)
    bf16 = train_step(
        model, optimizer, scheduler, squares(6, seed=4), iteration=80_000, schedule=AUTHORS,
        eps_generator=torch.Generator().manual_seed(5), choose_codes=argmin_codes,
        autocast_bf16=True,
    )  # fmt: skip
    assert math.isfinite(bf16["loss/total"])
    assert bf16["loss/total"] == pytest.approx(fp32["loss/total"], rel=2e-2)
    assert bf16["loss/recon"] == pytest.approx(fp32["loss/recon"], rel=2e-2)
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_a_bf16_unary_matrix_is_float32():
    model, _, _ = model_and_optimizer(seed=3)
    images = squares(4, seed=4)
    z_BM = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        unary_BK = unary_matrix(model, z_BM, images)
    assert unary_BK.dtype == torch.float32
    torch.testing.assert_close(unary_BK, unary_matrix(model, z_BM, images), rtol=2e-2, atol=0)
