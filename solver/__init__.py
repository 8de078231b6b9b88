"""Global assignment of discrete codes: min-cost flow modelled in Pyomo, solved by HiGHS.

`assign(unary, lam) -> labels` is the whole public math API; `AssignmentSolver` is the reusable
per-shape solver behind it. No Ray here: trainer/distributed/solver_actor.py is its Ray actor.

The names of `solver.solve` are loaded on first use: importing Pyomo and HiGHS takes about
0.4 s of CPU, and a process that only checks a problem (`validate_problem`), such as a Train
worker sending its unary matrix to the solver actor, never needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from solver.network import assignment_cost, validate_problem

if TYPE_CHECKING:
    from solver.solve import AssignmentSolver, SolveInfo, SolverError, assign, get_solver

_FROM_SOLVE = ("AssignmentSolver", "SolveInfo", "SolverError", "assign", "get_solver")

__all__ = [
    "AssignmentSolver",
    "SolveInfo",
    "SolverError",
    "assign",
    "assignment_cost",
    "get_solver",
    "validate_problem",
]


def __getattr__(name: str) -> Any:
    if name in _FROM_SOLVE:
        return getattr(importlib.import_module("solver.solve"), name)
    raise AttributeError(f"module 'solver' has no attribute {name!r}")
