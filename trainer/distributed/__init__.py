"""Everything that runs across processes: the global code exchange over torch.distributed
(`codes`), the Ray Train worker and trainer (`worker`), and the worker process's memory
settings (`runtime`). The only package of `trainer/` that may import Ray.
"""
