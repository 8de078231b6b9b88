"""Global assignment of discrete codes: min-cost flow modelled in Pyomo, solved by HiGHS.

`assign(unary, lam) -> labels` is the whole public math API; `AssignmentSolver` is the reusable
per-shape solver behind it. No Ray here: trainer/distributed/solver_actor.py is its Ray actor.
"""

from solver.network import assignment_cost, validate_problem
from solver.solve import AssignmentSolver, SolveInfo, SolverError, assign, get_solver

__all__ = [
    "AssignmentSolver",
    "SolveInfo",
    "SolverError",
    "assign",
    "assignment_cost",
    "get_solver",
    "validate_problem",
]
