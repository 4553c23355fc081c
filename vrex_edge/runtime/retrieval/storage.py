"""Where a retrieval policy keeps its arrays, handed to each layer cache when it is built.

A `KVStorage` makes, per layer: the attention buffer (the attended set of a call), and for
clustering policies the open-cluster rows, the sealed arena and the archive of retired
representatives. `ResidentStorage` keeps everything in process memory; the KV tiers
(`vrex_edge.runtime.kvstore.TieredStorage`) implement the same methods under a byte budget with
an on-disk cold tier. A cache only calls these objects; nothing outside it changes its fields.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from vrex_edge.runtime.arrays import capacity, grow, staggered


def runs_to_index(runs: np.ndarray) -> np.ndarray:
    """runs [r, 2] (start, stop) -> the token indices they cover, in order."""
    lens = runs[:, 1] - runs[:, 0]
    offs = np.cumsum(lens) - lens  # where each run starts in the output
    return np.arange(int(lens.sum()), dtype=np.int64) + np.repeat(runs[:, 0] - offs, lens)


class Rows:
    """Growable k, v [cap, hd] f32 and pos, owner [cap] i64 rows for one KV head."""

    def __init__(self, hd: int, cap: int):
        self.k = np.empty((cap, hd), np.float32)
        self.v = np.empty((cap, hd), np.float32)
        self.pos = np.empty(cap, np.int64)
        self.owner = np.empty(cap, np.int64)
        self.n = 0
        self.dead = 0  # rows whose owner is -1 (open area only)

    def reserve(self, need: int) -> None:
        if need > self.k.shape[0]:
            self._grow(need)

    def _grow(self, need: int) -> None:
        self.k, self.v = grow(self.k, need, used=self.n), grow(self.v, need, used=self.n)
        self.pos, self.owner = grow(self.pos, need, used=self.n), grow(self.owner, need, used=self.n)

    def append(self, k: np.ndarray, v: np.ndarray, pos: np.ndarray, owner: np.ndarray) -> int:
        """k, v [m, hd], pos, owner [m] -> the first row written."""
        m = k.shape[0]
        self.reserve(self.n + m)
        s = self.n
        self.k[s : s + m], self.v[s : s + m], self.pos[s : s + m], self.owner[s : s + m] = k, v, pos, owner
        self.n += m
        return s

    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes + self.pos.nbytes + self.owner.nbytes

    def release(self, slots: np.ndarray) -> None:
        """Rows `slots` moved out (owner -1); the rows are compacted once half of them are dead."""
        self.owner[slots] = -1
        self.dead += slots.size
        if self.dead * 2 >= self.n:
            live = np.flatnonzero(self.owner[: self.n] >= 0)
            m = live.size
            self.k[:m], self.v[:m], self.pos[:m], self.owner[:m] = (
                self.k[live],
                self.v[live],
                self.pos[live],
                self.owner[live],
            )
            self.n, self.dead = m, 0

    def state(self) -> dict[str, Any]:
        n = self.n
        return {"k": self.k[:n], "v": self.v[:n], "pos": self.pos[:n], "owner": self.owner[:n], "dead": self.dead}

    def restore(self, s: dict[str, Any]) -> None:
        self.n = 0
        self.append(s["k"], s["v"], s["pos"], s["owner"])
        self.dead = int(s["dead"])


def take_rows(
    rows: Rows,
    idx: np.ndarray,
    out_k: np.ndarray,
    out_v: np.ndarray,
    out_pos: np.ndarray | None,
    w: int,
    out_owner: np.ndarray | None = None,
) -> int:
    """Copy rows[idx] into out_*[w : w + len(idx)] -> the new w (out_pos/out_owner None: skipped)."""
    m = idx.size
    # mode="clip" lets numpy write straight into `out` (indices are valid by construction)
    np.take(rows.k, idx, axis=0, out=out_k[w : w + m], mode="clip")
    np.take(rows.v, idx, axis=0, out=out_v[w : w + m], mode="clip")
    if out_pos is not None:
        np.take(rows.pos, idx, out=out_pos[w : w + m], mode="clip")
    if out_owner is not None:
        np.take(rows.owner, idx, out=out_owner[w : w + m], mode="clip")
    return w + m


class Arena(Protocol):
    """The sealed clusters of one layer: written once at seal, grouped by cluster, then only read."""

    def write(self, h: int, k: np.ndarray, v: np.ndarray, pos: np.ndarray, owner: np.ndarray) -> int:
        """Sealed rows of head h grouped by cluster (owner [m]) -> the arena row of the first one."""
        ...

    def gather(
        self,
        h: int,
        sel: np.ndarray,
        start: np.ndarray,
        counts: np.ndarray,
        out_k: np.ndarray,
        out_v: np.ndarray,
        out_pos: np.ndarray | None,
        out_owner: np.ndarray | None = None,
    ) -> int:
        """Copy sealed clusters `sel` of head h (their arena rows start[c] .. start[c] + counts[c]) into
        out_* in arena order -> rows written."""
        ...

    def rows(self, h: int) -> Rows | None:
        """Head h's resident rows (None when the arena lives elsewhere)."""
        ...


class ResidentArena:
    """Sealed clusters in memory, one Rows per KV head; a selection is copied as contiguous runs."""

    concurrent_heads = True  # gathers of different heads touch disjoint rows: they may run at once

    def __init__(self, kvh: int, hd: int, layout: Any, capacity: int = 1024):
        self._rows = [Rows(hd, capacity) for _ in range(kvh)]
        self.layout = layout  # the retrieval backend's layout: selected ids -> runs [r, 2]

    def write(self, h: int, k: np.ndarray, v: np.ndarray, pos: np.ndarray, owner: np.ndarray) -> int:
        return self._rows[h].append(k, v, pos, owner)

    def gather(
        self,
        h: int,
        sel: np.ndarray,
        start: np.ndarray,
        counts: np.ndarray,
        out_k: np.ndarray,
        out_v: np.ndarray,
        out_pos: np.ndarray | None,
        out_owner: np.ndarray | None = None,
    ) -> int:
        s = self._rows[h]
        runs = self.layout(sel, start, counts)  # [r, 2]
        if runs.shape[0] > 4:
            return take_rows(s, runs_to_index(runs), out_k, out_v, out_pos, 0, out_owner)
        w = 0
        for a, b in runs.tolist():  # a few long runs: plain slices
            m = b - a
            out_k[w : w + m], out_v[w : w + m] = s.k[a:b], s.v[a:b]
            if out_pos is not None:
                out_pos[w : w + m] = s.pos[a:b]
            if out_owner is not None:
                out_owner[w : w + m] = s.owner[a:b]
            w += m
        return w

    def rows(self, h: int) -> Rows | None:
        return self._rows[h]

    def nbytes(self) -> int:
        return sum(r.nbytes() for r in self._rows)

    def state(self) -> dict[str, Any]:
        return {"heads": [r.state() for r in self._rows]}

    def restore(self, s: dict[str, Any]) -> None:
        for r, x in zip(self._rows, s["heads"], strict=True):
            r.restore(x)


class AttentionBuffer:
    """A layer's attended set: k, v [KVH, cap, hd] f32 and pos [KVH, cap] i64, grown as needed.

    `keeps_rows`: rows survive from one call to the next (incremental gather may rely on them);
    `generation` changes whenever the arrays are replaced (their rows are then gone)."""

    keeps_rows = True

    def __init__(self, kvh: int, hd: int):
        self.kvh, self.hd = kvh, hd
        self.k = np.empty((kvh, 0, hd), np.float32)
        self.v = np.empty_like(self.k)
        self.pos = np.empty((kvh, 0), np.int64)
        self.generation = 0

    def reserve(self, need: int) -> None:
        """Room for `need` rows per head (contents are not kept when the arrays grow)."""
        if need > self.k.shape[1]:
            cap = capacity(self.k.shape[1], need, factor=1.5, minimum=256)
            self.k = np.empty((self.kvh, cap, self.hd), np.float32)
            self.v = np.empty_like(self.k)
            self.pos = np.empty((self.kvh, cap), np.int64)
            self.generation += 1

    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes + self.pos.nbytes


class MemoryArchive:
    """Fine representatives of retired blocks, in memory: block j of head h -> [block, hd] f32."""

    def __init__(self, kvh: int, block: int, hd: int):
        self.data = [np.zeros((0, block, hd), np.float32) for _ in range(kvh)]
        self.n = [0] * kvh

    def put(self, h: int, j: int, fine: np.ndarray) -> None:
        self.data[h] = grow(self.data[h], j + 1, fill=0, minimum=16)
        self.data[h][j] = fine
        self.n[h] = max(self.n[h], j + 1)

    def get(self, h: int, blocks: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """-> [len(blocks), block, hd] fine representatives of head h (into `out` when given)."""
        return np.take(self.data[h], blocks, axis=0, out=out)

    def nbytes(self) -> int:
        return sum(d.nbytes for d in self.data)

    def state(self) -> dict[str, Any]:
        return {"heads": [d[:n] for d, n in zip(self.data, self.n, strict=True)]}

    def restore(self, s: dict[str, Any]) -> None:
        for h, d in enumerate(s["heads"]):
            for j in range(d.shape[0]):
                self.put(h, j, d[j])


class KVStorage(Protocol):
    """Makes the arrays of layer `layer`'s cache (see the module docstring)."""

    def buffer(
        self, layer: int, kvh: int, hd: int, *, keeps_rows: bool, max_rows: int | None = None
    ) -> AttentionBuffer:
        """keeps_rows: the cache relies on rows surviving between calls (incremental gather);
        max_rows: it never attends to more rows per head (compact positions)."""
        ...

    def open_rows(self, layer: int, kvh: int, hd: int) -> list[Rows]: ...

    def arena(self, layer: int, kvh: int, hd: int, layout: Any) -> Arena: ...

    def archive(self, layer: int, kvh: int, block: int, hd: int) -> Any: ...


class ResidentStorage:
    """Everything in process memory (the default)."""

    def buffer(
        self, layer: int, kvh: int, hd: int, *, keeps_rows: bool, max_rows: int | None = None
    ) -> AttentionBuffer:
        return AttentionBuffer(kvh, hd)

    def open_rows(self, layer: int, kvh: int, hd: int) -> list[Rows]:
        return [Rows(hd, 256) for _ in range(kvh)]

    def arena(self, layer: int, kvh: int, hd: int, layout: Any) -> ResidentArena:
        return ResidentArena(kvh, hd, layout, staggered(1024, layer))  # layers double in different frames

    def archive(self, layer: int, kvh: int, block: int, hd: int) -> MemoryArchive:
        return MemoryArchive(kvh, block, hd)


RESIDENT = ResidentStorage()
