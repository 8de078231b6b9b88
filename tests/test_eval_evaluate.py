"""Tests of trainer.eval.evaluate: evaluate_model's keys, determinism and table keys.

Shape legend: N images, M continuous dims, V votes, P images per vote, K categories, S shapes.
"""

from __future__ import annotations

import pytest
import torch
from eval_helpers import (
    FakeDSprites,
)

from trainer.core.model import CascadeVAE
from trainer.eval import (
    METRICS,
    evaluate_model,
    table_keys,
)


@pytest.fixture(scope="module")
def data() -> FakeDSprites:
    return FakeDSprites()


@pytest.fixture(scope="module")
def tiny_model() -> CascadeVAE:
    torch.manual_seed(0)
    return CascadeVAE(num_continuous=4, num_categories=3)


def test_evaluate_model_keys_and_determinism(data, tiny_model):
    kwargs = dict(num_global=300, num_votes=50, vote_size=20, factorvae_num_train=20)
    all_protocols = ("authors_factorvae", "factorvae", "discrete_accuracy", "mig")
    out = evaluate_model(
        tiny_model, data, seed=3, protocols=all_protocols, factorvae_num_eval=20, **kwargs
    )
    assert set(out) == {
        "eval/authors_factorvae",
        "eval/active_dims",
        "eval/factorvae",
        "eval/factorvae_train",
        "eval/discrete_accuracy",
        "eval/mig",
    }
    assert all(isinstance(v, float) and 0.0 <= v <= 4.0 for v in out.values())
    # Deterministic given the seed, and a protocol does not depend on the others asked.
    alone = evaluate_model(tiny_model, data, seed=3, protocols=("authors_factorvae",), **kwargs)
    assert alone == {k: out[k] for k in ("eval/authors_factorvae", "eval/active_dims")}
    with pytest.raises(TypeError, match="unknown overrides"):
        evaluate_model(tiny_model, data, num_vote=3)
    with pytest.raises(ValueError, match=r"protocols: unknown \['beta_vae'\]; choose from"):
        evaluate_model(tiny_model, data, protocols=("beta_vae",))
    with pytest.raises(ValueError, match="vote_size: must be >= 2, got 1"):
        evaluate_model(tiny_model, data, vote_size=1)
    no_code = CascadeVAE(num_continuous=3, num_categories=0)
    with pytest.raises(ValueError, match="discrete code"):
        evaluate_model(no_code, data, protocols=("discrete_accuracy",))


@pytest.mark.parametrize("num_categories", [3, 0])
def test_evaluate_model_reports_exactly_the_declared_table_keys(data, num_categories):
    torch.manual_seed(0)
    model = CascadeVAE(num_continuous=4, num_categories=num_categories)
    out = evaluate_model(model, data, seed=1, protocols=("factor_dim_mi",), num_global=300)
    declared = table_keys(["factor_dim_mi"], 4, num_categories)
    assert set(out) == {"eval/mi_shape_z", *declared}
    assert len(declared) == 5 * (4 + (1 if num_categories else 0)) + 3 * num_categories
    assert all(0.0 <= out[k] <= 1.0 for k in declared if k.startswith("mi/"))
    if num_categories:
        counts = [out[k] for k in declared if k.startswith("confusion/")]
        assert sum(counts) == 300 and all(c == int(c) for c in counts)
    assert "factor_dim_mi" not in [m.name for m in METRICS.values() if m.higher_is_better]
