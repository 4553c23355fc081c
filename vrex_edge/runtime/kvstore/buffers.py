"""Resident buffers under the KV budget: the open-cluster area that grows only once the budget made
room, the attention workspace shared by layers, per-layer attention buffers, and the allocator
settings that keep freed KV out of the process's RSS."""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING, Any

import numpy as np

from vrex_edge.runtime.retrieval.clusters import _Rows

if TYPE_CHECKING:
    from vrex_edge.runtime.kvstore.tiers import TierManager


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


class WatchedRows(_Rows):
    """The open-cluster area of one head, growing only after the budget made room."""

    def __init__(self, hd: int, cap: int, mgr: TierManager, layer: int):
        super().__init__(hd, cap)
        self.mgr, self.layer = mgr, layer

    def reserve(self, need: int) -> None:
        cap = self.k.shape[0]
        if need > cap:
            row = self.nbytes() // max(cap, 1)
            with self.mgr.hot.lock:  # the prefetch thread must not take the room made here
                self.mgr.ensure(max(need, 2 * cap) * row)  # old and new coexist during the copy
                super().reserve(need)
                self.mgr.recount(self.layer)


class Workspace:
    """buf_k/buf_v/buf_pos for every layer: one set of arrays, since layers run one at a time."""

    def __init__(self, mgr: TierManager, kvh: int, hd: int):
        self.mgr, self.kvh, self.hd = mgr, kvh, hd
        self.k = np.empty((kvh, 0, hd), np.float32)  # [KVH, cap, hd]
        self.v = np.empty_like(self.k)
        self.pos = np.empty((kvh, 0), np.int64)

    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes + self.pos.nbytes

    def reserve(self, cache: Any, need: int) -> None:
        """WindowedCache.reserve in tier mode (called at the start of every attend and before a gather)."""
        self.mgr.on_reserve(cache)
        if need > self.k.shape[1]:
            cap = max(need, int(self.k.shape[1] * 1.25), 256)
            if cache.compact:  # the attended set never exceeds the model's positions
                cap = min(cap, max(need, cache.max_positions))
            self.grow(cap)
        cache.buf_k, cache.buf_v, cache.buf_pos = self.k, self.v, self.pos

    def grow(self, cap: int) -> None:
        """Reallocate to `cap` tokens (contents are not kept: buffers are filled per call)."""
        if cap > self.k.shape[1]:
            with self.mgr.hot.lock:  # the prefetch thread must not take the room made here
                self.mgr.ensure(cap * self.kvh * (2 * self.hd * 4 + 8) - self.nbytes())
                for c in self.mgr.caches:  # drop every reference to the old arrays first
                    if c.workspace is self:
                        c.buf_k = c.buf_v = c.buf_pos = None
                self.k = self.v = self.pos = None
                self.k = np.empty((self.kvh, cap, self.hd), np.float32)
                self.v = np.empty_like(self.k)
                self.pos = np.empty((self.kvh, cap), np.int64)
                self.mgr.fixed_ws = self.nbytes()


class LayerBuffer:
    """Absolute positions with incremental gather (resv incremental=1): each layer keeps its own
    attention buffer, in which BufferedGather keeps the sealed clusters of the last selection,
    so a frame copies (and fetches) only the clusters it newly selects, as all-resident ReSV
    does. The buffers count in the budget (the hot cache gets what is left); one grows by 25%
    when the budget has room for that, else to exactly what it needs. When even that would leave
    less than 1/8 of the budget to the hot cache, the layer gives its buffer up and joins the shared
    workspace (it then gathers its whole selection from the hot cache on every call)."""

    def __init__(self, mgr: TierManager, layer: int):
        self.mgr, self.layer = mgr, layer

    def reserve(self, cache: Any, need: int) -> None:
        self.mgr.on_reserve(cache)
        cap = cache.buf_k.shape[1]
        if need <= cap:
            return
        per = cache.kvh * (2 * cache.hd * 4 + 8)  # bytes per token row: k, v (f32) and pos (i64)
        old = cap * per
        new = max(need, cap + cap // 4, 256)
        margin = self.mgr.budget // 8 if self.mgr.config.budget is not None else 0
        if not self.mgr.room_for(new * per - old + margin):
            new = need
            if not self.mgr.room_for(new * per - old + margin):
                self._share(cache, need)
                return
        cache.buf_k = cache.buf_v = cache.buf_pos = None  # the old rows are refilled, not copied
        if cache.gatherer is not None:
            cache.gatherer.buf = None
        with self.mgr.hot.lock:  # the prefetch thread must not take the room made here
            self.mgr.recount(self.layer)
            self.mgr.ensure(new * per, demote=False)
            cache.buf_k = np.empty((cache.kvh, new, cache.hd), np.float32)  # [KVH, cap, hd]
            cache.buf_v = np.empty_like(cache.buf_k)
            cache.buf_pos = np.empty((cache.kvh, new), np.int64)
            self.mgr.recount(self.layer)

    def _share(self, cache: Any, need: int) -> None:
        cache.buf_k = cache.buf_v = cache.buf_pos = None
        cache.gatherer = None  # resv gathers every selected cluster on each call from here on
        cache.workspace = self.mgr.workspace
        self.mgr.recount(self.layer)
        self.mgr.workspace.reserve(cache, need)


def _libc() -> Any:
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None
    except OSError:  # not glibc
        return None


_LIBC = _libc()
M_MMAP_THRESHOLD = -3


def fix_mmap_threshold(nbytes: int = 64 << 10) -> None:
    """Arrays above `nbytes` always get their own mapping, returned to the OS when freed. glibc
    otherwise raises the threshold to the largest block freed so far (up to 32 MiB), after which
    workspaces and cluster tables come from the heap, between hot clusters, and the heap's
    high-water mark (RSS) grows with every reallocation. 64 KiB rather than 1 MiB: per-frame
    temporaries that scale with the number of clusters (selection masks and masses, candidate
    tables) otherwise land in the heap between hot records, slightly larger each minute, and
    the hour-long soak's RSS grew 12% from minute 10 to 60 (1 MiB) instead of ~2-6% (64 KiB)."""
    if _LIBC is not None:
        _LIBC.mallopt(M_MMAP_THRESHOLD, nbytes)


def release_free_memory() -> None:
    """Give the allocator's free pages back to the OS (glibc: malloc_trim). Evicted hot clusters
    are many small blocks; without this their pages stay in the process's RSS after the hot cache
    shrinks (for a larger workspace), and RSS creeps up although resident KV stays in the budget."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
