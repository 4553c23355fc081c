"""Resident buffers under the KV budget: the open-cluster area that grows only once the budget made
room, the attention workspace shared by layers, per-layer attention buffers, and the allocator
settings that keep freed KV out of the process's RSS."""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING, Any

import numpy as np

from vrex_edge.runtime.arrays import grow
from vrex_edge.runtime.retrieval.storage import Rows

if TYPE_CHECKING:
    from vrex_edge.runtime.kvstore.tiers import TierManager


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


class WatchedRows(Rows):
    """The open-cluster area of one head, growing only after the budget made room. Before growing it
    drops the rows of sealed clusters, and it grows (by doubling) to the manager's `open_cap` rows at
    most, the largest the open clusters can hold, so it stays within the fixed bound (bound.py)."""

    def __init__(self, hd: int, cap: int, mgr: TierManager, layer: int):
        super().__init__(hd, cap)
        self.mgr, self.layer = mgr, layer

    def reserve(self, need: int) -> None:
        cap = self.k.shape[0]
        if need <= cap:
            return
        if self.dead:  # append() asks for n + m rows: the same m after the dead rows are gone
            need -= self.n
            self._compact()
            need += self.n
            if need <= cap:
                return
        limit = int(self.mgr.open_cap[self.layer])
        new = max(need, min(2 * cap, limit)) if limit else max(need, 2 * cap)
        row = self.nbytes() // max(cap, 1)
        self.mgr.settle()
        with self.mgr.hot.lock:  # the prefetch thread must not take the room made here
            self.mgr.ensure(new * row)  # old and new coexist during the copy
            self.k, self.v = grow(self.k, new, used=self.n, factor=1.0), grow(self.v, new, used=self.n, factor=1.0)
            self.pos = grow(self.pos, new, used=self.n, factor=1.0)
            self.owner = grow(self.owner, new, used=self.n, factor=1.0)
            self.mgr.recount(self.layer)

    def _compact(self) -> None:
        live = np.flatnonzero(self.owner[: self.n] >= 0)
        m = live.size
        self.k[:m], self.v[:m], self.pos[:m], self.owner[:m] = (
            self.k[live],
            self.v[live],
            self.pos[live],
            self.owner[live],
        )
        self.n, self.dead = m, 0


class Workspace:
    """The attended set of every layer that has no buffer of its own: one set of arrays, since layers
    run one at a time. Its rows are refilled on every call."""

    def __init__(self, mgr: TierManager, kvh: int, hd: int):
        self.mgr, self.kvh, self.hd = mgr, kvh, hd
        self.k: np.ndarray | None = np.empty((kvh, 0, hd), np.float32)  # [KVH, cap, hd]
        self.v: np.ndarray | None = np.empty_like(self.k)
        self.pos: np.ndarray | None = np.empty((kvh, 0), np.int64)
        self.generation = 0

    @property
    def capacity(self) -> int:
        return 0 if self.k is None else self.k.shape[1]

    def nbytes(self) -> int:
        return sum(0 if a is None else a.nbytes for a in (self.k, self.v, self.pos))

    def reserve(self, layer: int, need: int, max_rows: int | None) -> None:
        """Layer `layer` starts a call (or a gather) needing `need` rows per head."""
        self.mgr.on_reserve(layer)
        if need > self.capacity:
            cap = max(need, int(self.capacity * 1.25), 256)
            if max_rows is not None:  # compact positions: the attended set never exceeds the model's positions
                cap = min(cap, max(need, max_rows))
            self.grow(cap, need)

    def grow(self, cap: int, need: int | None = None) -> None:
        """Reallocate to `cap` rows, or to `need` (<= cap) when the budget has no room for `cap`
        (contents are not kept: buffers are filled per call)."""
        if cap > self.capacity:
            per = self.kvh * (2 * self.hd * 4 + 8)
            self.mgr.settle()
            with self.mgr.hot.lock:  # the prefetch thread must not take the room made here
                self.release()  # the old arrays go before the new ones come
                if need is not None and need < cap and not self.mgr.room_for(cap * per):
                    cap = need
                self.mgr.ensure(cap * per)
                self.k = np.empty((self.kvh, cap, self.hd), np.float32)
                self.v = np.empty_like(self.k)
                self.pos = np.empty((self.kvh, cap), np.int64)
                self.mgr.fixed_ws = self.nbytes()

    def release(self) -> bool:
        """Free the arrays (between calls, when the budget needs the room) -> whether there were any."""
        if self.capacity == 0:
            return False
        self.k = np.empty((self.kvh, 0, self.hd), np.float32)
        self.v = np.empty_like(self.k)
        self.pos = np.empty((self.kvh, 0), np.int64)
        self.generation += 1
        self.mgr.fixed_ws = 0
        return True


class SharedBuffer:
    """One layer's view of the Workspace (an AttentionBuffer whose rows do not survive a call)."""

    keeps_rows = False

    def __init__(self, ws: Workspace, layer: int, max_rows: int | None):
        self.ws, self.layer, self.max_rows = ws, layer, max_rows

    k = property(lambda self: self.ws.k)
    v = property(lambda self: self.ws.v)
    pos = property(lambda self: self.ws.pos)
    generation = property(lambda self: self.ws.generation)

    def reserve(self, need: int) -> None:
        self.ws.reserve(self.layer, need, self.max_rows)

    def retrieved_cap(self) -> int:
        """Retrieved tokens per KV head the budget leaves room for now (0: no cap)."""
        return self.ws.mgr.retrieved_cap(self.layer)

    def nbytes(self) -> int:
        return 0  # counted once, as the workspace


class LayerBuffer:
    """Absolute positions with incremental gather (resv incremental=1): the layer keeps its own
    attention buffer, in which BufferedGather keeps the sealed clusters of the last selection, so a
    frame copies (and fetches) only the clusters it newly selects, as all-resident ReSV does. The
    buffers count in the budget (the hot cache gets what is left); one grows by 25% when the budget
    has room for that, else to exactly what it needs. When even that would leave less than 1/8 of
    the budget to the hot cache, or the manager needs the room (`share`), the layer gives its
    buffer up for good and uses the shared workspace (it then gathers its whole selection from the
    hot cache on every call)."""

    def __init__(self, mgr: TierManager, layer: int, kvh: int, hd: int):
        self.mgr, self.layer, self.kvh, self.hd = mgr, layer, kvh, hd
        self._k: np.ndarray | None = np.empty((kvh, 0, hd), np.float32)  # [KVH, cap, hd]
        self._v: np.ndarray | None = np.empty_like(self._k)
        self._pos: np.ndarray | None = np.empty((kvh, 0), np.int64)
        self.generation = 0
        self.shared: SharedBuffer | None = None  # set once the buffer was given up

    k = property(lambda self: self._k if self.shared is None else self.shared.k)
    v = property(lambda self: self._v if self.shared is None else self.shared.v)
    pos = property(lambda self: self._pos if self.shared is None else self.shared.pos)

    @property
    def keeps_rows(self) -> bool:
        return self.shared is None

    def nbytes(self) -> int:
        """Resident bytes of the layer's own arrays (0 once shared)."""
        return sum(0 if a is None else a.nbytes for a in (self._k, self._v, self._pos))

    def reserve(self, need: int) -> None:
        if self.shared is None:
            self.mgr.on_reserve(self.layer)
        if self.shared is not None:  # given up before, or while the manager made room
            self.shared.reserve(need)
            return
        cap = self._k.shape[1]
        if need <= cap:
            return
        per = self.kvh * (2 * self.hd * 4 + 8)  # bytes per token row: k, v (f32) and pos (i64)
        old = cap * per
        new = max(need, cap + cap // 4, 256)
        margin = self.mgr.budget // 8 if self.mgr.config.budget is not None else 0
        if not self.mgr.room_for(new * per - old + margin):
            new = need
            if not self.mgr.room_for(new * per - old + margin):
                self.share()
                self.reserve(need)
                return
        self._k = self._v = self._pos = None  # the old rows are refilled, not copied
        self.generation += 1
        self.mgr.settle()
        with self.mgr.hot.lock:  # the prefetch thread must not take the room made here
            self.mgr.recount(self.layer)
            self.mgr.ensure(new * per, demote=False)
            self._k = np.empty((self.kvh, new, self.hd), np.float32)
            self._v = np.empty_like(self._k)
            self._pos = np.empty((self.kvh, new), np.int64)
            self.mgr.recount(self.layer)

    def retrieved_cap(self) -> int:
        """Retrieved tokens per KV head the budget leaves room for now (0: no cap)."""
        return self.mgr.retrieved_cap(self.layer)

    def share(self) -> None:
        """Give the own arrays up; from now on the layer uses the shared workspace."""
        if self.shared is None:
            self.shared = SharedBuffer(self.mgr.workspace, self.layer, None)
            self._k = self._v = self._pos = None
            self.generation += 1
            self.mgr.recount(self.layer)


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
    workspaces, cluster tables and per-frame temporaries come from the heap between hot records, and
    the heap's high-water mark (RSS) grows with every reallocation (why 64 KiB: docs/policies.md)."""
    if _LIBC is not None:
        _LIBC.mallopt(M_MMAP_THRESHOLD, nbytes)


def release_free_memory() -> None:
    """Give the allocator's free pages back to the OS (glibc: malloc_trim). Evicted hot clusters
    are many small blocks; without this their pages stay in the process's RSS after the hot cache
    shrinks (for a larger workspace), and RSS creeps up although resident KV stays in the budget."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
