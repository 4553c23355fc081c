"""Work spread over the cores for kernels that release the GIL (onnxruntime runs, NumPy copies).

    lanes = Lanes(2)
    out = lanes.map(fn, items)       # fn(item) for every item, item i on lane i % n, results in order

Lane 0 is the calling thread; lanes 1 .. n-1 are worker threads made on first use. Items are spread
over the lanes round-robin, so which lane runs an item never depends on timing, and the results come
back in the items' order. Lanes are shared, not copied (deepcopy returns the same object).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from vrex_edge.errors import ConfigError

T = TypeVar("T")
R = TypeVar("R")
LANES_ENV = "VREX_ATTENTION_LANES"  # pins the lanes of a session made without a number (benchmarks compare)


def default_lanes() -> int:
    """Lanes for a session made without a number: $VREX_ATTENTION_LANES, else the cores this process
    may use, at most 4."""
    pinned = os.environ.get(LANES_ENV, "").strip()
    if pinned:
        if not pinned.isdigit() or int(pinned) < 1:
            raise ConfigError(f"{LANES_ENV} must be a whole number >= 1, got {pinned!r}")
        return int(pinned)
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


def even_cuts(n: int, parts: int) -> list[tuple[int, int]]:
    """0..n cut into at most `parts` contiguous (start, stop) pieces of near-equal size, none empty."""
    cuts = [n * i // parts for i in range(parts + 1)]
    return [(a, b) for a, b in zip(cuts[:-1], cuts[1:], strict=True) if b > a]


class Lanes:
    """n lanes: the calling thread and n - 1 workers. Callers on several threads at once (the KV tiers'
    prefetch thread scores while the main thread attends) share the workers: each call's items still
    come back whole and in order, the calls just wait for each other's items."""

    def __init__(self, n: int = 1):
        if n < 1:
            raise ConfigError(f"lanes must be >= 1, got {n}")
        self.n = n
        self._pool: ThreadPoolExecutor | None = None

    def __deepcopy__(self, memo: dict) -> Lanes:
        return self

    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
        """[fn(x) for x in items], item i on lane i % n; an exception in any item is raised here."""
        used = min(self.n, len(items))
        if used <= 1:
            return [fn(x) for x in items]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.n - 1, thread_name_prefix="vrex-lane")

        def lane(i: int) -> list[R]:
            return [fn(items[j]) for j in range(i, len(items), used)]

        busy = [self._pool.submit(lane, i) for i in range(1, used)]
        first = lane(0)
        parts = [first, *(f.result() for f in busy)]
        out: list[R] = [None] * len(items)  # type: ignore[list-item]
        for i, part in enumerate(parts):
            out[i::used] = part
        return out
