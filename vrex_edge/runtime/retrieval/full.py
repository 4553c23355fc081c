"""`full`: the reference policy: every cached token, at its absolute position."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from vrex_edge.bundle import TextSpec
from vrex_edge.runtime import kernels
from vrex_edge.runtime.kvcache import GrowingArray, LayerStats, Phase
from vrex_edge.runtime.retrieval.options import NoOptions
from vrex_edge.runtime.retrieval.policy import Policy, PolicySpec
from vrex_edge.runtime.retrieval.storage import KVStorage
from vrex_edge.runtime.rope import Rope


@dataclass(frozen=True)
class FullOptions(NoOptions):
    policy = "full"


class FullKV:
    """Attend to every cached token at its absolute position."""

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

    def state(self) -> dict[str, Any]:
        return {"k": self.k.view, "v": self.v.view}

    def restore(self, s: dict[str, Any]) -> None:
        self.k.n = self.v.n = 0
        self.k.append(s["k"])
        self.v.append(s["v"])


def _build(policy: Policy, layer: int, text: TextSpec, rope: Rope, storage: KVStorage) -> FullKV:
    return FullKV(text, rope, engine=policy.engine)


SPEC = PolicySpec("full", FullOptions, _build, "every cached token (the reference)")
