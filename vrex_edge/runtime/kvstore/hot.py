"""The hot-cluster cache: fetched (and freshly sealed) clusters kept resident, LRU by bytes.

An entry holds the cold records of one cluster ([count, 2*hd + 2] f32 rows: k, v, pos). The rows
of every entry live in one slab [capacity, 2*hd + 2] f32, a row per slot: a free list hands out
slots and takes back those of evicted entries, and per layer a table maps each cold-log row to
its slot. So a gather of thousands of one- and two-token clusters is one vectorised `np.take`
(there used to be one small array per entry, joined by `np.concatenate` at ~75 ns per entry);
eviction leaves no holes (a freed slot is the next one handed out), and the slab's touched
pages never exceed the most bytes the cache ever held, which the budget bounds. With a budget
the slab is reserved at its size up front (pages are touched only as slots are used); without
one it grows.

Recency is a tick per (layer, KV head, cluster) in numpy arrays, so a gather touches its whole
selection in one vectorised store; eviction finds the oldest ticks across every layer in one pass,
in batches. Entries with the current tick are pinned (the gather in progress needs them).

Layers are visited cyclically (0, 1, ..., L-1, 0, ...), so one global LRU evicts exactly the
layer that runs next once the cache is full (docs/policies.md). Each layer has a
fair share (limit / L): eviction takes entries of the layers above their share first (the
requesting layer counted with what it asks for), oldest first, and only then the globally
oldest. A layer's clusters selected in the last frame thus stay until that layer runs again.
Thread-safe: the prefetch thread inserts under `lock`.
"""

from __future__ import annotations

import threading

import numpy as np

from vrex_edge.runtime.arrays import grow


class HotCache:
    def __init__(self, layers: int, kvh: int, rec: int, capacity: int | None = None):
        """rec: f32 words per row; capacity: slab rows (the budget's worth; None: the slab grows)."""
        self.tick = [[np.full(0, -1, np.int64) for _ in range(kvh)] for _ in range(layers)]  # -1: absent
        self.size = [[np.zeros(0, np.int64) for _ in range(kvh)] for _ in range(layers)]  # bytes per entry
        self.first = [[np.zeros(0, np.int64) for _ in range(kvh)] for _ in range(layers)]  # its first cold-log row
        self.slot = [np.full(0, -1, np.int32) for _ in range(layers)]  # per layer: cold-log row -> slab slot
        self.rec, self.row_bytes = rec, 4 * rec
        self.fixed = capacity is not None
        self.slab = np.empty((capacity or 0, rec), np.float32)  # pages are touched only as slots are used
        self.free = np.arange(self.slab.shape[0] - 1, -1, -1, dtype=np.int32)  # a stack: slot 0 is handed out first
        self.nfree = self.free.size
        self.bytes = 0  # entries + reservations in flight
        self.layer_bytes = np.zeros(layers, np.int64)  # the same, per layer
        self.now = 1
        self.lock = threading.RLock()
        self.evicted = 0
        self.freed = 0  # bytes ever evicted or discarded

    def _fit(self, layer: int, h: int, n: int) -> None:
        t = self.tick[layer][h]
        if n > t.size:
            cap = max(n, 2 * t.size, 64)
            self.tick[layer][h] = grow(t, cap, fill=-1, factor=1.0)
            self.size[layer][h] = grow(self.size[layer][h], cap, fill=0, factor=1.0)
            self.first[layer][h] = grow(self.first[layer][h], cap, fill=0, factor=1.0)

    def begin(self) -> int:
        """A new gather: entries touched from here on are pinned until the next one."""
        self.now += 2
        return self.now

    def absent(self, layer: int, h: int, ids: np.ndarray) -> np.ndarray:
        if ids.size == 0:
            return ids
        self._fit(layer, h, int(ids.max()) + 1)
        return ids[self.tick[layer][h][ids] < 0]

    def absent_mask(self, layer: int, h: int, ids: np.ndarray) -> np.ndarray:
        """[len(ids)] bool: which of ids have no entry."""
        if ids.size == 0:
            return np.zeros(0, bool)
        self._fit(layer, h, int(ids.max()) + 1)
        return self.tick[layer][h][ids] < 0

    def touch(self, layer: int, h: int, ids: np.ndarray, tick: int | None = None) -> None:
        """Mark present ids as used now (tick None) or at `tick`."""
        if ids.size:
            self._fit(layer, h, int(ids.max()) + 1)
            t = self.tick[layer][h]
            present = ids[t[ids] >= 0]
            t[present] = self.now if tick is None else tick

    def make_room(self, nbytes: int, limit: int, *, layer: int = -1, slack: int = 0, prefetch: bool = False) -> bool:
        """Evict unpinned entries until bytes + nbytes <= limit (layers above their share first,
        oldest first); reserve nbytes for `layer` (-1: nothing is reserved, only room made).
        Evicts `slack` extra bytes when it has to evict at all (amortises the search). The
        gather may evict entries prefetched for it (tick now - 1); the prefetcher may not."""
        if self.bytes + nbytes > limit:
            self._evict(
                self.bytes + nbytes - limit + slack, self.now - 1 if prefetch else self.now, limit, layer, nbytes
            )
            if self.bytes + nbytes > limit:
                return False
        if layer >= 0:
            self.bytes += nbytes
            self.layer_bytes[layer] += nbytes
        return True

    def release(self, nbytes: int, layer: int) -> None:
        self.bytes -= nbytes
        self.layer_bytes[layer] -= nbytes

    def put(
        self, layer: int, h: int, ids: np.ndarray, first: np.ndarray, counts: np.ndarray, rows: np.ndarray, tick: int
    ) -> None:
        """Insert clusters `ids` (distinct) of counts[i] rows each, starting at cold-log row first[i]; rows
        [counts.sum(), rec] holds their records in turn. Their bytes were reserved by make_room; entries
        already present give theirs back."""
        if ids.size == 0:
            return
        self._fit(layer, h, int(ids.max()) + 1)
        t = self.tick[layer][h]
        new = t[ids] < 0
        if not new.all():  # duplicates (a read raced a write-through): keep the entry, return the bytes
            self.release(int(counts[~new].sum()) * self.row_bytes, layer)
            rows = rows[np.repeat(new, counts)]
            ids, first, counts = ids[new], first[new], counts[new]
            if ids.size == 0:
                return
        span = _spans(first, counts)  # their cold-log rows
        slots = self._take_slots(span.size)
        self.slab[slots] = rows
        self.slot[layer] = grow(self.slot[layer], int(span.max()) + 1, fill=-1, factor=1.25, minimum=1024)
        self.slot[layer][span] = slots
        t[ids] = tick
        self.size[layer][h][ids] = counts * self.row_bytes
        self.first[layer][h][ids] = first

    def _take_slots(self, n: int) -> np.ndarray:
        """n free slots (those freed most recently first, at first the lowest), growing an unbounded slab."""
        if n > self.nfree:
            if self.fixed:
                raise RuntimeError("hot cache slab overflow: make_room reserves what put stores")
            old = self.slab.shape[0]
            self.slab = grow(self.slab, old + n - self.nfree, factor=1.5, minimum=1024)
            self._give_back(np.arange(old, self.slab.shape[0], dtype=np.int32), under=True)
        out = self.free[self.nfree - n : self.nfree][::-1].copy()
        self.nfree -= n
        return out

    def _give_back(self, slots: np.ndarray, *, under: bool = False) -> None:
        """Return slots to the free stack: on top (handed out next, the first of `slots` first), or
        `under` every free slot (new ones: what was freed is reused before fresh pages are touched)."""
        self.free = grow(self.free, self.nfree + slots.size, factor=1.5, minimum=1024)
        if under:
            self.free[slots.size : self.nfree + slots.size] = self.free[: self.nfree].copy()
            self.free[: slots.size] = slots[::-1]
        else:
            self.free[self.nfree : self.nfree + slots.size] = slots[::-1]
        self.nfree += slots.size

    def slots(self, layer: int, h: int, ids: np.ndarray) -> np.ndarray:
        """The slab slots of present clusters `ids`' rows, in that order (np.take(slab, slots) gathers them)."""
        if ids.size == 0:
            return np.zeros(0, np.int32)
        cnt = self.size[layer][h][ids] // self.row_bytes
        return self.slot[layer][_spans(self.first[layer][h][ids], cnt)]

    def discard(self, layer: int, h: int, ids: np.ndarray) -> None:
        t = self.tick[layer][h]
        ids = ids[ids < t.size]
        ids = ids[t[ids] >= 0]  # present
        if ids.size == 0:
            return
        size = self.size[layer][h][ids]
        rows = _spans(self.first[layer][h][ids], size // self.row_bytes)
        self._give_back(self.slot[layer][rows])
        self.slot[layer][rows] = -1
        t[ids] = -1
        n = int(size.sum())
        self.release(n, layer)
        self.freed += n

    def _evict(self, need: int, floor: int, limit: int, layer: int, nbytes: int) -> None:
        use = self.layer_bytes.copy()
        if layer >= 0:
            use[layer] += nbytes
        over = use > max(limit, 0) // len(self.tick)  # [L] layers above their fair share
        ticks, sizes, where = [], [], []
        found = 0
        for first in (True, False):  # over-share layers first; the others only if those cannot free `need`
            if not first and found >= need:
                break
            for li, rows in enumerate(self.tick):
                if bool(over[li]) != first:
                    continue
                for h, t in enumerate(rows):
                    ids = np.flatnonzero((t >= 0) & (t < floor))
                    if ids.size:
                        ticks.append(t[ids] + (0 if first else 1 << 40))
                        sizes.append(self.size[li][h][ids])
                        found += int(sizes[-1].sum())
                        where.append((li, h, ids))
        if not ticks:
            return
        tk, sz = np.concatenate(ticks), np.concatenate(sizes)
        order = _oldest(tk, sz, need)
        cum = np.cumsum(sz[order])
        k = min(int(np.searchsorted(cum, need)) + 1, order.size)
        chosen = np.zeros(tk.size, bool)
        chosen[order[:k]] = True
        o = 0
        for li, h, ids in where:
            pick = ids[chosen[o : o + ids.size]]
            o += ids.size
            if pick.size:
                self.discard(li, h, pick)
                self.evicted += pick.size

    def count(self) -> int:
        return sum(int(np.count_nonzero(t >= 0)) for rows in self.tick for t in rows)


def _spans(first: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Row ranges first[i] .. first[i] + counts[i] - 1, concatenated in order."""
    offs = np.cumsum(counts) - counts
    return np.arange(int(counts.sum()), dtype=np.int64) + np.repeat(first - offs, counts)


def _oldest(tk: np.ndarray, sizes: np.ndarray, need: int) -> np.ndarray:
    """The head of np.argsort(tk, kind="stable") that holds at least `need` bytes (or all of it).
    A full sort of every hot entry took ~35 ms at 500K entries, on each eviction; a partition
    finds the few thousand oldest in ~2 ms. Every entry tied with the last one taken comes along,
    so the head (and what is evicted) is the full sort's."""
    m = max(256, 2 * need // max(int(sizes.mean()), 1))
    while m < tk.size:
        bound = tk[np.argpartition(tk, m - 1)[m - 1]]  # the m-th smallest tick
        head = np.flatnonzero(tk <= bound)
        if int(sizes[head].sum()) >= need:
            return head[np.argsort(tk[head], kind="stable")]
        m *= 4
    return np.argsort(tk, kind="stable")
