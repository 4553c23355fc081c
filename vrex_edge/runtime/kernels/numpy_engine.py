"""Exact chunk attention in numpy: blocked online softmax over KV segments, no history-sized temporaries.

The chunk (causal among itself) starts the running max/sum/accumulator, so every query row has a
finite max; each segment is then read in blocks of `block` tokens, all KV heads in one batched
matmul over the tokens every head has, and per head over the tail a longer head has beyond that.
Scratch memory is one [KVH, G*n, block] score buffer kept by the engine (a few MB at most).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vrex_edge.runtime.kernels.segments import Segment, segment_lens


def causal_bias(n: int) -> np.ndarray:
    return np.triu(np.full((n, n), -np.inf, dtype=np.float32), k=1)  # [n, n]


def start_with_chunk(qs: np.ndarray, k_new: np.ndarray, v_new: np.ndarray, g: int):
    """qs [KVH, G*n, hd] scaled queries -> running max m, sum den [KVH, G*n, 1] and acc [KVH, G*n, hd]."""
    kvh, rows, _ = qs.shape
    n = rows // g
    s = np.matmul(qs, k_new.transpose(0, 2, 1))  # [KVH, G*n, n]
    s.reshape(kvh, g, n, n)[...] += causal_bias(n)
    m = s.max(-1, keepdims=True)  # [KVH, G*n, 1]
    np.exp(np.subtract(s, m, out=s), out=s)
    return m, s.sum(-1, keepdims=True), np.matmul(s, v_new)


def merge_partial(m, den, acc, m2, den2, acc2) -> None:
    """Fold a partial softmax (m2, den2, acc2: unnormalised, relative to max m2) into m, den, acc in place."""
    new = np.maximum(m, m2)  # [k, rows, 1]
    a, b = np.exp(m - new), np.exp(m2 - new)
    den *= a
    den += den2 * b
    acc *= a
    acc += acc2 * b
    m[...] = new


class NumpyEngine:
    """The host engine: numpy + its BLAS, one thread (see runtime/threads.py). Not thread-safe."""

    name = "numpy"

    def __init__(self, *, block: int = 4096):
        self.block = block
        self._scores = np.empty(0, np.float32)  # scratch: [KVH * G * n * block]
        self._kv = np.empty(0, np.float32)  # scratch for blocks stored in another dtype

    def __deepcopy__(self, memo: dict) -> NumpyEngine:
        return self  # a copied cache keeps its session's engine

    def attend(self, q: np.ndarray, segments: Sequence[Segment], k_new: np.ndarray, v_new: np.ndarray) -> np.ndarray:
        """q [KVH, G, n, hd] rotated queries, segments (see Segment), k_new/v_new [KVH, n, hd] the chunk
        (causal among itself) -> [KVH, G, n, hd] float32."""
        kvh, g, n, hd = q.shape
        qs = (q * np.float32(1.0 / np.sqrt(hd))).reshape(kvh, g * n, hd)  # [KVH, G*n, hd]
        m, den, acc = start_with_chunk(qs, k_new, v_new, g)  # [KVH, G*n, 1] x2, [KVH, G*n, hd]
        for seg in segments:
            self.fold(qs, seg.k, seg.v, segment_lens(seg, kvh), m, den, acc)
        acc /= den
        return acc.reshape(kvh, g, n, hd)

    def fold(self, qs, k, v, lens: np.ndarray, m, den, acc) -> None:
        """Fold head h's k/v[h, :lens[h]] ([k, cap, hd]) into the running m, den, acc ([k, rows, .]) in place."""
        common = int(lens.min()) if lens.size else 0
        self.scan(qs, k, v, 0, common, m, den, acc)  # every head at once over the tokens all heads have
        for h in np.flatnonzero(lens > common):  # the longer heads' tails, one head at a time
            hs = slice(h, h + 1)
            self.scan(qs[hs], k[hs], v[hs], common, int(lens[h]), m[hs], den[hs], acc[hs])

    def scan(self, qs, k, v, start: int, end: int, m, den, acc) -> None:
        """Fold tokens start..end of k/v [k, cap, hd] into the running m, den, acc (views, updated in place)."""
        heads, rows, hd = qs.shape
        for s0 in range(start, end, self.block):
            e = min(s0 + self.block, end)
            kb, vb = self._f32(k[:, s0:e], 0), self._f32(v[:, s0:e], 1)  # [k, b, hd]
            s = self._scratch(heads * rows * (e - s0)).reshape(heads, rows, e - s0)  # [k, rows, b]
            np.matmul(qs, kb.transpose(0, 2, 1), out=s)
            bm = s.max(-1, keepdims=True)  # [k, rows, 1]
            np.maximum(bm, m, out=bm)
            alpha = np.exp(m - bm)  # [k, rows, 1]
            m[...] = bm
            np.exp(np.subtract(s, bm, out=s), out=s)
            den *= alpha
            den += s.sum(-1, keepdims=True)
            acc *= alpha
            acc += np.matmul(s, vb)

    def _scratch(self, size: int) -> np.ndarray:
        if self._scores.size < size:
            self._scores = np.empty(size, np.float32)
        return self._scores[:size]

    def _f32(self, x: np.ndarray, slot: int) -> np.ndarray:
        """A float32 view of a block (fp16 storage is converted into engine scratch)."""
        if x.dtype == np.float32:
            return x
        size = 2 * x.size
        if self._kv.size < size:
            self._kv = np.empty(size, np.float32)
        out = self._kv[slot * x.size : (slot + 1) * x.size].reshape(x.shape)  # [k, b, hd]
        np.copyto(out, x)
        return out
