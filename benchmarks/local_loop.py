"""The plain loop the benchmarks compare the system with: one process's TrainLoop with the
solver called in-process, no Ray. The golden loss test (tests/golden_losses.py) and the fast-path
test run it too.
"""

from __future__ import annotations

import numpy as np
import torch

from solver import get_solver
from trainer.build import build_model, build_optimizer, open_data
from trainer.config import Config
from trainer.distributed.codes import GlobalCodeClient
from trainer.loop import TrainLoop


def local_loop(
    config: Config, device: torch.device, progress: bool = False
) -> tuple[TrainLoop, GlobalCodeClient]:
    """One process's TrainLoop with the solver called in-process (no Ray). Returns it and its
    code client (whose timings hold the solve time itself)."""
    torch.manual_seed(config.seed)
    dataset = open_data(config, progress=progress)
    model = build_model(config).to(device)
    optimizer, scheduler = build_optimizer(config, model)
    lam = config.solver.lam

    def solve(unary_NK: np.ndarray) -> tuple[np.ndarray, float]:
        # The client checked the matrix (finite float64 (N, K)); the solver times itself.
        solver = get_solver(*unary_NK.shape)
        labels_N = solver.solve_valid(unary_NK, lam)
        return labels_N, solver.last_solve_ms

    client = GlobalCodeClient(solve)
    loop = TrainLoop(config, dataset, model, optimizer, scheduler, device=device, chooser=client)
    return loop, client
