"""Which factor each latent dim holds: the factor x dim table of normalised mutual information,
and the learned category x true shape confusion matrix.

Estimator (the one MIG uses, `mig.mutual_information_table`): every continuous dim of mu is
discretised into `num_bins` equal-width bins over its range on the sample; the discrete code
(the category of lowest reconstruction loss at z = mu, as the authors' metric computes it) is
used as it is. The plug-in mutual information (nats) of each such column with each factor that
varies is divided by the factor's plug-in entropy, so every cell lies in [0, 1]: 1 when the
column determines the factor, 0 when they are independent on the sample. The plug-in estimate
is biased upwards by about (bins - 1)(classes - 1) / (2 N) nats: with 10,000 images and 20 bins
an independent dim reads about 0.04 nats for the 40-class orientation, 0.01 once normalised.

Flat keys (`table_keys`), for dSprites' five factors that vary:
    mi/<factor>/z<j>            the normalised MI of continuous dim j with the factor
    mi/<factor>/code            the same for the discrete code (models with one)
    confusion/code<k>/<shape>   images of the sample with category k and true shape

Shape legend:
    N  images of the sample          M  continuous latent dims
    C  code columns (continuous dims, plus the discrete code)
    F  factors that vary (dSprites: 5)
    K  learned categories            S  true shapes
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from trainer.data.dsprites import LATENT_NAMES, SHAPE_NAMES, DSprites
from trainer.eval.discrete_accuracy import confusion_matrix
from trainer.eval.mig import MIG_NUM_BINS, MIG_NUM_SAMPLES, mutual_information_table
from trainer.eval.sampling import draw_global_sample, with_codes
from trainer.eval.statistics import varying_factors
from trainer.eval.types import SHAPE_FACTOR, GlobalSample, MetricResult, Representer

FACTOR_NAMES = tuple(name for name in LATENT_NAMES if name != "color")
"""The factors of dSprites that vary, in the dataset's order."""
CODE_COLUMN = "code"

DESCRIPTION = (
    "Factor x dim table: every continuous dim of mu discretised into equal-width bins as MIG "
    "does, the discrete code (category at z = mu) as is; plug-in mutual information with each "
    "factor that varies divided by the factor's entropy (in [0, 1]), as mi/<factor>/z<j> and "
    "mi/<factor>/code; the category x true shape counts as confusion/code<k>/<shape>. Score: "
    "the largest share of the shape's entropy that one continuous dim holds."
)


def dim_column(j: int) -> str:
    return f"z{j}"


def mi_key(factor: str, column: str) -> str:
    return f"mi/{factor}/{column}"


def confusion_key(category: int, shape: str) -> str:
    return f"confusion/code{category}/{shape}"


def shape_name(s: int) -> str:
    return SHAPE_NAMES[s] if s < len(SHAPE_NAMES) else f"shape{s}"


def table_keys(num_continuous: int, num_categories: int) -> tuple[str, ...]:
    """Every table key of a model with these dims and categories on dSprites."""
    columns = [dim_column(j) for j in range(num_continuous)]
    if num_categories:
        columns.append(CODE_COLUMN)
    keys = [mi_key(f, c) for f in FACTOR_NAMES for c in columns]
    keys += [confusion_key(k, s) for k in range(num_categories) for s in SHAPE_NAMES]
    return tuple(keys)


def _factor_dim_mi_core(
    mu_NM: np.ndarray,
    codes_N: np.ndarray | None,
    factors_NF: np.ndarray,
    factor_names: Sequence[str],
    *,
    shapes_N: np.ndarray | None = None,
    num_categories: int = 0,
    num_shapes: int = 0,
    num_bins: int = MIG_NUM_BINS,
) -> MetricResult:
    """The normalised factor x column table and, with codes and shapes, the confusion matrix.

    details: `nmi_FC` (F, C) = I(column c; factor f) / H(factor f) clipped to [0, 1] (rows in
    `factor_names` order, columns the M dims then the code), `columns` (their names),
    `factor_names`, `confusion_KS` (or None; at least `num_categories` x `num_shapes`) and
    `table` (the flat keys of both). score: the largest nmi of the shape row over the
    continuous dims (0 without continuous dims or without a shape factor).
    """
    if len(factor_names) != factors_NF.shape[1]:
        raise ValueError(f"{len(factor_names)} factor names for {factors_NF.shape[1]} factors")
    mi_CF, entropy_F = mutual_information_table(mu_NM, codes_N, factors_NF, num_bins)
    nmi_FC = np.clip(mi_CF.T / entropy_F[:, None], 0.0, 1.0)
    num_m = mu_NM.shape[1]
    columns = [dim_column(j) for j in range(num_m)] + ([CODE_COLUMN] if codes_N is not None else [])
    table = {
        mi_key(f, c): float(nmi_FC[i, ci])
        for i, f in enumerate(factor_names)
        for ci, c in enumerate(columns)
    }
    confusion_KS = None
    if codes_N is not None and shapes_N is not None:
        confusion_KS = confusion_matrix(codes_N, shapes_N, num_categories, num_shapes)
        table.update(
            {
                confusion_key(k, shape_name(s)): float(confusion_KS[k, s])
                for k in range(confusion_KS.shape[0])
                for s in range(confusion_KS.shape[1])
            }
        )
    score = 0.0
    if "shape" in factor_names and num_m:
        score = float(nmi_FC[list(factor_names).index("shape"), :num_m].max())
    details = {
        "nmi_FC": nmi_FC,
        "columns": columns,
        "factor_names": list(factor_names),
        "confusion_KS": confusion_KS,
        "table": table,
    }
    settings = {"num_samples": int(mu_NM.shape[0]), "num_bins": num_bins}
    return MetricResult("factor_dim_mi", score, settings, details)


def compute_factor_dim_mi(
    represent: Representer,
    dataset: DSprites,
    rng: np.random.Generator,
    *,
    num_samples: int | None = MIG_NUM_SAMPLES,
    num_bins: int = MIG_NUM_BINS,
    global_sample: GlobalSample | None = None,
) -> MetricResult:
    """The factor x dim table and the confusion matrix (see DESCRIPTION) over a random sample
    (or `global_sample`): every continuous dim, plus the discrete code when the representer
    has one."""
    if global_sample is None:
        global_sample = draw_global_sample(represent, dataset, rng, num_samples, codes=True)
    global_sample = with_codes(global_sample, represent)
    factors = varying_factors(dataset.latent_sizes)
    classes_NL = global_sample.classes_NL
    return _factor_dim_mi_core(
        global_sample.rep.mu_NM,
        global_sample.rep.codes_N,
        classes_NL[:, factors],
        [LATENT_NAMES[f] for f in factors],
        shapes_N=classes_NL[:, SHAPE_FACTOR],
        num_categories=represent.num_categories,
        num_shapes=int(dataset.latent_sizes[SHAPE_FACTOR]),
        num_bins=num_bins,
    )
