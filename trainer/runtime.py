"""Process-level settings for PyTorch on CPU, applied by the entry points that compute.

Why: PyTorch's CPU kernels allocate and free activation buffers of several MB on every step.
glibc's malloc serves blocks that large with fresh mmap pages and hands them back on free, so
every step pays page faults to zero new memory. Measured here (2-core x86 CPU, torch 2.13): the
batched unary pass over 192 decoder rows took 104 ms with the default and 60 ms when freed
memory is kept; evaluating the authors' metric on the full grid went from 72.5 s to 54.8 s.
"""

from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
_KEEP = 2**31 - 1  # bytes: serve every block from the heap and never trim it


def keep_freed_memory() -> bool:
    """Ask glibc malloc to reuse freed memory instead of returning it to the OS.

    Returns True when applied, False on a C library without `mallopt` (e.g. musl, macOS), where
    nothing changes. Idempotent. The cost: resident memory stays at the process's peak.
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_MMAP_THRESHOLD, _KEEP)) and bool(mallopt(_M_TRIM_THRESHOLD, _KEEP))
