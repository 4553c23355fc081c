"""Exact softmax attention on the host, GQA-aware, without copying the cache.

The history (keys the policy chose) and the current chunk (causal among itself) are scored
separately and merged with one shared softmax, so the cache is never concatenated.
"""

from __future__ import annotations

import numpy as np

from vrex_edge.scratch import work


def _causal_bias(n: int) -> np.ndarray:
    return np.triu(np.full((n, n), -np.inf, dtype=np.float32), k=1)  # [n, n]


def attend(
    q: np.ndarray,
    k_hist: np.ndarray,
    v_hist: np.ndarray,
    k_new: np.ndarray,
    v_new: np.ndarray,
) -> np.ndarray:
    """Attention of a chunk over (history + itself).

    q: [KVH, G, n, hd] rotated queries grouped by the KV head they share
    k_hist, v_hist: [KVH, N, hd] rotated history (N may be 0, same N for every head)
    k_new, v_new: [KVH, n, hd] the chunk's own keys/values
    returns [KVH, G, n, hd]
    """
    kvh, g, n, hd = q.shape
    scale = np.float32(1.0 / np.sqrt(hd))
    qf = (q * scale).reshape(kvh, g * n, hd)  # [KVH, G*n, hd]
    s_new = np.matmul(qf, k_new.transpose(0, 2, 1)).reshape(kvh, g, n, n) + _causal_bias(n)  # [KVH, G, n, n]
    s_new = s_new.reshape(kvh, g * n, n)
    m = s_new.max(-1, keepdims=True)  # [KVH, G*n, 1]
    if k_hist.shape[1]:
        s_hist = np.matmul(qf, k_hist.transpose(0, 2, 1), out=work("attend.s", (kvh, g * n, k_hist.shape[1])))
        m = np.maximum(m, s_hist.max(-1, keepdims=True))
        p_hist = np.exp(s_hist - m, out=s_hist)
        denom = p_hist.sum(-1, keepdims=True)
        acc = np.matmul(p_hist, v_hist)  # [KVH, G*n, hd]
    else:
        denom = np.zeros_like(m)
        acc = np.zeros((kvh, g * n, hd), dtype=np.float32)
    p_new = np.exp(s_new - m)
    denom = denom + p_new.sum(-1, keepdims=True)
    acc += np.matmul(p_new, v_new)
    return (acc / denom).reshape(kvh, g, n, hd)


def attend_head(
    q: np.ndarray,
    k_hist: np.ndarray,
    v_hist: np.ndarray,
    k_new: np.ndarray,
    v_new: np.ndarray,
) -> np.ndarray:
    """One KV head with its own history length (policies that keep a different set per head).

    q: [G, n, hd]; k_hist, v_hist: [N_h, hd]; k_new, v_new: [n, hd] -> [G, n, hd]
    """
    return attend(q[None], k_hist[None], v_hist[None], k_new[None], v_new[None])[0]
