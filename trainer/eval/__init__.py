"""Disentanglement metrics of a trained model on a dataset.

Owns: the metrics (one module each: authors_factorvae, factorvae, discrete_accuracy, mig,
factor_dim_mi), their registry (`registry.METRICS`: names, compute functions, output keys, options,
tables), the evaluation settings (`options.EvalConfig`, the `eval` section of a config, with every
default), the shared data types and statistics, the model adapter (`inference.ModelRepresenter`,
the only torch code) and `evaluate_model`. Every metric follows the disentanglement_lib layout: a
public `compute_x(represent, dataset, rng, ...)` samples image indices, asks `represent` for their
representations, then calls a pure `_x_core(arrays)`, so the true factor classes can stand in for a
model (`FactorRepresenter`) in known-answer tests.

Representation of an image: mu(x) for the continuous dims; the discrete code is the category with
the lowest reconstruction loss at z = mu (argmin_k of `unary_matrix(model, mu, x)`); sigma(x) only
for the KL activity test.

Imports `trainer.core`, `trainer.data` and `trainer.schema`; never `trainer.config` (which imports
this package) and never Ray.
"""

from trainer.eval.authors_factorvae import compute_authors_factorvae
from trainer.eval.discrete_accuracy import compute_discrete_accuracy
from trainer.eval.evaluate import evaluate_model
from trainer.eval.factor_dim_mi import compute_factor_dim_mi
from trainer.eval.factorvae import compute_factorvae
from trainer.eval.inference import ModelRepresenter
from trainer.eval.mig import compute_mig
from trainer.eval.options import EvalConfig, metric_option_overrides
from trainer.eval.registry import (
    METRICS,
    TABLE_NAMESPACES,
    Metric,
    Output,
    output_keys,
    score_keys,
    table_keys,
)
from trainer.eval.sampling import draw_global_sample
from trainer.eval.statistics import (
    discrete_entropy,
    discrete_mutual_information,
    gini_variance,
    histogram_discretize,
    majority_vote_accuracy,
    mean_kl_per_dim,
    varying_factors,
)
from trainer.eval.types import (
    SHAPE_FACTOR,
    FactorRepresenter,
    GlobalSample,
    MetricResult,
    Representation,
    Representer,
)

__all__ = [
    "METRICS",
    "SHAPE_FACTOR",
    "TABLE_NAMESPACES",
    "EvalConfig",
    "FactorRepresenter",
    "GlobalSample",
    "Metric",
    "MetricResult",
    "ModelRepresenter",
    "Output",
    "Representation",
    "Representer",
    "compute_authors_factorvae",
    "compute_discrete_accuracy",
    "compute_factor_dim_mi",
    "compute_factorvae",
    "compute_mig",
    "discrete_entropy",
    "discrete_mutual_information",
    "draw_global_sample",
    "evaluate_model",
    "gini_variance",
    "histogram_discretize",
    "majority_vote_accuracy",
    "mean_kl_per_dim",
    "metric_option_overrides",
    "output_keys",
    "score_keys",
    "table_keys",
    "varying_factors",
]
