"""A fresh short debug run against the golden loss file (tests/golden/debug_losses.json).

Regenerate the file on purpose, and say why in the commit: `python -m tests.golden_losses
--update` (CONTRIBUTING.md, "The golden loss file").
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from golden_losses import GOLDEN_FILE, run_golden

RTOL_STEP0 = 1e-4
"""Relative tolerance on step 0's value of every stored key, doubled at every later step
(`rtol(step)`; ATOL, absolute, covers terms near zero). An 8-step run from Adam's first steps
amplifies rounding: the file, written on an Intel Xeon (AVX512, AMX), and a run on an AMD EPYC
(AVX2), both on golden_losses.REFERENCE_KERNELS, differ by at most 2e-7 / 5e-6 / 7e-6 / 2e-4 /
9e-4 / 7e-4 / 3e-3 / 4e-3 (relative) at steps 0..7, at most 0.55 of rtol(step). What the file
must catch stays outside: optim.lr 1 % higher leaves it in 63 values (from step 0, the lr
itself), cascade.beta_low 1 % higher in 19; the codes' counts must match exactly."""
ATOL = 1e-6


def rtol(step: int) -> float:
    """The relative tolerance at `step`: RTOL_STEP0 x 2^step."""
    return RTOL_STEP0 * 2.0**step


def _compare(golden: dict, fresh: dict) -> list[str]:
    """Every (step, key) whose fresh value leaves the tolerance, and any code count that
    differs, as readable lines."""
    problems = []
    if len(golden["steps"]) != len(fresh["steps"]):
        return [f"{len(fresh['steps'])} steps, the file has {len(golden['steps'])}"]
    for step, (want, got) in enumerate(zip(golden["steps"], fresh["steps"], strict=True)):
        if set(want) != set(got):
            problems.append(f"step {step}: keys {sorted(got)} != the file's {sorted(want)}")
            continue
        for key, value in want.items():
            if not np.isclose(got[key], value, rtol=rtol(step), atol=ATOL):
                problems.append(f"step {step} {key}: {got[key]!r} != the file's {value!r}")
    for step, (want, got) in enumerate(zip(golden["codes"], fresh["codes"], strict=True)):
        if want != got:
            problems.append(f"step {step} codes: {got} != the file's {want}")
    return problems


@pytest.fixture(scope="module")
def golden() -> dict:
    return json.loads(GOLDEN_FILE.read_text())


def test_the_debug_run_reproduces_the_golden_losses(tmp_path, golden):
    """The debug config, 8 steps (2-step stages, the solver's codes from step 4), seed 0, one
    worker, float32 on golden_losses.REFERENCE_KERNELS, in a process of its own: each step's
    loss/total, loss/recon, loss/kl, per-latent KL, weight penalty and lr match the file within
    rtol(step), and the codes' per-category counts in the discrete stage match exactly."""
    assert golden["steps"][-1]["discrete/active"] == 1.0  # the file covers the codes path
    assert any(golden["codes"])
    problems = _compare(golden, run_golden(tmp_path / "cache"))
    assert not problems, "the run left the golden file:\n" + "\n".join(problems)
