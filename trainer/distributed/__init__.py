"""Everything that runs across processes: the global code exchange over torch.distributed
(`codes`), the Ray Train worker and trainer (`worker`), the central solver actor
(`solver_actor`), the fault drills (`drills`) and the cluster's nodes (`nodes`). The only
package of `trainer/` that may import Ray or call the solver (import-linter contracts in
pyproject.toml).
"""
