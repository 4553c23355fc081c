"""The tier manager: one per session. Owns the byte budget, the cold logs, the hot cache, the
attention workspace shared by the layers and the prefetcher. `TieredStorage` is the KVStorage the
ReSV caches are built over: its `LayerTier` is a layer's sealed arena (write at seal, fetch on
gather), its open rows and attention buffers grow only within the budget.

Resident KV bytes (the budget) = sink + recent window + open-cluster area + workspace (the
attended set of the layer running, shared by all layers) + hot clusters. Cluster tables
(codes, means, counts, offsets; sums of open clusters) stay resident and are reported beside the budget.
`bind` refuses a budget below the fixed bound (bound.py); above it, the attended set is capped to
what the budget leaves (`retrieved_cap`), so an accepted budget does not run out mid-stream.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from vrex_edge.errors import ConfigError, KVStoreError
from vrex_edge.runtime.kvstore import stale
from vrex_edge.runtime.kvstore.bound import FixedBound, attended_row_bytes, fixed_bound, open_rows_max
from vrex_edge.runtime.kvstore.buffers import (
    LayerBuffer,
    SharedBuffer,
    WatchedRows,
    Workspace,
    _mib,
    fix_mmap_threshold,
    release_free_memory,
)
from vrex_edge.runtime.kvstore.cold import FULL_ERRNOS, ColdLog
from vrex_edge.runtime.kvstore.config import TierConfig, default_root
from vrex_edge.runtime.kvstore.hot import HotCache
from vrex_edge.runtime.kvstore.resume import STATE
from vrex_edge.runtime.kvstore.tables import FileArchive

T = TypeVar("T")
SCRATCH_ROWS = 1024  # rows (at most) of the scratch that hot records are joined in before a gather splits them
GAP_BYTES = 16 << 10  # unselected rows up to this much between two records to read are read too (one preadv)
MIN_SEGMENT = 64 << 10  # the smallest cold-log segment drop-oldest shrinks to


class LayerTier:
    """ClusterStore's hook for one layer: `write` at seal, `gather` for sealed clusters."""

    def __init__(self, mgr: TierManager, layer: int):
        self.mgr, self.layer = mgr, layer

    def rows(self, h: int) -> None:
        return None  # the sealed rows live in the cold log and the hot cache

    def nbytes(self) -> int:
        return 0  # counted by the manager (hot cache)

    def write(self, h: int, k: np.ndarray, v: np.ndarray, pos: np.ndarray, owner: np.ndarray) -> int:
        """Sealed rows of head h, grouped by cluster (owner [m]) -> their first row in the cold log."""
        mgr, log = self.mgr, self.mgr.logs[self.layer]
        rec = log.record(k, v, pos)  # [m, rec]
        base = mgr.append(self.layer, rec)
        first = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])  # where each cluster's rows start
        ids, cnt = owner[first], np.diff(np.r_[first, owner.size])
        hot, row = mgr.hot, log.row_bytes
        with hot.lock:  # write-through: a cluster just sealed is the likeliest to be selected next
            fit = ids.size
            if not hot.make_room(
                int(cnt.sum()) * row, mgr.hot_limit(), layer=self.layer, slack=mgr.slack(), prefetch=True
            ):
                # the clusters that fit in what evicting everything evictable left
                fit = int(np.searchsorted(np.cumsum(cnt) * row, mgr.hot_limit() - hot.bytes, side="right"))
                if fit and not hot.make_room(
                    int(cnt[:fit].sum()) * row, mgr.hot_limit(), layer=self.layer, prefetch=True
                ):
                    fit = 0
                mgr.not_hot[self.layer] += ids.size - fit
            if fit:
                n = int(cnt[:fit].sum())
                hot.put(self.layer, h, ids[:fit], base + first[:fit], cnt[:fit], rec[:n], hot.now - 1)
        return base

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
        """Copy sealed clusters `sel` of head h into out_* in arena order (as the resident gather) -> rows;
        out_owner (per-layer buffer, incremental gather) gets each row's cluster id. When the hot cache
        cannot hold the whole selection at once, it goes in runs that fit, each unpinned once copied."""
        sel = sel[counts[sel] > 0]
        if sel.size == 0:
            return 0
        sel = sel[np.argsort(start[sel], kind="stable")]
        mgr, hot, layer = self.mgr, self.mgr.hot, self.layer
        row = mgr.logs[layer].row_bytes
        if mgr.prefetcher is not None:
            mgr.prefetcher.score(layer, h, sel)
        with hot.lock:
            tick = hot.begin()
            hot.touch(layer, h, sel)
            miss = hot.absent(layer, h, sel)
            total = int(counts[miss].sum()) * row
            whole = miss.size == 0 or hot.make_room(total, mgr.hot_limit(), layer=layer, slack=mgr.slack())
            if whole:
                if miss.size:
                    hot.release(total, layer)  # fetch reserves it again
                    mgr.fetch(layer, h, miss, start, counts, prefetch=False)
                slots = hot.slots(layer, h, sel)
            else:
                hot.touch(layer, h, sel, tick=tick - 1)  # unpinned: runs pin what they copy
        mgr.counters["selected"] += sel.size
        mgr.counters["missed"] += miss.size
        if whole:
            return self._copy(slots, sel, counts, 0, out_k, out_v, out_pos, out_owner)
        w, i = 0, 0
        while i < sel.size:
            rest, drained = sel[i:], mgr.prefetcher is None
            while True:
                with hot.lock:
                    n = self._run_length(h, rest, counts, row)
                    if n > 0:
                        part = rest[:n]
                        self.mgr.counters["runs"] += 1
                        hot.touch(layer, h, part)  # pin what is still here
                        missing = hot.absent(layer, h, part)
                        if missing.size:  # fits in the room _run_length left: nothing of part is evicted
                            mgr.fetch(layer, h, missing, start, counts, prefetch=False)
                        slots = hot.slots(layer, h, part)
                        break
                    if drained:
                        if mgr.demote(keep=layer):
                            # the other layers' own attention buffers were sized before their open areas
                            # grew (a cluster_batch at a time): they give way to the read, as at a reserve
                            continue
                        raise KVStoreError(
                            f"--kv-budget {_mib(mgr.budget)} is too small: no room left to read a "
                            "selected cluster beside the attended set; raise --kv-budget or lower tau"
                        )
                mgr.prefetcher.drain()  # reads in flight for the next layers hold the room: let them land
                drained = True
            w = self._copy(slots, part, counts, w, out_k, out_v, out_pos, out_owner)
            with hot.lock:
                hot.touch(layer, h, part, tick=tick - 1)  # copied: evictable by the next run
            i += n
        return w

    def _run_length(self, h: int, rest: np.ndarray, counts: np.ndarray, row: int) -> int:
        """How many clusters of `rest` (in order) the hot cache can hold at once; called holding hot.lock.
        Making room evicts every unpinned entry, members of `rest` included, so what is absent is
        counted again after it: the run is then read without evicting anything it holds."""
        mgr, hot, layer = self.mgr, self.mgr.hot, self.layer
        limit = mgr.hot_limit()
        held = np.cumsum(counts[rest]) * row  # a run is resident at once: at most this prefix can fit
        cand = rest[: int(np.searchsorted(held, limit, side="right"))]
        if cand.size == 0:
            return 0

        def reads() -> np.ndarray:  # bytes to read up to each candidate
            return np.cumsum(np.where(hot.absent_mask(layer, h, cand), counts[cand], 0)) * row

        cum = reads()
        while hot.make_room(int(cum[-1]), limit, layer=layer):
            hot.release(int(cum[-1]), layer)
            again = reads()
            if again[-1] == cum[-1]:  # the room made evicted no candidate: all of them fit
                return cand.size
            cum = again
        cum = reads()  # everything evictable is gone: the longest run whose reads fit
        return int(np.searchsorted(cum, limit - hot.bytes, side="right"))

    def _copy(
        self,
        slots: np.ndarray,
        ids: np.ndarray,
        counts: np.ndarray,
        w: int,
        out_k: np.ndarray,
        out_v: np.ndarray,
        out_pos: np.ndarray | None,
        out_owner: np.ndarray | None,
    ) -> int:
        """The hot rows in `slots` (clusters `ids`' rows, in order) -> out_*[w : w + their rows] -> the new w.
        The slots are pinned (this gather's tick), so no other thread frees or rewrites them meanwhile."""
        if slots.size == 0:
            return w
        hd, scratch, slab = self.mgr.hd, self.mgr.scratch, self.mgr.hot.slab  # scratch [S, 2*hd + 2]
        if out_owner is not None:
            out_owner[w : w + slots.size] = np.repeat(ids, counts[ids])
        for a in range(0, slots.size, scratch.shape[0]):  # rows joined in the scratch, then split
            part = slots[a : a + scratch.shape[0]]
            block = np.take(slab, part, axis=0, out=scratch[: part.size], mode="clip")
            out_k[w + a : w + a + part.size] = block[:, :hd]
            out_v[w + a : w + a + part.size] = block[:, hd : 2 * hd]
            if out_pos is not None:
                out_pos[w + a : w + a + part.size] = block[:, 2 * hd :].view(np.int64)[:, 0]
        return w + slots.size


class TieredStorage:
    """The KVStorage of a session on tiers (see retrieval/storage.py for the protocol)."""

    def __init__(self, mgr: TierManager):
        self.mgr = mgr

    def buffer(
        self, layer: int, kvh: int, hd: int, *, keeps_rows: bool, max_rows: int | None = None
    ) -> LayerBuffer | SharedBuffer:
        # incremental gather (absolute positions): per-layer buffers that keep the last selection;
        # else one workspace shared by the layers, filled from the hot cache on every call
        mgr = self.mgr
        buf = LayerBuffer(mgr, layer, kvh, hd) if keeps_rows else SharedBuffer(mgr.workspace, layer, max_rows)
        mgr.add_buffer(layer, buf)
        return buf

    def open_rows(self, layer: int, kvh: int, hd: int) -> list[WatchedRows]:
        return [WatchedRows(hd, 64, self.mgr, layer) for _ in range(kvh)]

    def arena(self, layer: int, kvh: int, hd: int, layout: Any) -> LayerTier:
        return LayerTier(self.mgr, layer)

    def archive(self, layer: int, kvh: int, block: int, hd: int) -> FileArchive:
        mgr = self.mgr
        arch = FileArchive(mgr.folder, layer, kvh, block, hd, mgr.write, mgr.config.writer or os.pwrite)
        mgr.archives.append(arch)
        return arch


class TierManager:
    """Build it, build the caches over `storage`, then `bind` them (and `restore` a kept stream)."""

    def __init__(self, config: TierConfig, *, layers: int, kvh: int, hd: int):
        self.config = config
        self.layers, self.kvh, self.hd = layers, kvh, hd
        self.caches: list[Any] = []
        self.model: Any = None
        self.budget = config.budget if config.budget is not None else 1 << 62
        self.keep = config.folder is not None
        self.folder = self._open_folder(config)
        segment = self._segment_bytes(config)
        self.logs = [
            ColdLog(self.folder, i, self.hd, segment_bytes=segment, writer=config.writer) for i in range(self.layers)
        ]
        rec = 2 * self.hd + 2
        slab = None if config.budget is None else -(-config.budget // (4 * rec))  # rows: the budget's worth
        self.hot = HotCache(self.layers, self.kvh, rec, slab)
        self.fixed = np.zeros(self.layers, np.int64)
        self.unevictable = np.zeros(self.layers, np.int64)  # window + open area per layer (no buffers)
        self.open_cap = np.zeros(self.layers, np.int64)  # rows an open area grows to at most (0: unbounded)
        self.hot_min = 0  # hot-cache bytes a gather needs at least (its largest cluster)
        self.bound: FixedBound | None = None  # what the options always keep resident (set by bind)
        self.fixed_ws = 0
        self.not_hot = np.zeros(self.layers, np.int64)  # sealed clusters that are only on disk
        self.counters = dict.fromkeys(
            ("selected", "missed", "fetched", "fetched_bytes", "dropped", "demoted", "runs"), 0
        )
        self.seconds = dict.fromkeys(("write", "read", "evict"), 0.0)
        self.peak = 0
        self.trimmed = 0  # hot.freed at the last release_free_memory()
        fix_mmap_threshold()
        self.workspace = Workspace(self, self.kvh, self.hd)
        self.buffers: list[LayerBuffer | SharedBuffer | None] = [None] * layers  # each layer's attention buffer
        self.archives: list[FileArchive] = []
        rows, junk = scratch_sizes(self.budget, self.hd)
        self.scratch = np.empty((rows, 2 * self.hd + 2), np.float32)  # hot records joined there for a copy
        self.junk = np.empty(junk, np.uint8)  # where a read's gap rows land
        self.storage = TieredStorage(self)
        self.prefetcher: Any = None
        self.closed = False
        self._cleanup = weakref.finalize(self, _remove, None if self.keep else self.folder)

    def add_buffer(self, layer: int, buf: LayerBuffer | SharedBuffer) -> None:
        self.buffers[layer] = buf

    def bind(self, caches: list[Any], model: Any = None) -> None:
        """The caches built over `storage` (one per layer); model: for the prefetcher's predictions
        (None: no prefetch)."""
        from vrex_edge.runtime.kvstore.prefetch import Prefetcher

        if len(caches) != self.layers:
            raise ValueError(f"{len(caches)} caches for {self.layers} layers")
        self.caches, self.model = list(caches), model
        try:
            bound = fixed_bound(self.caches, scratch=lambda b: scratch_bytes(b, self.hd), budget=self.budget)
            if self.config.budget is not None and bound.total > self.budget:
                raise KVStoreError(bound.refusal(self.budget))
            self.bound = bound
            self.hot_min = bound.hot
            self.open_cap[:] = [open_rows_max(c) for c in self.caches]
            for i in range(self.layers):
                self.recount(i)
            self.ensure(0)
        except BaseException:
            self.close(ok=False)
            raise
        self.prefetcher = Prefetcher(self) if self.config.prefetch and model is not None else None

    def restored(self) -> None:
        """After a resume restored the caches' state: recount what lives only on disk."""
        for c, arch in zip(self.caches, self.archives, strict=True):
            arch.check(c.store.nblk)
        self.not_hot = np.array(
            [
                sum(int(((c.store.start[h] >= 0) & (c.store.counts[h] > 0)).sum()) for h in range(self.kvh))
                for c in self.caches
            ],
            np.int64,
        )
        for i in range(self.layers):
            self.recount(i)
        self.ensure(0)

    def _segment_bytes(self, config: TierConfig) -> int:
        """Cold-log segment size. With drop-oldest, a full disk is survived by deleting a layer's oldest
        segment, which needs two per layer; so segments shrink to fit a quarter of the free space (at
        least MIN_SEGMENT), and a disk without room for two of those per layer is refused up front."""
        if config.on_full != "drop-oldest":
            return config.segment_bytes
        free = shutil.disk_usage(self.folder).free
        seg = min(config.segment_bytes, max(MIN_SEGMENT, free // (4 * self.layers)))
        if free < 2 * seg * self.layers:
            self._cleanup_now()
            raise KVStoreError(
                f"--kv-on-full drop-oldest needs room for two {_mib(seg)} segments per layer "
                f"({_mib(2 * seg * self.layers)}) on the disk of {self.folder}, which has {_mib(free)} "
                "free; free space or move the store"
            )
        return seg

    def _cleanup_now(self) -> None:
        if not self.keep:
            shutil.rmtree(self.folder, ignore_errors=True)

    def _open_folder(self, config: TierConfig) -> Path:
        folder = config.folder
        self.made = False  # whether this run created the kept folder (removed again if binding fails)
        if folder is None:
            root = Path(config.root) if config.root is not None else default_root()
            root.mkdir(parents=True, exist_ok=True)
            stale.sweep(root)  # temporary stores of killed runs; ours gets a pid marker, locked while we live
            return stale.claim(Path(tempfile.mkdtemp(prefix="session-", dir=root)), self)
        if config.resume is None:
            if folder.exists() and any(folder.iterdir()):
                raise ConfigError(
                    f"--keep-kv folder {folder} is not empty; continue it with --resume {folder} "
                    "or choose an empty folder"
                )
            self.made = not folder.exists()
            folder.mkdir(parents=True, exist_ok=True)
        elif not folder.is_dir():
            raise KVStoreError(f"nothing to resume in {folder}: the folder does not exist")
        return folder

    # ------------------------------------------------------------------ budget

    def recount(self, layer: int) -> None:
        if layer >= len(self.caches):  # not bound yet
            return
        c, buf = self.caches[layer], self.buffers[layer]
        self.unevictable[layer] = c.window_nbytes() + c.store.open_nbytes()
        self.fixed[layer] = self.unevictable[layer] + (0 if buf is None else buf.nbytes())

    def retrieved_cap(self, layer: int) -> int:
        """Retrieved tokens per KV head that layer `layer`'s attended set may hold now (0: no cap): what
        the budget leaves after every layer's window and open area, the copy scratch and the smallest
        hot cache a gather needs, less this layer's sink and window rows. Attention buffers and hot
        clusters give way to it (they are evicted, shared or reallocated)."""
        if self.config.budget is None or layer >= len(self.caches):
            return 0
        self.recount(layer)
        c = self.caches[layer]
        left = self.budget - int(self.unevictable.sum()) - self.scratch.nbytes - self.junk.nbytes - self.hot_min
        rows = left // attended_row_bytes(self.kvh, self.hd) - c.sink_n - c.ring.n
        return max(int(rows), 1)

    def fixed_total(self) -> int:
        return int(self.fixed.sum()) + self.fixed_ws + self.scratch.nbytes + self.junk.nbytes

    def cold_only(self) -> bool:
        """Whether some sealed cluster lives only on disk (else there is nothing to prefetch)."""
        return self.hot.evicted > 0 or bool(self.not_hot.any())

    def hot_limit(self) -> int:
        return self.budget - self.fixed_total()

    def slack(self) -> int:
        return 0 if self.config.budget is None else self.budget // 64

    def room_for(self, extra: int) -> bool:
        """Whether `extra` more resident bytes outside the hot cache fit (between gathers, when every
        hot cluster can be evicted)."""
        return self.hot_limit() - extra >= 0

    def demote(self, keep: int = -1) -> bool:
        """Give the per-layer attention buffers up (those layers then share the workspace and gather
        from the hot cache) -> whether there was one. `keep`: the layer whose gather is in progress
        (its buffer is being filled; it goes at that layer's next reserve if still too big)."""
        own = [b for i, b in enumerate(self.buffers) if isinstance(b, LayerBuffer) and b.keeps_rows and i != keep]
        for b in own:
            b.share()
        self.counters["demoted"] += len(own)
        return bool(own)

    def ensure(self, extra: int, *, demote: bool = True) -> None:
        """Make room for `extra` more resident bytes outside the hot cache (evicting hot clusters,
        then, if `demote`, giving per-layer buffers up)."""
        with self.hot.lock:
            self.hot.begin()  # called between gathers: nothing cached is in use (unpin the last gather's)
            limit = self.hot_limit() - extra  # slack: one eviction (a scan of every hot entry) serves several calls
            if (limit < 0 or not self.hot.make_room(0, limit, slack=self.slack())) and demote and self.demote():
                limit = self.hot_limit() - extra
            if (limit < 0 or not self.hot.make_room(0, limit)) and self.workspace.release():
                limit = self.hot_limit() - extra  # the shared workspace is refilled per call: it is reallocated
            if limit < 0 or not self.hot.make_room(0, limit, slack=self.slack()):
                raise KVStoreError(
                    f"--kv-budget {_mib(self.budget)} is too small: the sink, recent window, open clusters and "
                    f"the attended set need {_mib(self.fixed_total() + extra)} before any cached cluster; "
                    "raise --kv-budget or lower tau/recent"
                )
            self.peak = max(self.peak, self.fixed_total() + extra + self.hot.bytes)

    def on_reserve(self, layer: int) -> None:
        """Layer `layer` starts a call or a gather: its prefetch stops, the budget is made good."""
        if self.prefetcher is not None:
            self.prefetcher.wait(layer)
        if layer == 0 and self.hot.freed - self.trimmed > self.budget // 16:
            self.trimmed = self.hot.freed
            release_free_memory()
        self.recount(layer)
        try:
            self.ensure(0)
        except KVStoreError:  # the room may be held by reads in flight for the next layer: let them land
            if self.prefetcher is None:
                raise
            self.settle()
            self.ensure(0)

    def settle(self) -> None:
        """Let the prefetch reads in flight land (their reserved bytes become evictable entries). Call
        it before taking hot.lock to grow a resident part: a reservation cannot be evicted."""
        if self.prefetcher is not None:
            self.prefetcher.drain()

    # ------------------------------------------------------------------ cold I/O

    def append(self, layer: int, rec: np.ndarray) -> int:
        return self.write(lambda: self.logs[layer].append(rec))

    def write(self, do: Callable[[], T]) -> T:
        """Run a cold-tier write. A full disk drops the oldest segments and retries when the user
        asked for that; otherwise, or on any other write error, the session ends with one clear error."""
        t0 = time.perf_counter()
        while True:
            try:
                out = do()
                break
            except OSError as e:
                full = e.errno in FULL_ERRNOS
                if full and self.config.on_full == "drop-oldest" and self.drop_oldest():
                    continue
                what = "the disk is full" if full else f"a write failed ({e.strerror or e})"
                hint = (
                    "free space, or pass --kv-on-full drop-oldest to forget the oldest clusters"
                    if full and self.config.on_full == "error"
                    else "free space or move the store"
                )
                raise KVStoreError(f"KV store in {self.folder}: {what}; {hint}") from None
        self.seconds["write"] += time.perf_counter() - t0
        return out

    def drop_oldest(self) -> bool:
        """Forget the oldest segment of every layer (its clusters get count 0: never selected)."""
        if self.prefetcher is not None:
            self.prefetcher.drain()
        any_dropped = False
        for i, (c, log) in enumerate(zip(self.caches, self.logs, strict=True)):
            r = log.drop_oldest()
            if r is None:
                continue
            any_dropped = True
            st = c.store
            for h in range(self.kvh):
                ids = np.flatnonzero((st.start[h] >= r[0]) & (st.start[h] < r[1]) & (st.counts[h] > 0))
                st.forget(h, ids)
                with self.hot.lock:
                    self.hot.discard(i, h, ids)
                self.counters["dropped"] += ids.size
        return any_dropped

    def fetch(
        self, layer: int, h: int, ids: np.ndarray, start: np.ndarray, counts: np.ndarray, *, prefetch: bool
    ) -> int:
        """Read clusters `ids` (sorted by start) into the hot cache -> bytes read. The gather calls it
        holding hot.lock; the prefetcher without (it only takes the lock to reserve and insert)."""
        log, hot = self.logs[layer], self.hot
        ids = ids[np.argsort(start[ids], kind="stable")]
        cnt = counts[ids]
        total = int(cnt.sum()) * log.row_bytes
        with hot.lock:
            if not hot.make_room(total, self.hot_limit(), layer=layer, slack=self.slack(), prefetch=prefetch):
                if prefetch:
                    return 0
                if not (self.demote(keep=layer) and hot.make_room(total, self.hot_limit(), layer=layer)):
                    raise KVStoreError(
                        f"--kv-budget {_mib(self.budget)} is too small for this frame's selected "
                        f"clusters ({_mib(total)} more); raise --kv-budget or lower tau"
                    )
            tick = hot.now if not prefetch else hot.now - 1
        t0 = time.perf_counter()
        block = np.empty((int(cnt.sum()), log.rec), np.float32)  # the records in turn, one buffer per record
        ends = np.cumsum(cnt).tolist()
        try:
            log.read_runs(start[ids], [block[e - n : e] for e, n in zip(ends, cnt.tolist(), strict=True)], self.junk)
        except BaseException:
            with hot.lock:
                hot.release(total, layer)
            raise
        dt = time.perf_counter() - t0
        with hot.lock:
            hot.put(layer, h, ids, start[ids], cnt, block, tick)
            self.not_hot[layer] -= ids.size
            self.peak = max(self.peak, self.fixed_total() + hot.bytes)
        if not prefetch:  # the prefetcher keeps its own counts
            self.seconds["read"] += dt
            self.counters["fetched"] += ids.size
            self.counters["fetched_bytes"] += total
        return total

    # ------------------------------------------------------------------ reporting and closing

    def resident(self) -> dict[str, int]:
        """Resident bytes by part; 'kv' is what the budget bounds."""
        sink = sum(c.sink_k.nbytes + c.sink_v.nbytes for c in self.caches)
        recent = sum(c.ring.nbytes() for c in self.caches)
        open_ = sum(c.store.open_nbytes() for c in self.caches)
        tables = sum(c.store.table_nbytes() for c in self.caches)
        own = sum(b.nbytes() for b in self.buffers if b is not None)
        ws = self.workspace.nbytes() + self.scratch.nbytes + self.junk.nbytes + own
        kv = sink + recent + open_ + ws + self.hot.bytes
        return {
            "sink": sink,
            "recent": recent,
            "open": open_,
            "workspace": ws,
            "hot": self.hot.bytes,
            "kv": kv,
            "tables": tables,
        }

    def report(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "budget": None if self.config.budget is None else self.budget,
            "peak": self.peak,
            "folder": str(self.folder),
            "kept": self.keep,
            "cold_bytes": sum(lg.written for lg in self.logs),
            "hot_clusters": self.hot.count(),
            "evicted": self.hot.evicted,
        }
        out["own_buffers"] = sum(b is not None and b.keeps_rows for b in self.buffers)  # layers with a buffer
        out.update(self.resident())
        out.update(self.counters)
        out["seconds"] = dict(self.seconds)
        arch = self.archives
        out["retired"] = {
            "blocks": sum(int(c.store.nblk.sum()) for c in self.caches),
            "reads": sum(x.reads for x in arch),
            "read_bytes": sum(x.read_bytes for x in arch),
            "seconds": sum(x.seconds for x in arch),
        }
        if self.prefetcher is not None:
            out["prefetch"] = self.prefetcher.report()
        return out

    def close(self, *, ok: bool = True, save: Callable[[], None] | None = None) -> None:
        """Stop prefetching; run `save` (a kept store's state, when the stream ended cleanly), then
        close the files (a temporary store is deleted)."""
        if self.closed:
            return
        self.closed = True
        if self.prefetcher is not None:
            self.prefetcher.stop()
        try:
            if self.keep and ok and save is not None:
                save()
        finally:
            for log in self.logs:
                log.close()
            for a in self.archives:
                a.close()
            self._cleanup()
            if not ok and self.made and not (self.folder / STATE).exists():
                shutil.rmtree(self.folder, ignore_errors=True)  # a --keep-kv folder this run made, never saved


def scratch_sizes(budget: int, hd: int) -> tuple[int, int]:
    """(rows of the copy scratch, bytes of the read-gap buffer) under `budget`: 1/64 and 1/256 of it at most."""
    rows = int(np.clip(budget // 64 // ((2 * hd + 2) * 4), 32, SCRATCH_ROWS))
    return rows, min(GAP_BYTES, budget // 256)


def scratch_bytes(budget: int, hd: int) -> int:
    rows, junk = scratch_sizes(budget, hd)
    return rows * (2 * hd + 2) * 4 + junk


def _remove(folder: Path | None) -> None:
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)
