"""The hot-cluster cache: fetched (and freshly sealed) clusters kept resident, LRU by bytes.

Entries are the cold records of one cluster ([count, 2*hd + 2] f32: k, v, pos). Recency is a
tick per (layer, KV head, cluster) in numpy arrays, so a gather touches its whole selection in
one vectorised store; eviction finds the oldest ticks across every layer in one pass, in
batches. Entries with the current tick are pinned (the gather in progress needs them).

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


class HotCache:
    def __init__(self, layers: int, kvh: int):
        self.entries: list[list[dict[int, np.ndarray]]] = [[{} for _ in range(kvh)] for _ in range(layers)]
        self.tick = [[np.full(0, -1, np.int64) for _ in range(kvh)] for _ in range(layers)]  # -1: absent
        self.size = [[np.zeros(0, np.int64) for _ in range(kvh)] for _ in range(layers)]  # bytes per entry
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
            self.tick[layer][h] = np.concatenate([t, np.full(cap - t.size, -1, np.int64)])
            self.size[layer][h] = np.concatenate([self.size[layer][h], np.zeros(cap - t.size, np.int64)])

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

    def put(self, layer: int, h: int, cid: int, rec: np.ndarray, tick: int) -> None:
        """Insert an entry whose bytes were reserved by make_room (a duplicate gives them back)."""
        d = self.entries[layer][h]
        if cid in d:
            self.release(rec.nbytes, layer)
            return
        self._fit(layer, h, cid + 1)
        d[cid] = rec
        self.tick[layer][h][cid] = tick
        self.size[layer][h][cid] = rec.nbytes

    def records(self, layer: int, h: int, ids: np.ndarray) -> list[np.ndarray]:
        """The entries of present clusters `ids`, in that order (one map call: a gather asks for thousands)."""
        return list(map(self.entries[layer][h].__getitem__, ids.tolist()))

    def discard(self, layer: int, h: int, ids: np.ndarray) -> None:
        d, t = self.entries[layer][h], self.tick[layer][h]
        ids = ids[ids < t.size]
        ids = ids[t[ids] >= 0]  # present (an entry has a tick >= 0 exactly while it is in d)
        if ids.size == 0:
            return
        pop = d.pop
        for c in ids.tolist():  # an eviction drops ~15K entries: one bulk release, not one per entry
            pop(c)
        t[ids] = -1
        n = int(self.size[layer][h][ids].sum())
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
        return sum(len(d) for rows in self.entries for d in rows)


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
