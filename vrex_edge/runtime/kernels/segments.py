"""What the attention kernels read: KV segments with per-head lengths."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np


class Segment(NamedTuple):
    """One run of cached KV per KV head: head h attends to k[h, :lens[h]] and v[h, :lens[h]].

    k, v: [KVH, cap, hd] buffers (numpy arrays or views on the host; an engine may accept its own
    device buffers). lens: [KVH] int, or None for cap tokens in every head."""

    k: Any
    v: Any
    lens: np.ndarray | None = None


def capacity(buf: Any) -> int:
    """Tokens per head that a [KVH, cap, hd] buffer holds (numpy arrays, or OrtValues whose shape is a method)."""
    shape = buf.shape() if callable(buf.shape) else buf.shape
    return int(shape[1])


def segment_lens(seg: Segment, kvh: int) -> np.ndarray:
    """-> [KVH] int64 tokens each head reads from `seg`."""
    cap = capacity(seg.k)
    if seg.lens is None:
        return np.full(kvh, cap, np.int64)
    lens = np.asarray(seg.lens, np.int64).reshape(kvh)  # [KVH]
    assert (lens >= 0).all() and (lens <= cap).all(), "segment lengths outside the buffer"
    return lens
