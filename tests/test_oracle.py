"""Known answer for the discrete path: a decoder trained with the TRUE shape as its code.

When the decoder is supervised with d = the true shape (the AAE-S situation that motivates the
paper) and z = the true continuous factors (so that z cannot stand in for the shape), choosing
codes from its unary matrix must recover the shapes: the per-image argmin, and the global
assignment of the solver with the paper's lambda behind the code exchange, on images the
decoder never saw. If this fails, the unary matrix, the solver or the exchange is wrong and no
amount of tuning can make unsupervised training find shape.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from solver.solve import assign
from trainer.build import Precision, apply_memory_format, cpu_bf16_feature
from trainer.core.losses import reconstruction_per_sample
from trainer.core.model import CascadeVAE
from trainer.core.step import bf16_autocast
from trainer.core.unary import unary_matrix
from trainer.data.dsprites import open_dsprites
from trainer.distributed.codes import GlobalCodeClient
from trainer.eval import SHAPE_FACTOR
from trainer.loop import load_batch

PAPER_LAMBDA = 0.001
STEPS, FINE_STEPS, BATCH, HELD_OUT_BATCH = 400, 100, 32, 64
"""400 + 100 steps reach 0.993 (float32) and 0.995 (fast path) held-out argmin accuracy
(`pytest -s` prints it; 600 + 150 reached 0.998 in both): the 0.95 bar has a margin."""


def true_factor_codes(dataset, indices) -> torch.Tensor:
    """(B, 6) continuous codes made of the true factors, about unit scale: posX, posY, scale,
    cos and sin of the orientation, and one unused dim at 0."""
    values = dataset.latent_values[indices]
    theta = values[:, 3]
    z = np.stack(
        [
            (values[:, 4] - 0.5) * 3.4,
            (values[:, 5] - 0.5) * 3.4,
            (values[:, 2] - 0.75) * 6.8,
            np.cos(theta),
            np.sin(theta),
            np.zeros(len(indices)),
        ],
        axis=1,
    )
    return torch.as_tensor(z, dtype=torch.float32)


FAST = Precision(autocast_bf16=True, channels_last=True)
PRECISIONS = {"fp32": Precision(autocast_bf16=False, channels_last=False), "fast": FAST}
NO_BF16 = "this CPU has neither amx_bf16 nor avx512_bf16: `auto` keeps float32 here"


@pytest.fixture(
    scope="module",
    params=[
        "fp32",
        pytest.param("fast", marks=pytest.mark.skipif(cpu_bf16_feature() is None, reason=NO_BF16)),
    ],
)
def oracle(request, tmp_path_factory):
    """A decoder trained to reconstruct each image from its true factors (z) and its TRUE shape
    (d), on 3/4 of a small grid (3 shapes x 3 scales x 4 orientations x 8 x 8 positions = 2,304
    images); the rest held out. Adam 2e-3, then 5e-4 for the last FINE_STEPS. In float32, and
    on the fast CPU path (bf16 autocast and channels_last, as `train.autocast: auto` gives on
    a CPU with bf16 kernels): trained and its unary matrices computed that way."""
    precision = PRECISIONS[request.param]
    torch.manual_seed(0)
    dataset = open_dsprites(
        num_scales=3, num_orientations=4, num_positions=8,
        cache_dir=tmp_path_factory.mktemp("cache"),
    )  # fmt: skip
    order = np.random.default_rng(0).permutation(len(dataset))
    train_idx, held_idx = order[: 3 * len(order) // 4], order[3 * len(order) // 4 :]
    model = CascadeVAE(num_continuous=6, num_categories=3)
    apply_memory_format(model, precision)
    optimizer = torch.optim.Adam(model.decoder.parameters(), lr=2e-3)
    rng = np.random.default_rng(1)
    for step in range(STEPS + FINE_STEPS):
        if step == STEPS:
            optimizer.param_groups[0]["lr"] = 5e-4
        batch = rng.choice(train_idx, BATCH, replace=False)
        d_BK = F.one_hot(torch.as_tensor(dataset.latent_classes[batch, SHAPE_FACTOR]), 3)
        x = load_batch(dataset, batch, torch.device("cpu"))
        with bf16_autocast(x.device, precision.autocast_bf16):
            logits = model.decode(true_factor_codes(dataset, batch), d_BK.float())
            loss = reconstruction_per_sample(logits, x).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return model, dataset, held_idx, precision


def _held_out_unary(model, dataset, indices, precision):
    """(B, K) unary matrix of held-out images at their true-factor codes, computed in
    `precision` (as the model was trained)."""
    x = load_batch(dataset, indices, torch.device("cpu"))
    z = true_factor_codes(dataset, indices)
    if precision.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with bf16_autocast(x.device, precision.autocast_bf16):
        unary_BK = unary_matrix(model, z, x)
    assert unary_BK.dtype == torch.float32
    return unary_BK.numpy().astype(np.float64)


def test_unary_argmin_recovers_the_true_shape(oracle):
    model, dataset, held_idx, precision = oracle
    unary = _held_out_unary(model, dataset, held_idx, precision)
    shapes = dataset.latent_classes[held_idx, SHAPE_FACTOR]
    accuracy = float((unary.argmin(axis=1) == shapes).mean())
    print(f"\nheld-out argmin accuracy {accuracy:.3f}")  # shown with pytest -s
    assert accuracy >= 0.95, f"argmin accuracy {accuracy:.3f} on {len(held_idx)} held-out images"


def test_global_assignment_through_the_exchange_recovers_the_true_shape(oracle):
    """Batches of 64 held-out images: unary -> GlobalCodeClient -> HiGHS min-cost flow with
    the paper's lambda -> codes. The penalty may move only near-ties, so the codes stay the
    shapes; the exchange must hand back exactly the solver's labels."""
    model, dataset, held_idx, precision = oracle

    def solve(unary_NK: np.ndarray):
        return assign(unary_NK, PAPER_LAMBDA), 0.0

    client = GlobalCodeClient(solve)
    correct = total = 0
    for start in range(0, len(held_idx) - HELD_OUT_BATCH + 1, HELD_OUT_BATCH):
        batch = held_idx[start : start + HELD_OUT_BATCH]
        unary = _held_out_unary(model, dataset, batch, precision)
        codes = client(torch.from_numpy(unary)).numpy()
        np.testing.assert_array_equal(codes, assign(unary, PAPER_LAMBDA))
        correct += int((codes == dataset.latent_classes[batch, SHAPE_FACTOR]).sum())
        total += len(batch)
    assert total >= 256
    assert correct / total >= 0.95, f"assignment accuracy {correct / total:.3f} over {total}"


def test_a_decoder_that_ignores_the_code_fails_the_check(oracle):
    """The check can fail: the same decoder with its code columns zeroed decodes every category
    alike, its argmin ties to category 0 and matches only one shape in three."""
    model, dataset, held_idx, precision = oracle
    blind = CascadeVAE(num_continuous=6, num_categories=3)
    apply_memory_format(blind, precision)
    blind.load_state_dict(model.state_dict())
    with torch.no_grad():
        blind.decoder[0].weight[:, 6:] = 0.0
    unary = _held_out_unary(blind.eval(), dataset, held_idx, precision)
    shapes = dataset.latent_classes[held_idx, SHAPE_FACTOR]
    assert float((unary.argmin(axis=1) == shapes).mean()) < 0.5
