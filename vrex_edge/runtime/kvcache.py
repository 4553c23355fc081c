"""The per-layer KV cache API that the engine calls, whatever the retrieval policy.

A layer cache owns its arrays and its bookkeeping. The session hands it each chunk's
un-rotated q/k/v with their stream positions; the cache appends the chunk, decides which
history the chunk sees (that is the retrieval policy), applies RoPE, and returns the
attention output. The policies live in `vrex_edge.runtime.retrieval` (registry.py lists them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from vrex_edge.bundle import TextSpec
from vrex_edge.runtime.arrays import grow
from vrex_edge.runtime.rope import Rope

Phase = Literal["prefill", "decode"]


@dataclass
class LayerStats:
    """What one layer's last `attend` call saw. kept/history are per KV head."""

    history: int = 0  # cached tokens before the chunk
    kept: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # [KVH] history tokens attended
    seconds: dict[str, float] = field(default_factory=dict)  # e.g. cluster, select, gather, attend
    clusters: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # [KVH] (clustering policies)


class LayerCache(Protocol):
    def attend(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, positions: np.ndarray, *, phase: Phase) -> np.ndarray:
        """q [H, n, hd], k/v [KVH, n, hd] un-rotated, positions [n] -> attention output [n, H*hd].

        Appends the chunk's k/v to the cache (the chunk attends causally to itself)."""
        ...

    @property
    def length(self) -> int: ...

    def nbytes(self) -> int: ...

    def stats(self) -> LayerStats: ...

    def state(self) -> dict[str, Any]:
        """Arrays and plain values a resumed stream needs (see kvstore/resume.py)."""
        ...

    def restore(self, state: dict[str, Any]) -> None: ...


# A policy builds one cache per layer: (layer index, text spec, rope) -> LayerCache.
CacheFactory = Callable[[int, TextSpec, Rope], LayerCache]


class GrowingArray:
    """A [heads, capacity, hd] float32 buffer that doubles when full; `view` is [heads, n, hd]."""

    def __init__(self, heads: int, hd: int, capacity: int = 256):
        self.buf = np.empty((heads, capacity, hd), dtype=np.float32)
        self.n = 0

    def append(self, x: np.ndarray) -> None:  # x: [heads, m, hd]
        m = x.shape[1]
        self.buf = grow(self.buf, self.n + m, axis=1, used=self.n)
        self.buf[:, self.n : self.n + m] = x
        self.n += m

    @property
    def view(self) -> np.ndarray:
        return self.buf[:, : self.n]

    def nbytes(self) -> int:
        return self.buf.nbytes
