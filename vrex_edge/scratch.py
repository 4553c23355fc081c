"""Per-thread work arrays for the per-frame hot path, grown on demand and reused by every call.

The hot path's temporaries are sized by the attended set or the cluster count (0.1-2 MiB per head
and call). glibc serves blocks of that size with a fresh mapping (always under KV tiers, whose
mmap threshold is fixed at 64 KiB), so each one costs an mmap, a page fault per 4 KiB and an munmap
(with a TLB shootdown while the prefetch thread runs): on a budgeted 10-minute stream, 113 of the
run's 298 s were system time, nearly all of it those faults (benchmarks/results/tiers.md). A call
site asks for its own named array: the same name always returns (a view of) the same memory in the
same thread, so a caller must be done with it before it asks again, and must not return it.
"""

from __future__ import annotations

import threading
from math import prod

import numpy as np

_local = threading.local()


def work(name: str, shape: tuple[int, ...], dtype: type = np.float32) -> np.ndarray:
    """An uninitialised C-contiguous array of `shape` that is `name`'s in this thread."""
    bufs: dict[str, np.ndarray] = _local.__dict__.setdefault("bufs", {})
    n = prod(shape)
    a = bufs.get(name)
    if a is None or a.size < n or a.dtype != dtype:
        a = bufs[name] = np.empty(max(n, int(1.25 * a.size) if a is not None and a.dtype == dtype else 0), dtype)
    return a[:n].reshape(shape)
