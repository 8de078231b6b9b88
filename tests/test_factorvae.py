"""FactorVAE (Kim & Mnih 2018): the permutation, the density-ratio estimate of the total
correlation, its step, checkpoints and the loop."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from trainer.build import build_extras, build_model, build_optimizer, build_schedule, open_data
from trainer.checkpoint import TrainState, read_checkpoint, restore_state, save_checkpoint
from trainer.config import load_config
from trainer.core.step import sample_eps
from trainer.loop import TrainLoop
from trainer.reported import interval_keys
from trainer.variants.factorvae import (
    DISCRIMINATOR,
    TC_KEYS,
    Discriminator,
    discriminator_loss,
    permutation_indices,
    permute_dims,
    step,
    tc_estimate,
)

ROOT = Path(__file__).resolve().parent.parent
DEBUG = ROOT / "configs" / "debug.yaml"
FACTORVAE = [  # the debug config as FactorVAE, with a small discriminator (2 x 64 units)
    "model.variant=factorvae",
    "eval.protocols=[authors_factorvae]",
    "factorvae.discriminator_layers=2",
    "factorvae.discriminator_units=64",
]


def _config(tmp_path, *overrides):
    return load_config(DEBUG, [f"data.cache_dir={tmp_path / 'cache'}", *FACTORVAE, *overrides])


# --------------------------------------------------------------------------- the permutation
def test_each_column_is_a_permutation_of_the_batch_and_the_joint_is_broken():
    generator = torch.Generator().manual_seed(0)
    batch = 4096
    x_B = torch.randn(batch, generator=generator)
    z_BM = torch.stack([x_B, x_B, 2 * x_B + 1], dim=1)  # perfectly correlated dims
    order_BM = permutation_indices(generator, batch, 3)
    for j in range(3):  # every column of the order is 0..B-1 once
        assert torch.equal(order_BM[:, j].sort().values, torch.arange(batch))
    permuted_BM = permute_dims(z_BM, order_BM)
    for j in range(3):  # the multiset of every column is kept
        assert torch.equal(permuted_BM[:, j].sort().values, z_BM[:, j].sort().values)
    assert torch.corrcoef(z_BM.T)[0, 1] == pytest.approx(1.0)
    corr = torch.corrcoef(permuted_BM.T)
    # Independent permutations of 4,096 rows: |corr| ~ 1 / sqrt(4096) = 0.016.
    for i, j in ((0, 1), (0, 2), (1, 2)):
        assert abs(float(corr[i, j])) < 0.06
    # The columns are permuted independently, not by one shared order.
    assert not torch.equal(order_BM[:, 0], order_BM[:, 1])


def test_the_permutation_is_a_function_of_the_generator_seed():
    a = permutation_indices(torch.Generator().manual_seed(5), 64, 6)
    b = permutation_indices(torch.Generator().manual_seed(5), 64, 6)
    assert torch.equal(a, b)


# --------------------------------------------------------------------------- the TC estimate
def test_the_tc_estimate_is_the_mean_logit_difference_of_known_logits():
    logits_B2 = torch.tensor([[2.0, -1.0], [0.5, 0.5], [-1.0, 3.0], [4.0, 0.0]])
    # (3 + 0 - 4 + 4) / 4 = 0.75
    assert float(tc_estimate(logits_B2)) == pytest.approx(0.75)
    # Equivalently log D / (1 - D) with D the softmax probability of class 0.
    d_B = torch.softmax(logits_B2, dim=1)[:, 0]
    assert float(torch.log(d_B / (1 - d_B)).mean()) == pytest.approx(0.75, abs=1e-6)


def test_a_hand_built_discriminator_gives_the_hand_computed_estimate():
    """D with one hidden layer of 1 unit: w = 1, slope 0.2, last layer (+1, -1): on z = (a, b),
    hidden h = leaky(a + b), logits (h, -h); TC estimate = mean 2 h."""
    d = Discriminator(2, layers=1, units=1, leaky_slope=0.2)
    with torch.no_grad():
        d.net[0].weight.copy_(torch.tensor([[1.0, 1.0]]))
        d.net[0].bias.zero_()
        d.net[2].weight.copy_(torch.tensor([[1.0], [-1.0]]))
        d.net[2].bias.zero_()
    z_BM = torch.tensor([[1.0, 2.0], [-1.0, -4.0]])  # h = 3 and 0.2 * -5 = -1
    with torch.no_grad():
        assert float(tc_estimate(d(z_BM))) == pytest.approx((2 * 3 + 2 * -1) / 2)
    # A discriminator that classes every sample right with logit gap 4 loses log(1 + e^-4).
    joint = torch.tensor([[2.0, -2.0]])
    permuted = torch.tensor([[-2.0, 2.0]])
    expected = math.log1p(math.exp(-4))
    assert float(discriminator_loss(joint, permuted)) == pytest.approx(expected, rel=1e-5)


def _train_discriminator(rho: float, seed: int = 0, steps: int = 800) -> float:
    """TC estimate of a discriminator trained on a bivariate Gaussian with correlation rho,
    permuted batches as the other class, then read on fresh joint samples."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    cov = torch.tensor([[1.0, rho], [rho, 1.0]])
    chol = torch.linalg.cholesky(cov)
    d = Discriminator(2, layers=2, units=64, leaky_slope=0.2)
    optimizer = torch.optim.Adam(d.parameters(), lr=1e-3, betas=(0.5, 0.9))
    batch = 256

    def sample(n):
        return torch.randn(n, 2, generator=generator) @ chol.T

    for _ in range(steps):
        z = sample(batch)
        permuted = permute_dims(z, permutation_indices(generator, batch, 2))
        logits = d(torch.cat([z, permuted]))
        loss = discriminator_loss(logits[:batch], logits[batch:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return float(tc_estimate(d(sample(20_000))))


@pytest.fixture
def one_thread():
    """One torch thread (a tiny MLP gains nothing from more, and on a loaded machine two
    threads waiting for each other at every op slow it down many times)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_a_trained_discriminator_estimates_the_analytic_total_correlation(one_thread):
    """Bivariate Gaussian with correlation rho: TC = -0.5 log(1 - rho^2) nats (0.830 at 0.9,
    0 for independent dims). A 2 x 64 MLP trained on 800 batches of 256 read 0.864 and 0.880
    (seeds 0, 1) at rho = 0.9 and 0.001, -0.004 at rho = 0: tolerances 0.12 and 0.05 nats."""
    rho = 0.9
    analytic = -0.5 * math.log(1 - rho**2)
    assert _train_discriminator(rho) == pytest.approx(analytic, abs=0.12)
    assert _train_discriminator(0.0) == pytest.approx(0.0, abs=0.05)


# --------------------------------------------------------------------------- the step
def _parts(config):
    torch.manual_seed(config.seed)
    model = build_model(config)
    optimizer, scheduler = build_optimizer(config, model)
    extras = build_extras(config)
    return model, optimizer, scheduler, extras


def _images(seed: int, count: int = 8) -> torch.Tensor:
    return (
        torch.rand(count, 1, 64, 64, generator=torch.Generator().manual_seed(seed)) > 0.9
    ).float()


def test_the_step_adds_gamma_times_the_estimate_and_trains_both_networks(tmp_path):
    config = _config(tmp_path, "factorvae.gamma=10.0")
    model, optimizer, scheduler, extras = _parts(config)
    d = extras.module(DISCRIMINATOR)
    d_before = [p.detach().clone() for p in d.parameters()]
    vae_before = [p.detach().clone() for p in model.parameters()]
    metrics = step(
        model, optimizer, scheduler, _images(0), iteration=0, schedule=build_schedule(config),
        eps_generator=torch.Generator().manual_seed(1), extras=extras,
        weight_penalty_coef=config.model.weight_penalty,
    )  # fmt: skip
    assert set(TC_KEYS) <= set(metrics)
    assert metrics["loss/tc"] == pytest.approx(10.0 * metrics["tc/estimate"], rel=1e-5)
    expected = metrics["loss/recon"] + metrics["loss/kl"] + metrics["loss/weight_penalty"]
    assert metrics["loss/total"] == pytest.approx(expected + metrics["loss/tc"], rel=1e-5)
    assert [metrics[f"beta/z{j}"] for j in range(6)] == [1.0] * 6
    assert 0.0 <= metrics["discriminator/accuracy"] <= 1.0
    assert metrics["loss/discriminator"] > 0 and metrics["discrete/active"] == 0.0
    assert all(not torch.equal(a, b) for a, b in zip(d_before, d.parameters(), strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(vae_before, model.parameters(), strict=True))


def test_the_vae_term_moves_the_encoder_not_the_discriminator(tmp_path):
    """The VAE's TC term gives D no gradient: after the step, D equals a copy of it stepped
    once by Adam on its own loss alone, on this step's z and permutation."""
    config = _config(tmp_path)
    model, optimizer, scheduler, extras = _parts(config)
    d = extras.module(DISCRIMINATOR)
    reference = Discriminator(6, config.factorvae.discriminator_layers,
                              config.factorvae.discriminator_units)  # fmt: skip
    reference.load_state_dict(d.state_dict())
    ref_opt = torch.optim.Adam(reference.parameters(), lr=config.factorvae.discriminator_lr,
                               betas=(0.5, 0.9))  # fmt: skip
    x = _images(3)
    generator_seed = 7
    with torch.no_grad():  # this step's z, drawn as the step draws it
        generator = torch.Generator().manual_seed(generator_seed)
        eps = sample_eps(generator, 8, 6, "cpu")
        order = permutation_indices(generator, 8, 6)
        _, _, z = model.encode_sample(x, eps)
    step(
        model, optimizer, scheduler, x, iteration=0, schedule=build_schedule(config),
        eps_generator=torch.Generator().manual_seed(generator_seed), extras=extras,
    )  # fmt: skip
    logits = reference(torch.cat([z, permute_dims(z, order)]))
    ref_opt.zero_grad()
    discriminator_loss(logits[:8], logits[8:]).backward()
    ref_opt.step()
    for p, q in zip(d.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)


def test_the_device_metrics_path_gives_the_host_numbers(tmp_path):
    config = _config(tmp_path)
    results = []
    for on_device in (False, True):
        model, optimizer, scheduler, extras = _parts(config)
        metrics = step(
            model, optimizer, scheduler, _images(0), iteration=0,
            schedule=build_schedule(config), eps_generator=torch.Generator().manual_seed(1),
            extras=extras, metrics_on_device=on_device,
        )  # fmt: skip
        results.append((dict(metrics), list(model.parameters())))
    (host, host_params), (device, device_params) = results
    assert host.keys() == device.keys()
    for key in host:
        assert device[key] == pytest.approx(host[key], rel=1e-6), key
    for p, q in zip(host_params, device_params, strict=True):
        assert torch.equal(p, q)


# --------------------------------------------------------------------------- loop and resume
def test_the_loop_reports_its_keys_and_resumes_exactly_from_a_checkpoint(tmp_path):
    """Steps 0-5 straight, against steps 0-2, a checkpoint, a fresh process state restored
    from it, steps 3-5: the same losses and the same VAE and discriminator weights."""
    config = _config(tmp_path)
    dataset = open_data(config)

    def fresh():
        model, optimizer, scheduler, extras = _parts(config)
        loop = TrainLoop(config, dataset, model, optimizer, scheduler,
                         device=torch.device("cpu"), extras=extras)  # fmt: skip
        return loop, TrainState(model, optimizer, scheduler, extras=extras)

    straight, _ = fresh()
    straight_metrics = [straight.step(s) for s in range(6)]
    keys = interval_keys(config)
    assert {k for k in straight_metrics[0] if not k.startswith("perf/")} <= keys

    first, state = fresh()
    for s in range(3):
        first.step(s)
    state.next_step = 3
    save_checkpoint(tmp_path / "ckpt", state, config.to_yaml())
    payload, _ = read_checkpoint(tmp_path / "ckpt")
    assert set(payload["extras"]["modules"]) == {DISCRIMINATOR}
    second, restored = fresh()
    restore_state(payload, restored)
    resumed_metrics = [second.step(s) for s in range(3, 6)]
    for a, b in zip(straight_metrics[3:], resumed_metrics, strict=True):
        assert {k: v for k, v in a.items() if not k.startswith("perf/")} == {
            k: v for k, v in b.items() if not k.startswith("perf/")
        }
    for a, b in zip(straight.model.parameters(), second.model.parameters(), strict=True):
        assert torch.equal(a, b)
    d_a, d_b = straight.extras.module(DISCRIMINATOR), second.extras.module(DISCRIMINATOR)
    for a, b in zip(d_a.parameters(), d_b.parameters(), strict=True):
        assert torch.equal(a, b)
    assert (
        straight.extras.optimizers[DISCRIMINATOR].state_dict()["state"][0]["step"]
        == second.extras.optimizers[DISCRIMINATOR].state_dict()["state"][0]["step"]
    )


def test_the_paper_config_holds_kim_and_mnih_settings():
    config = load_config(ROOT / "configs" / "factorvae.yaml")
    f = config.factorvae
    assert config.model.variant == "factorvae" and config.model.effective_categories == 0
    assert (f.gamma, f.discriminator_layers, f.discriminator_units, f.leaky_slope) == (
        35.0, 6, 1000, 0.2,
    )  # fmt: skip
    assert (f.discriminator_lr, f.discriminator_beta1, f.discriminator_beta2) == (1e-4, 0.5, 0.9)
    assert (config.optim.lr, config.optim.adam_beta1, config.optim.adam_beta2) == (
        1e-4, 0.9, 0.999,
    )  # fmt: skip


# --------------------------------------------------------------------------- studies and sweeps
def test_a_study_and_a_sweep_take_factorvae(tmp_path):
    """A study model named `factorvae` trains the variant, and a Tune sweep searches its gamma
    and ranks trials by its TC estimate (both checked before Ray starts)."""
    import yaml

    from launch.study import load_study
    from launch.sweep import load_sweep

    study = {
        "base": str(DEBUG),
        "models": {
            "cascade": {"seeds": [0]},
            "factorvae": {"seeds": [0, 1], "set": {"eval.protocols": ["authors_factorvae"]}},
        },
        "storage_path": str(tmp_path / "runs"),
    }
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    loaded = load_study(tmp_path / "study.yaml")
    config = loaded.trial_config({"run": "factorvae-s1"})
    assert config.model.variant == "factorvae" and config.seed == 1
    assert config.factorvae.gamma == 35.0
    sweep = {
        "base": str(ROOT / "configs" / "factorvae.yaml"),
        "set": {"train.num_steps": 40, "data.num_positions": 4},
        "search": {"space": {"gamma": {"grid": [10, 35]}}},
        "metric": "tc/estimate",
        "mode": "min",
        "storage_path": str(tmp_path / "sweeps"),
    }
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    loaded_sweep = load_sweep(tmp_path / "sweep.yaml")
    assert loaded_sweep.num_trials() == 2
