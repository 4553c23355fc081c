"""The plain numpy reference for the attention kernels: the oracle the engines are tested against.

Per KV head it concatenates the head's segments and the chunk, scores in float64 and applies one
softmax with the chunk causal among itself. Slow and history-sized on purpose: it is for tests.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vrex_edge.runtime.kernels.segments import Segment, segment_lens


def attend_reference(q: np.ndarray, segments: Sequence[Segment], k_new: np.ndarray, v_new: np.ndarray) -> np.ndarray:
    """q [KVH, G, n, hd], segments of [KVH, >=len, hd] with per-head lengths, k_new/v_new [KVH, n, hd]
    -> [KVH, G, n, hd] float32 (computed in float64)."""
    kvh, g, n, hd = q.shape
    out = np.empty((kvh, g, n, hd), np.float32)  # [KVH, G, n, hd]
    causal = np.triu(np.full((n, n), -np.inf), k=1)  # [n, n]
    lens = [segment_lens(s, kvh) for s in segments]
    for h in range(kvh):
        ks = [np.asarray(s.k[h, : ln[h]], np.float64) for s, ln in zip(segments, lens, strict=True)]
        vs = [np.asarray(s.v[h, : ln[h]], np.float64) for s, ln in zip(segments, lens, strict=True)]
        k = np.concatenate([*ks, np.asarray(k_new[h], np.float64)])  # [L + n, hd]
        v = np.concatenate([*vs, np.asarray(v_new[h], np.float64)])  # [L + n, hd]
        s = np.asarray(q[h], np.float64) @ k.T / np.sqrt(hd)  # [G, n, L + n]
        s[..., k.shape[0] - n :] += causal
        p = np.exp(s - s.max(-1, keepdims=True))  # [G, n, L + n]
        out[h] = (p @ v) / p.sum(-1, keepdims=True)
    return out
