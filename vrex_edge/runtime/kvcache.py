"""Per-layer KV caches behind one small API, and the policy registry that builds them.

A layer cache owns its arrays and its bookkeeping. The session hands it each chunk's
un-rotated q/k/v with their stream positions; the cache appends the chunk, decides which
history the chunk sees (that is the retrieval policy), applies RoPE, and returns the
attention output. `full` is the reference: every cached token, absolute positions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

from vrex_edge.bundle import TextSpec
from vrex_edge.errors import ConfigError
from vrex_edge.runtime import kernels
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


class GrowingArray:
    """A [heads, capacity, hd] float32 buffer that doubles when full; `view` is [heads, n, hd]."""

    def __init__(self, heads: int, hd: int, capacity: int = 256):
        self.buf = np.empty((heads, capacity, hd), dtype=np.float32)
        self.n = 0

    def append(self, x: np.ndarray) -> None:  # x: [heads, m, hd]
        m = x.shape[1]
        if self.n + m > self.buf.shape[1]:
            cap = max(self.buf.shape[1] * 2, self.n + m)
            grown = np.empty((self.buf.shape[0], cap, self.buf.shape[2]), dtype=np.float32)
            grown[:, : self.n] = self.buf[:, : self.n]
            self.buf = grown
        self.buf[:, self.n : self.n + m] = x
        self.n += m

    @property
    def view(self) -> np.ndarray:
        return self.buf[:, : self.n]

    def nbytes(self) -> int:
        return self.buf.nbytes


class FullKV:
    """The reference policy: attend to every cached token at its absolute position."""

    def __init__(self, text: TextSpec, rope: Rope, *, engine: kernels.AttentionEngine | None = None):
        self.h, self.kvh, self.hd = text.num_heads, text.num_kv_heads, text.head_dim
        self.rope = rope
        self.engine = engine or kernels.default_engine()  # runtime/kernels: chosen once, not per call
        self.k = GrowingArray(self.kvh, self.hd)  # rotated keys at absolute positions
        self.v = GrowingArray(self.kvh, self.hd)
        self._stats = LayerStats()

    def attend(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, positions: np.ndarray, *, phase: Phase) -> np.ndarray:
        n = q.shape[1]
        q = self.rope.apply(q, positions)  # [H, n, hd]
        k = self.rope.apply(k, positions)  # [KVH, n, hd]
        hist = self.k.n
        segs = [kernels.Segment(self.k.view, self.v.view)]  # every cached token, [KVH, hist, hd]
        out = self.engine.attend(q.reshape(self.kvh, -1, n, self.hd), segs, k, v)  # [KVH, G, n, hd]
        self.k.append(k)
        self.v.append(v)
        self._stats = LayerStats(history=hist, kept=np.full(self.kvh, hist, dtype=np.int64))
        return out.reshape(self.h, n, self.hd).transpose(1, 0, 2).reshape(n, self.h * self.hd)

    @property
    def length(self) -> int:
        return self.k.n

    def nbytes(self) -> int:
        return self.k.nbytes() + self.v.nbytes()

    def stats(self) -> LayerStats:
        return self._stats


# A policy is a factory: (layer index, text spec, rope) -> LayerCache.
CacheFactory = Callable[[int, TextSpec, Rope], LayerCache]
_POLICIES: dict[str, Callable[..., CacheFactory]] = {}


def register_policy(name: str, make: Callable[..., CacheFactory]) -> None:
    """`make(**options)` returns a CacheFactory; options come from the session/CLI config."""
    _POLICIES[name] = make


def _load_builtin() -> None:
    import vrex_edge.runtime.retrieval  # noqa: F401  (registers window, topk, resv)


def policy_names() -> list[str]:
    _load_builtin()
    return sorted(_POLICIES)


def make_policy(name: str, **options: object) -> CacheFactory:
    _load_builtin()
    if name not in _POLICIES:
        raise ConfigError(f"unknown retrieval policy '{name}' (choose from: {', '.join(policy_names())})")
    return _POLICIES[name](**options)


def _full(**options: object) -> CacheFactory:
    if options:
        raise ConfigError(f"the full policy takes no options (got: {', '.join(sorted(options))})")
    return lambda layer, text, rope: FullKV(text, rope)


register_policy("full", _full)
