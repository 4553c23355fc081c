"""Incremental gather for `resv` in absolute positions: the attention buffer as a cluster cache.

Consecutive chunks select mostly the same clusters (docs/policies.md, `incremental`), and
a sealed cluster never changes. So the sealed clusters gathered for the last call stay in the
policy's attention buffer (rows sink .. sink + n of each head, in any order: with absolute
positions the attention is order-free); a new selection drops the clusters no longer wanted
(the buffer's tail rows fill the holes), and only newly selected sealed clusters are copied from
the arena. Open clusters can still grow, so their tokens are copied after the cached rows on
every call. The result is the same token set as a full gather.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from vrex_edge.runtime.arrays import grow

LANES_FROM = 16384  # selected clusters (all heads) from which the heads' gathers go out on lanes

if TYPE_CHECKING:
    from vrex_edge.runtime.retrieval.resv import ReSVCache


class BufferedGather:
    def __init__(self, cache: ReSVCache):
        self.cache = cache
        kvh = cache.kvh
        self.n = np.zeros(kvh, np.int64)  # cached rows per head (after the sink)
        self.owner = [np.empty(0, np.int64) for _ in range(kvh)]  # [cap] cluster id of each cached row
        self.cached = [np.zeros(0, bool) for _ in range(kvh)]  # [clusters] held in the buffer
        self.generation = -1  # of the buffer when the rows were cached (a reallocation empties it)
        self.sink = -1  # sink rows when the rows were cached (they sit after the sink)

    def holds(self) -> list[np.ndarray] | None:
        """Per head, which clusters the buffer holds now ([clusters] bool), or None when it holds none."""
        b = self.cache.buffer
        return self.cached if b.keeps_rows and self.generation == b.generation else None

    def _reset(self) -> None:
        c = self.cache
        self.n[:] = 0
        for h in range(c.kvh):
            self.cached[h][:] = False
        self.generation, self.sink = c.buffer.generation, c.sink_n

    def gather(self, sels: list[np.ndarray]) -> None:
        """Make buf_k/buf_v[h, sink : sink + r_h] hold the tokens of clusters sels[h] (r_h = their counts).

        Heads are independent: with a resident arena they go out on the attention engine's lanes
        (runtime/lanes.py; the copies release the GIL)."""
        c = self.cache
        if self.generation != c.buffer.generation or self.sink != c.sink_n:
            self._reset()
        lanes = getattr(c.engine, "lanes", None)
        big = sum(x.size for x in sels) >= LANES_FROM  # below it a thread hand-off costs more than it saves
        if big and lanes is not None and getattr(c.store.arena, "concurrent_heads", False):
            lanes.map(lambda h: self._head(h, sels[h]), range(c.kvh))
        else:
            for h in range(c.kvh):
                self._head(h, sels[h])

    def _head(self, h: int, sel: np.ndarray) -> None:
        c, st = self.cache, self.cache.store
        s = c.sink_n
        k, v = c.buf_k[h, s:], c.buf_v[h, s:]  # [cap, hd] rows after the sink
        nclu = int(st.nclu[h])
        self.cached[h] = grow(self.cached[h], nclu, fill=False)
        self.owner[h] = grow(self.owner[h], k.shape[0], factor=1.0)
        is_sealed = st.start[h, sel] >= 0
        want = np.zeros(nclu + 1, bool)
        want[sel[is_sealed]] = True
        owner, cached, n = self.owner[h], self.cached[h], int(self.n[h])
        keep = want[owner[:n]]  # [n] rows still wanted
        nk = int(np.count_nonzero(keep))
        if nk < n:  # move the wanted rows of the tail into the holes of the head
            holes = np.flatnonzero(~keep[:nk])
            src = nk + np.flatnonzero(keep[nk:])
            k[holes], v[holes], owner[holes] = k[src], v[src], owner[src]
            cached[:nclu] &= want[:nclu]
        add = sel[is_sealed]
        add = add[~cached[add]]
        if add.size:
            nk += st.gather(h, add, k[nk:], v[nk:], None, out_owner=owner[nk:])
            cached[add] = True
        self.n[h] = nk
        if not is_sealed.all():  # open clusters: copied every call, after the cached rows
            st.gather(h, sel[~is_sealed], k[nk:], v[nk:], None)
