"""`oracle`: a reference policy for benchmarks that keeps the tokens with the most exact attention mass.

Per layer and KV head it computes the chunk's exact softmax over every history token (between
the sink and the recent window), averages the normalised distributions over the chunk's
queries and the GQA heads (as ReSV does for its cluster masses), and keeps the shortest set of
tokens whose mass reaches tau. It is what ReSV's clustering approximates: the Pareto
reference, not a fast policy (it scores every token). Absolute positions only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from vrex_edge.bundle import TextSpec
from vrex_edge.runtime.arrays import grow
from vrex_edge.runtime.retrieval.base import WindowedCache
from vrex_edge.runtime.retrieval.options import WindowedOptions, opt
from vrex_edge.runtime.retrieval.policy import Policy, PolicySpec
from vrex_edge.runtime.retrieval.storage import AttentionBuffer, KVStorage
from vrex_edge.runtime.rope import Rope


@dataclass(frozen=True)
class OracleOptions(WindowedOptions):
    policy = "oracle"
    tau: float = opt(0.9, lo=0, hi=1, lo_open=True, help="fraction of the exact attention mass kept")


class OracleCache(WindowedCache):
    def __init__(self, text: TextSpec, rope: Rope, o: OracleOptions, *, buffer: AttentionBuffer, engine: Any = None):
        super().__init__(
            text, rope, sink=o.sink, recent=o.recent, positions="absolute", table=None, buffer=buffer, engine=engine
        )
        self.tau = o.tau
        self.hk = np.empty((self.kvh, 1024, self.hd), np.float32)  # [KVH, cap, hd] rotated history keys
        self.hv = np.empty_like(self.hk)
        self.hn = 0

    def set_tau(self, tau: float) -> None:
        """Select with another WiCSum fraction from the next call on (benchmarks sweep it over one fill)."""
        self.tau = tau

    def _absorb(self, k, v, aux, pos, tag) -> None:
        m = k.shape[1]
        self.hk = grow(self.hk, self.hn + m, axis=1, used=self.hn)
        self.hv = grow(self.hv, self.hn + m, axis=1, used=self.hn)
        self.hk[:, self.hn : self.hn + m], self.hv[:, self.hn : self.hn + m] = k, v
        self.hn += m

    def _history_nbytes(self) -> int:
        return self.hk.nbytes + self.hv.nbytes

    def _retrieve(self, q: np.ndarray, q_abs: np.ndarray, budget: int, sec: dict[str, float]) -> np.ndarray:
        r = np.zeros(self.kvh, np.int64)
        if self.hn == 0:
            return r
        t0 = time.perf_counter()
        n = q.shape[1]
        qs = q_abs.reshape(self.kvh, self.g * n, self.hd)  # [KVH, G*n, hd]
        sels = []
        for h in range(self.kvh):
            s = qs[h] @ self.hk[h, : self.hn].T / np.sqrt(self.hd)  # [G*n, N]
            p = np.exp(s - s.max(-1, keepdims=True))
            mass = (p / p.sum(-1, keepdims=True)).mean(0)  # [N], sums to 1
            order = np.argsort(-mass, kind="stable")
            cut = int(np.searchsorted(np.cumsum(mass[order]), self.tau * mass.sum() * (1 - 1e-6))) + 1
            sels.append(np.sort(order[: min(cut, self.hn)]))
            r[h] = sels[-1].size
        t1 = time.perf_counter()
        sec["select"] += t1 - t0
        self.reserve(int(r.max()))
        s0 = self.sink_n
        for h in range(self.kvh):
            self.buf_k[h, s0 : s0 + r[h]] = self.hk[h, sels[h]]
            self.buf_v[h, s0 : s0 + r[h]] = self.hv[h, sels[h]]
        sec["gather"] += time.perf_counter() - t1
        return r


def _build(policy: Policy, layer: int, text: TextSpec, rope: Rope, storage: KVStorage) -> OracleCache:
    assert isinstance(policy.options, OracleOptions)
    buffer = storage.buffer(layer, text.num_kv_heads, text.head_dim, keeps_rows=False)
    return OracleCache(text, rope, policy.options, buffer=buffer, engine=policy.engine)


SPEC = PolicySpec("oracle", OracleOptions, _build, "exact attention mass per token (benchmark reference, slow)")
