"""int8 copies of a ClusterStore's resident representatives, for the host's int8 scoring (accel/q8.py)."""

from __future__ import annotations

import threading

import numpy as np

from vrex_edge.accel.q8 import quantize_columns
from vrex_edge.runtime.arrays import grow
from vrex_edge.scratch import work


class Int8Reps:
    """int8 copies of one store's resident representatives ([KVH, hd, cap] like its means_t), brought
    up to date lazily: columns below fresh[h] are current unless marked in dirty[h] (a change to a
    representative marks its column). A lock makes stale() and current() atomic to each other (the KV
    tiers' prefetch thread scores too): a store marks a column after writing it, so no change is lost."""

    def __init__(self, kvh: int, hd: int):
        self.vals_t = np.zeros((kvh, hd, 0), np.int8)  # [KVH, hd, cap]
        self.scale = np.zeros((kvh, 0), np.float32)  # [KVH, cap]
        self.dirty = np.zeros((kvh, 0), bool)  # [KVH, cap] changed since quantized (columns < fresh[h])
        self.fresh = np.zeros(kvh, np.int64)
        self._lock = threading.Lock()

    def __deepcopy__(self, memo: dict) -> Int8Reps:
        new = Int8Reps(*self.vals_t.shape[:2])  # a lock cannot be copied: the copy gets its own
        for name in ("vals_t", "scale", "dirty", "fresh"):
            setattr(new, name, getattr(self, name).copy())
        return new

    def stale(self, h: int, cols: np.ndarray) -> None:
        """Representatives of head h in columns `cols` changed."""
        with self._lock:
            cols = cols[cols < self.fresh[h]]  # columns past fresh are quantized anyway
            if cols.size:
                self.dirty[h, cols] = True

    def invalidate(self) -> None:
        """Every column changed (the store shifted or restored its tables)."""
        with self._lock:
            self.fresh[:] = 0
            self.dirty[:] = False

    def current(self, means_t: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray]:
        """means_t [KVH, hd, >= c] f32 -> (vals [KVH, hd, c] int8, scale [KVH, c] f32), contiguous work
        arrays holding the int8 form of columns 0..c-1 (only changed and new columns are quantized)."""
        with self._lock:
            return self._current(means_t, c)

    def _current(self, means_t: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray]:
        kvh, hd = self.vals_t.shape[:2]
        # columns from fresh[h] on are written before they are read: no fill (fresh pages stay untouched)
        self.vals_t = grow(self.vals_t, c, axis=2, factor=1.25, minimum=256)
        self.scale = grow(self.scale, c, axis=1, factor=1.25, minimum=256)
        self.dirty = grow(self.dirty, c, axis=1, fill=False, factor=1.25, minimum=256)
        for h in range(kvh):
            lo = int(self.fresh[h])
            if lo < c:
                quantize_columns(means_t[h, :, lo:c], self.vals_t[h, :, lo:c], self.scale[h, lo:c])
                self.fresh[h] = c
            cols = np.flatnonzero(self.dirty[h, : min(lo, c)])
            if cols.size:
                v, s = np.empty((hd, cols.size), np.int8), np.empty(cols.size, np.float32)
                quantize_columns(means_t[h][:, cols], v, s)
                self.vals_t[h][:, cols], self.scale[h, cols] = v, s
                self.dirty[h, cols] = False
        vals = work("q8.vals", (kvh, hd, c), np.int8)  # the first c columns, contiguous for the GEMM
        np.copyto(vals, self.vals_t[:, :, :c])
        scale = work("q8.scale", (kvh, c))
        np.copyto(scale, self.scale[:, :c])
        return vals, scale

    def nbytes(self) -> int:
        return self.vals_t.nbytes + self.scale.nbytes + self.dirty.nbytes
