"""Known answer for the discrete path: a decoder trained with the TRUE shape as its code.

When the decoder is supervised with d = the true shape (the AAE-S situation that motivates the
paper), choosing codes from its unary matrix must recover the shapes: the per-image argmin, and
the global assignment of the solver with the paper's lambda behind the code exchange, on images
the model never saw. If this fails, the unary matrix, the solver or the exchange is wrong and no
amount of tuning can make unsupervised training find shape.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from solver.solve import assign
from trainer.codes import GlobalCodeClient
from trainer.data import open_dsprites
from trainer.metrics import SHAPE_FACTOR
from trainer.model import CascadeVAE
from trainer.schedule import CascadeSchedule, make_optimizer
from trainer.step import train_step
from trainer.unary import unary_matrix
from trainer.worker import load_batch, true_shape_codes

PAPER_LAMBDA = 0.001
STEPS, BATCH, HELD_OUT_BATCH = 600, 32, 64


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    """A CascadeVAE trained STEPS steps with d = true shape from step 0, on 3/4 of a small grid
    (3 shapes x 3 scales x 4 orientations x 6 x 6 positions = 1,296 images); the rest held out."""
    torch.manual_seed(0)
    dataset = open_dsprites(
        num_scales=3, num_orientations=4, num_positions=6,
        cache_dir=tmp_path_factory.mktemp("cache"),
    )  # fmt: skip
    order = np.random.default_rng(0).permutation(len(dataset))
    train_idx, held_idx = order[: 3 * len(order) // 4], order[3 * len(order) // 4 :]
    model = CascadeVAE(num_continuous=6, num_categories=3)
    optimizer, scheduler = make_optimizer(model, lr=1e-3, decay_every=10**9)
    # Discrete stage from step 0; one more continuous dim relieved every 100 steps.
    schedule = CascadeSchedule(stage_length=100, discrete_start_stage=0)
    rng = np.random.default_rng(1)
    generator = torch.Generator().manual_seed(2)
    for step in range(STEPS):
        batch = rng.choice(train_idx, BATCH, replace=False)
        shapes_B = dataset.latent_classes[batch, SHAPE_FACTOR]
        train_step(
            model, optimizer, scheduler, load_batch(dataset, batch, torch.device("cpu")),
            iteration=step, schedule=schedule, eps_generator=generator,
            choose_codes=true_shape_codes(shapes_B),
        )  # fmt: skip
    model.eval()
    return model, dataset, held_idx


def _held_out_unary(model, dataset, indices):
    x = load_batch(dataset, indices, torch.device("cpu"))
    with torch.no_grad():
        mu, _ = model.encode(x)
        return unary_matrix(model, mu, x).numpy().astype(np.float64)


def test_unary_argmin_recovers_the_true_shape(oracle):
    model, dataset, held_idx = oracle
    unary = _held_out_unary(model, dataset, held_idx)
    shapes = dataset.latent_classes[held_idx, SHAPE_FACTOR]
    accuracy = float((unary.argmin(axis=1) == shapes).mean())
    assert accuracy >= 0.95, f"argmin accuracy {accuracy:.3f} on {len(held_idx)} held-out images"


def test_global_assignment_through_the_exchange_recovers_the_true_shape(oracle):
    """Batches of 64 held-out images: unary -> GlobalCodeClient -> HiGHS min-cost flow with
    the paper's lambda -> codes. The penalty may move only near-ties, so the codes stay the
    shapes; the exchange must hand back exactly the solver's labels."""
    model, dataset, held_idx = oracle

    def solve(unary_NK: np.ndarray):
        return assign(unary_NK, PAPER_LAMBDA), 0.0

    client = GlobalCodeClient(solve)
    correct = total = 0
    for start in range(0, len(held_idx) - HELD_OUT_BATCH + 1, HELD_OUT_BATCH):
        batch = held_idx[start : start + HELD_OUT_BATCH]
        unary = _held_out_unary(model, dataset, batch)
        codes = client(torch.from_numpy(unary)).numpy()
        np.testing.assert_array_equal(codes, assign(unary, PAPER_LAMBDA))
        correct += int((codes == dataset.latent_classes[batch, SHAPE_FACTOR]).sum())
        total += len(batch)
    assert total >= 256
    assert correct / total >= 0.95, f"assignment accuracy {correct / total:.3f} over {total}"


def test_a_decoder_that_ignores_the_code_fails_the_check(oracle):
    """The check can fail: the same decoder with its code columns zeroed decodes every category
    alike, its argmin ties to category 0 and matches only one shape in three."""
    model, dataset, held_idx = oracle
    blind = CascadeVAE(num_continuous=6, num_categories=3)
    blind.load_state_dict(model.state_dict())
    with torch.no_grad():
        blind.decoder[0].weight[:, 6:] = 0.0
    unary = _held_out_unary(blind.eval(), dataset, held_idx)
    shapes = dataset.latent_classes[held_idx, SHAPE_FACTOR]
    assert float((unary.argmin(axis=1) == shapes).mean()) < 0.5
