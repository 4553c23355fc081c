"""The machine's read bandwidth as the benchmarks state it: float32 sums over a buffer far larger
than the caches, on `threads` threads at once (NumPy releases the GIL in its reductions)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def read_bandwidth(threads: int = 1, *, mib: int = 256, repeats: int = 3) -> float:
    """GB/s: the best of `repeats` passes, each summing a `mib` MiB float32 buffer in `threads` slices."""
    buf = np.ones(mib * 2**20 // 4, np.float32)  # written once: every page is resident
    parts = np.array_split(buf, threads)
    best = float("inf")
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(repeats):
            t0 = time.perf_counter()
            list(pool.map(np.sum, parts))
            best = min(best, time.perf_counter() - t0)
    return buf.nbytes / best / 1e9
