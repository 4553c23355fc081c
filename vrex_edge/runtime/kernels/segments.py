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


def segment_lens(seg: Segment, kvh: int) -> np.ndarray:
    """-> [KVH] int64 tokens each head reads from `seg`."""
    if seg.lens is None:
        return np.full(kvh, seg.k.shape[1], np.int64)
    lens = np.asarray(seg.lens, np.int64).reshape(kvh)  # [KVH]
    assert (lens >= 0).all() and (lens <= seg.k.shape[1]).all(), "segment lengths outside the buffer"
    return lens
