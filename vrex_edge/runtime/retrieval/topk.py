"""`topk`: ReKV-style block retrieval, the fixed-budget baseline (resv.md section 7).

One block per prefill chunk (a frame); consecutive decode tokens share a block of up to
`decode_block` tokens. A block's representative is the mean pre-RoPE key over its tokens and
KV heads; the chunk's mean pre-RoPE query scores the blocks and the top `k` blocks (a count,
or a fraction of the blocks when 0 < k <= 1.0 is a float) are attended by every head.
History is stored in stream order, so a block is one contiguous slice.
"""

from __future__ import annotations

import math
import time

import numpy as np

from vrex_edge.accel import get_backend
from vrex_edge.bundle import TextSpec
from vrex_edge.errors import ConfigError
from vrex_edge.runtime.kvcache import CacheFactory, Phase, register_policy
from vrex_edge.runtime.retrieval.base import RopeTable, WindowedCache
from vrex_edge.runtime.retrieval.clusters import runs_to_index
from vrex_edge.runtime.retrieval.options import check_options, table_cache
from vrex_edge.runtime.rope import Rope

DEFAULTS = dict(k=0.2, sink=32, recent=128, decode_block=10, positions="absolute", accel="host")


class TopKCache(WindowedCache):
    def __init__(self, text: TextSpec, rope: Rope, *, table: RopeTable | None, k: int | float, sink: int,
                 recent: int, decode_block: int, positions: str, accel: str):
        super().__init__(text, rope, sink=sink, recent=recent, positions=positions, table=table,
                         aux=positions == "absolute")  # the pre-RoPE keys beside rotated storage
        self.k_opt = k
        self.decode_block = decode_block
        self.backend = get_backend(accel)
        self.ak = np.empty((self.kvh, 1024, self.hd), np.float32)  # [KVH, cap, hd] history, stream order
        self.av = np.empty_like(self.ak)
        self.apos = np.empty(1024, np.int64)
        self.an = 0
        self.bstart = np.zeros(0, np.int64)  # [B] per block: first arena row, token count, key sum, tag
        self.bcount = np.zeros(0, np.int64)
        self.bsum = np.zeros((0, self.hd), np.float64)
        self.btag = np.zeros(0, np.int64)
        self._next_tag, self._decode_fill = 0, 0

    def _aux(self, k: np.ndarray, k_abs: np.ndarray) -> np.ndarray | None:
        return None if self.compact else k

    def _tag(self, phase: Phase, n: int) -> int:
        if phase == "decode" and 0 < self._decode_fill < self.decode_block:
            self._decode_fill += n
            return self._next_tag - 1
        self._decode_fill = n if phase == "decode" else 0
        self._next_tag += 1
        return self._next_tag - 1

    def _absorb(self, k, v, aux, pos, tag) -> None:
        m = k.shape[1]
        if self.an + m > self.ak.shape[1]:
            cap = max(2 * self.ak.shape[1], self.an + m)
            for name in ("ak", "av"):
                b = np.empty((self.kvh, cap, self.hd), np.float32)
                b[:, : self.an] = getattr(self, name)[:, : self.an]
                setattr(self, name, b)
            p = np.empty(cap, np.int64)
            p[: self.an] = self.apos[: self.an]
            self.apos = p
        s = self.an
        self.ak[:, s : s + m], self.av[:, s : s + m], self.apos[s : s + m] = k, v, pos
        self.an += m
        keys = (k if aux is None else aux).sum(0, dtype=np.float64)  # [m, hd] summed over KV heads
        tags, first = np.unique(tag, return_index=True)  # tags are non-decreasing
        counts = np.diff(np.append(first, m))
        sums = np.add.reduceat(keys, first, axis=0)  # [t, hd]
        if self.btag.size and tags[0] == self.btag[-1]:  # the last block continues
            self.bcount[-1] += counts[0]
            self.bsum[-1] += sums[0]
            tags, first, counts, sums = tags[1:], first[1:], counts[1:], sums[1:]
        self.bstart = np.append(self.bstart, s + first)
        self.bcount = np.append(self.bcount, counts)
        self.bsum = np.concatenate([self.bsum, sums])
        self.btag = np.append(self.btag, tags)

    def _history_nbytes(self) -> int:
        return self.ak.nbytes + self.av.nbytes + self.apos.nbytes + self.bsum.nbytes

    def _retrieve(self, q: np.ndarray, q_abs: np.ndarray, budget: int, sec: dict[str, float]) -> np.ndarray:
        nb = self.bcount.size
        if nb == 0:
            return np.zeros(self.kvh, np.int64)
        t0 = time.perf_counter()
        k = self.k_opt
        kb = math.ceil(k * nb) if isinstance(k, float) else int(k)
        if kb >= nb:
            top = np.arange(nb)
        else:
            reps = self.bsum / (self.bcount[:, None] * self.kvh)  # [B, hd]
            score = reps @ q.reshape(-1, self.hd).mean(0, dtype=np.float64)  # [B]
            top = np.argpartition(-score, kb - 1)[:kb]
            top = top[np.argsort(-score[top], kind="stable")]
        tok = np.cumsum(self.bcount[top])
        if tok[-1] > budget:  # compact positions: keep the best blocks that fit
            top = top[: int(np.searchsorted(tok, budget, side="right"))]
        t1 = time.perf_counter()
        sec["select"] += t1 - t0
        runs = self.backend.layout(top, self.bstart, self.bcount)
        idx = runs_to_index(runs)
        r = idx.size
        self.reserve(r)
        s = self.sink_n
        for h in range(self.kvh):
            np.take(self.ak[h], idx, axis=0, out=self.buf_k[h, s : s + r], mode="clip")
            np.take(self.av[h], idx, axis=0, out=self.buf_v[h, s : s + r], mode="clip")
            if self.compact:
                self.buf_pos[h, s : s + r] = self.apos[idx]
        sec["gather"] += time.perf_counter() - t1
        return np.full(self.kvh, r, np.int64)


def make_topk(**options: object) -> CacheFactory:
    o = check_options("topk", DEFAULTS, options)
    k = o["k"]
    if isinstance(k, str):  # from a CLI: "0.2" is a fraction, "64" a count
        k = float(k) if "." in k else int(k)
    if isinstance(k, bool) or not isinstance(k, int | float) or k <= 0 or (isinstance(k, float) and k > 1):
        raise ConfigError(f"topk: k must be a block count >= 1 or a fraction in (0, 1.0] (got {o['k']!r})")
    tables = table_cache()
    get_backend(str(o["accel"]))

    def factory(layer: int, text: TextSpec, rope: Rope) -> TopKCache:
        table = tables(rope, text) if o["positions"] == "compact" else None
        return TopKCache(text, rope, table=table, k=k, sink=int(o["sink"]), recent=int(o["recent"]),
                         decode_block=int(o["decode_block"]), positions=str(o["positions"]), accel=str(o["accel"]))

    return factory


register_policy("topk", make_topk)
