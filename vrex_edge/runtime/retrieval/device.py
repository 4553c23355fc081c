"""`resv`, `topk` and `window` with the KV, and for resv the scoring, selection and attention, on the device.

What lives where for `resv`, per layer (kernels/ort_cuda.py and ort_cuda_runs.py run the device side):
- device: every token's rotated k, v in one token-major arena [cap, KVH, hd] in arrival order (sink,
  history, recent window); a cluster table [cap_c, KVH, hd + 1] (representative, token count),
  cluster-major, so the clusters a push can change (the open ones, the newest ids) are one contiguous
  block of rows; an owner table [cap, KVH] (each clustered arena row's cluster). The run that reads a
  table also writes its rows changed since the last run.
- host: the cluster tables (ClusterStore: codes, counts, means, open sums) and, per token, its
  cluster and its arena row: the store's rows hold no k/v (zero-width, `RowStorage`) and their `pos`
  is the arena row. Also the sink and the recent window (bounded), from which hashing and the
  representatives are computed, as the chunk's k/v arrive from the stage graph anyway.
Per call, one device run (ort_graphs.resv_attend_graph): the cluster masses, WiCSum (by sorting), the
token mask from the owner table, a gather of each head's sink + selected + recent rows, attention,
and the chunk's append. In: q, the chunk's k/v, the changed table rows and the new rows' clusters;
out: the partial softmax (merged with the chunk's causal block on the host) and the kept counts.
With reselect > 1, max_kept or dense_below (or fused=False) the host selects as ReSVCache does from
masses [KVH, C] the device computes, and a second run gathers the selected rows [KVH, S] it sends.
A gather by index is cheap on a GPU, so the arena keeps stream order, not a cluster-contiguous layout.

Same options, selections and outputs as ReSVCache (to float rounding), except positions=compact,
fine > 0 (two-level tables), the KV tiers and retrieval backends other than `host` (ConfigError).
`DeviceTopKKV` is topk's counterpart (its block tables stay on the host; positions=compact refused).
`DeviceWindowKV` is window's: its arena holds sink + recent and is compacted on the device when full.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from vrex_edge.accel.host import wicsum
from vrex_edge.bundle import TextSpec
from vrex_edge.errors import ConfigError
from vrex_edge.runtime.kvcache import LayerStats, Phase
from vrex_edge.runtime.retrieval.base import TIMERS, WindowedCache
from vrex_edge.runtime.retrieval.resv import ReSVCache, ReSVOptions, heaviest
from vrex_edge.runtime.retrieval.storage import (
    RESIDENT,
    AttentionBuffer,
    KVStorage,
    MemoryArchive,
    ResidentArena,
    Rows,
    runs_to_index,
)
from vrex_edge.runtime.retrieval.topk import TopKCache, TopKOptions
from vrex_edge.runtime.retrieval.window import WindowCache
from vrex_edge.runtime.rope import Rope

if TYPE_CHECKING:
    from vrex_edge.runtime.kernels.ort_cuda import DeviceKV, OrtDeviceEngine
    from vrex_edge.runtime.retrieval.policy import Policy


class LoggedRows(Rows):
    """Rows that also log what is appended (pos, owner), for a cache that mirrors the owners elsewhere."""

    def __init__(self, hd: int, cap: int):
        super().__init__(hd, cap)
        self.log: list[np.ndarray] = []  # owner arrays in append order

    def append(self, k: np.ndarray, v: np.ndarray, pos: np.ndarray, owner: np.ndarray) -> int:
        self.log.append(np.asarray(owner, np.int64).copy())
        return super().append(k, v, pos, owner)

    def drain(self) -> np.ndarray:
        """-> the owners appended since the last drain, in order."""
        out = np.concatenate(self.log) if self.log else np.zeros(0, np.int64)
        self.log = []
        return out


class RowStorage:
    """KVStorage for a ClusterStore whose k/v live elsewhere: zero-width rows (pos and owner only); the
    open rows log their owners (DeviceReSVKV mirrors each arena row's cluster on the device)."""

    def buffer(
        self, layer: int, kvh: int, hd: int, *, keeps_rows: bool, max_rows: int | None = None
    ) -> AttentionBuffer:
        return AttentionBuffer(kvh, 0)

    def open_rows(self, layer: int, kvh: int, hd: int) -> list[Rows]:
        return [LoggedRows(0, 256) for _ in range(kvh)]

    def arena(self, layer: int, kvh: int, hd: int, layout: Any) -> ResidentArena:
        return ResidentArena(kvh, 0, layout)

    def archive(self, layer: int, kvh: int, block: int, hd: int) -> MemoryArchive:
        return MemoryArchive(kvh, block, 0)


def unsupported(o: ReSVOptions, storage: KVStorage) -> str | None:
    """Why the device path cannot run these options (None: it can)."""
    if o.positions == "compact":
        return "positions=compact"
    if o.fine:
        return "fine > 0 (two-level tables)"
    if o.accel != "host":
        return f"accel={o.accel} (the device scores with its own graph)"
    if storage is not RESIDENT:
        return "the KV tiers (--kv-budget, --keep-kv, --resume)"
    return None


class DeviceArena(WindowedCache):
    """What the device caches share (a base, as WindowedCache is): the tokens' rotated k, v in the device
    arena in arrival order (the sink is rows 0 .. sink_n - 1, the recent window the last ring.n rows
    before kv.n, where the next chunk goes), and a call that attends to sink + the rows `_retrieve`
    chose (self._rows) + recent in one device run. `_make_room` may compact the arena first."""

    kv: DeviceKV
    _rows: list[np.ndarray]

    def _attach(self, engine: OrtDeviceEngine) -> None:
        self.dev = engine
        self.kv = engine.new_kv(self.kvh, self.hd)  # every token, rotated, arrival order: [cap, KVH, hd]
        self._rows = [np.zeros(0, np.int64) for _ in range(self.kvh)]  # per head, this call's retrieved rows

    # ------------------------------------------------------------------ LayerCache API

    def attend(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, positions: np.ndarray, *, phase: Phase) -> np.ndarray:
        sec = dict.fromkeys(TIMERS, 0.0)
        self.phase = phase
        t0 = time.perf_counter()
        n = q.shape[1]
        positions = np.asarray(positions, dtype=np.int64)
        q_abs = self.rope.apply(q, positions)  # [H, n, hd]
        k_abs = self.rope.apply(k, positions)  # [KVH, n, hd]
        self._make_room(n)
        sec["attend"] += time.perf_counter() - t0
        o, lens = self._attend_device(q, q_abs, k_abs, v, sec)  # [KVH, G, n, hd], [KVH]
        t3 = time.perf_counter()
        self._push(k_abs, v, self._aux(k, k_abs), positions, self._tag(phase, n))
        sec["cluster"] += time.perf_counter() - t3
        self._stats = LayerStats(history=self.seen - n, kept=lens, seconds=sec, clusters=self._clusters())
        self.totals[phase].add(self._stats)
        return o.reshape(self.h, n, self.hd).transpose(1, 0, 2).reshape(n, self.h * self.hd)

    def extend(self, k: np.ndarray, v: np.ndarray, positions: np.ndarray, *, chunk: int) -> None:
        """The base's warm-up, with the tokens also written into the device arena."""
        self.dev.upload(self.kv, self.rope.apply(k, np.asarray(positions, np.int64)), v)
        super().extend(k, v, positions, chunk=chunk)

    def _attend_device(
        self, q: np.ndarray, q_abs: np.ndarray, k_abs: np.ndarray, v: np.ndarray, sec: dict[str, float]
    ) -> tuple[np.ndarray, np.ndarray]:
        """`_retrieve` on the host, then the device attends to sink + its rows + recent and appends the
        chunk -> output [KVH, G, n, hd], rows attended per head [KVH]."""
        n = q.shape[1]
        r = self._retrieve(q, q_abs, self.retrieve_budget(n), sec)  # [KVH]; arena rows in self._rows
        t1 = time.perf_counter()
        rows, lens = self._layout(r)  # [KVH, S], [KVH]
        t2 = time.perf_counter()
        sec["gather"] += t2 - t1
        o = self.dev.attend_rows_append(q_abs.reshape(self.kvh, self.g, n, self.hd), self.kv, rows, lens, k_abs, v)
        sec["attend"] += time.perf_counter() - t2
        return o, lens

    def _make_room(self, n: int) -> None:
        """Before a chunk of n is appended (the arena otherwise grows by doubling)."""

    def selected_rows(self) -> list[np.ndarray]:
        """Per KV head, the arena rows of the history tokens the last call retrieved on the host (tools,
        benchmarks; empty after a fused resv call, whose selection stays on the device)."""
        return list(self._rows)

    def _layout(self, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per head: sink rows, the selected rows, the recent window's rows -> rows [KVH, S], lens [KVH]."""
        s, w = self.sink_n, self.ring.n
        lens = s + r + w  # [KVH]
        rows = np.zeros((self.kvh, int(lens.max())), np.int64)
        rows[:, :s] = np.arange(s)
        recent = np.arange(self.kv.n - w, self.kv.n)
        for h in range(self.kvh):
            e = s + int(r[h])
            rows[h, s:e] = self._rows[h]
            rows[h, e : e + w] = recent
        return rows, lens.astype(np.int64)

    def _device_state(self) -> dict[str, Any]:
        k, v = self.dev.download(self.kv)  # host copies [KVH, n, hd]
        return {"k": k, "v": v}

    def _restore_device(self, s: dict[str, Any]) -> None:
        self.kv.n = 0
        self.dev.upload(self.kv, s["k"], s["v"])


class DeviceReSVKV(DeviceArena, ReSVCache):
    """ReSVCache with k/v, representatives, scoring and attention on `engine`'s device (module docstring)."""

    def __init__(
        self,
        layer: int,
        text: TextSpec,
        rope: Rope,
        o: ReSVOptions,
        *,
        policy: Policy,
        engine: OrtDeviceEngine,
        storage: KVStorage = RESIDENT,
        fused: bool = True,
    ):
        """fused: one device run per call where the options allow it (else the host selects, and the
        selected rows are known on the host: `selected_rows`)."""
        why = unsupported(o, storage)
        if why is not None:
            raise ConfigError(f"resv with its KV on the GPU does not support {why}; drop it or use --provider cpu")
        super().__init__(
            layer, text, rope, dataclasses.replace(o, incremental=False), policy=policy, storage=RowStorage()
        )
        self._attach(engine)
        self.table = engine.new_rows((self.kvh, self.hd + 1), 256)  # [cap_c, KVH, hd + 1]: rep, count (0: none)
        self.dirty = 0  # clusters >= dirty changed since the table was last written
        self.absorbed = 0  # tokens in the clusters (the arena row of the next one is sink_n + absorbed)
        # one device run per call (ort_graphs.resv_attend_graph) unless an option needs the host's selection
        self.fused = fused and o.reselect == 1 and o.max_kept == 0 and o.dense_below == 0
        self.owner = engine.new_rows((self.kvh, 1), 1024)  # [cap, KVH, 1]: each arena row's cluster (-1: sink)
        self._owners: list[np.ndarray] = []  # [m, KVH] clusters of rows absorbed since the owner table was written

    def _attend_device(
        self, q: np.ndarray, q_abs: np.ndarray, k_abs: np.ndarray, v: np.ndarray, sec: dict[str, float]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Fused: scoring, WiCSum, the token mask, the gather and attention in one device run; only the
        changed table rows and the new rows' clusters go in besides q and the chunk, kept counts come back."""
        c = int(self.store.nclu.max())
        if not self.fused or c == 0:
            return super()._attend_device(q, q_abs, k_abs, v, sec)
        t0 = time.perf_counter()
        n = q.shape[1]
        qs = (q_abs if self.score_post else q).reshape(self.kvh, self.g * n, self.hd)  # [KVH, G*n, hd]
        new, own = self._dirty_rows(c), self._owner_rows()
        t1 = time.perf_counter()
        sec["select"] += t1 - t0
        o, kept = self.dev.resv_attend_append(
            q_abs.reshape(self.kvh, self.g, n, self.hd),
            self.kv,
            k_abs,
            v,
            score_q=qs,
            table=self.table,
            new=new,
            a=self.dirty,
            owner=self.owner,
            owner_new=own,
            tau=self.tau,
            recent=self.ring.n,
        )
        self.dirty = c
        sec["attend"] += time.perf_counter() - t1
        return o, kept

    def _owner_rows(self) -> np.ndarray:
        """The owner table's rows owner.n .. sink_n + absorbed - 1 -> [m, KVH] f32 (-1 for sink rows)."""
        sink = np.full((max(self.sink_n - self.owner.n, 0), self.kvh), -1.0, np.float32)
        out = np.concatenate([sink, *self._owners]).astype(np.float32)
        self._owners = []
        return out

    def nbytes(self) -> int:
        """Device memory (arena, cluster table, owner table) plus the host's window and tables."""
        dev = self.kv.nbytes() + self.table.nbytes() + self.owner.nbytes()
        return dev + self.window_nbytes() + self.store.nbytes()

    # ------------------------------------------------------------------ ReSVCache hooks

    def _absorb(self, k, v, aux, pos, tag) -> None:
        """Tokens leaving the window join clusters; the store's rows record their arena rows, and the
        clusters the push may change (open ones and new ones: ids from the oldest open on) are dirty."""
        st, m = self.store, k.shape[1]
        changed = min(int(o[0]) if o.size else int(c) for o, c in zip(st.open, st.nclu, strict=True))
        rows = np.arange(self.sink_n + self.absorbed, self.sink_n + self.absorbed + m, dtype=np.int64)
        none = np.empty((self.kvh, m, 0), np.float32)
        kc = k if self.post else aux  # storage is rotated: aux holds the un-rotated keys
        ks = k if self.score_post else aux
        st.push(none, none, rows, kc, ks)
        self.absorbed += m
        self.dirty = min(self.dirty, changed)
        owners = np.stack([p.drain() for p in st.pending], axis=1)  # type: ignore[attr-defined]  # [m, KVH]
        if self.fused:  # the device owner table's next rows
            self._owners.append(owners)

    def _dirty_rows(self, c: int) -> np.ndarray:
        """Table rows dirty .. c-1 from the host tables -> [c - dirty, KVH, hd + 1] (rep, count)."""
        st, a = self.store, self.dirty
        x = np.empty((c - a, self.kvh, self.hd + 1), np.float32)
        x[:, :, : self.hd] = st.means_t[:, :, a:c].transpose(2, 0, 1)
        x[:, :, self.hd] = st.counts[:, a:c].T
        return x

    def _retrieve(self, q: np.ndarray, q_abs: np.ndarray, budget: int, sec: dict[str, float]) -> np.ndarray:
        """ReSVCache's selection with the masses computed on the device -> r [KVH]; the selected
        tokens' arena rows go to self._rows (per head)."""
        st = self.store
        c = int(st.nclu.max())
        r = np.zeros(self.kvh, np.int64)
        self._rows = [np.zeros(0, np.int64) for _ in range(self.kvh)]
        if c == 0:
            return r
        t0 = time.perf_counter()
        hist = self.absorbed
        if hist < self.dense_below and hist <= budget:  # small history: all of it, no scoring
            sels = [np.arange(int(x)) for x in st.nclu]
            self._reuse = None
        elif self._reuse is not None and self._reuse[0] == self.phase and self._reuse[1] > 0:
            _, left, then = self._reuse  # the last selection plus every cluster opened since
            sels = [np.concatenate([s, np.arange(then[h], st.nclu[h])]) for h, s in enumerate(self.last_sel)]
            self._reuse = (self.phase, left - 1, then)
        else:
            n = q.shape[1]
            qs = (q_abs if self.score_post else q).reshape(self.kvh, self.g * n, self.hd)  # [KVH, G*n, hd]
            mass = self.dev.masses(qs, self.table, self.dirty, self._dirty_rows(c))  # [KVH, C]; the table is current
            self.dirty = c
            valid = st.counts[:, :c] > 0
            keep = valid if self.tau >= 1.0 else wicsum(mass, self.tau) & valid
            sels = [np.flatnonzero(keep[h]) for h in range(self.kvh)]
            self.last_mass, self.last_sel = mass, sels
            self.last_nsel = np.array([s.size for s in sels])
            self._reuse = (self.phase, self.reselect - 1, st.nclu.copy())
        for h in range(self.kvh):
            r[h] = st.counts[h, sels[h]].sum()
            if r[h] > budget:  # max_kept: keep the heaviest clusters that fit
                sels[h] = heaviest(sels[h], self.last_mass[h], st.counts[h], budget)
                r[h] = st.counts[h, sels[h]].sum()
        t1 = time.perf_counter()
        sec["select"] += t1 - t0
        none = np.empty((int(r.max()), 0), np.float32)
        for h in range(self.kvh):
            self._rows[h] = np.empty(int(r[h]), np.int64)
            st.gather(h, sels[h], none, none, self._rows[h])  # the store's pos: arena rows
        sec["gather"] += time.perf_counter() - t1
        return r

    # ------------------------------------------------------------------ declared state

    def _history_state(self) -> dict[str, Any]:
        """ReSVCache's history (tables, with arena rows in place of k/v) plus the device arena's tokens
        (host copies k, v [KVH, n, hd]) and the row index of the store."""
        k, v = self.dev.download(self.kv)
        return {
            **super()._history_state(),
            "arena": self.store.arena.state(),
            "absorbed": self.absorbed,
            "k": k,
            "v": v,
        }

    def _restore_history(self, s: dict[str, Any]) -> None:
        super()._restore_history(s)
        self.store.arena.restore(s["arena"])
        self.absorbed = int(s["absorbed"])
        self._restore_device(s)
        for p in self.store.pending:
            p.drain()  # type: ignore[attr-defined]
        self.owner.n, self._owners = 0, []
        if self.fused:  # every clustered row's cluster, for the owner table to be written again
            own = np.zeros((self.absorbed, self.kvh), np.int64)
            for h in range(self.kvh):
                rows, ids = self.store.members(h)  # the store's pos are arena rows
                own[rows - self.sink_n, h] = ids
            self._owners = [own]
        self.table.n, self.dirty = 0, 0  # written again at the next scoring


class DeviceTopKKV(DeviceArena, TopKCache):
    """TopKCache with k/v and attention on `engine`'s device: the block tables (first row, count, key
    sum per block) stay on the host, where the blocks are scored as on the host path; the chosen
    blocks' arena rows go to the device. History rows keep stream order as on the host, so a block is
    arena rows sink_n + bstart .. + bcount."""

    def __init__(
        self,
        layer: int,
        text: TextSpec,
        rope: Rope,
        o: TopKOptions,
        *,
        policy: Policy,
        engine: OrtDeviceEngine,
        storage: KVStorage = RESIDENT,
    ):
        if o.positions == "compact":
            raise ConfigError(
                "topk with its KV on the GPU does not support positions=compact; drop it or use --provider cpu"
            )
        super().__init__(layer, text, rope, o, policy=policy, storage=RowStorage())
        self._attach(engine)
        self.ak, self.av = np.empty((self.kvh, 1024, 0), np.float32), np.empty((self.kvh, 1024, 0), np.float32)

    def _absorb_rows(self, k: np.ndarray, v: np.ndarray, pos: np.ndarray) -> None:
        super()._absorb_rows(k[..., :0], v[..., :0], pos)  # the host keeps positions only

    def nbytes(self) -> int:
        """Device memory (the arena) plus the host's window and block tables."""
        return self.kv.nbytes() + self.window_nbytes() + self._history_nbytes()

    def _retrieve(self, q: np.ndarray, q_abs: np.ndarray, budget: int, sec: dict[str, float]) -> np.ndarray:
        """TopKCache's block choice -> r [KVH]; the blocks' arena rows (every head the same) go to self._rows."""
        nb = self.nb
        self._rows = [np.zeros(0, np.int64) for _ in range(self.kvh)]
        if nb == 0:
            return np.zeros(self.kvh, np.int64)
        t0 = time.perf_counter()
        k = self.k_opt
        kb = math.ceil(k * nb) if isinstance(k, float) else int(k)
        if kb >= nb:
            top = np.arange(nb)
        else:
            reps = self.bsum[:nb] / (self.bcount[:nb, None] * self.kvh)  # [B, hd]
            score = reps @ q.reshape(-1, self.hd).mean(0, dtype=np.float64)  # [B]
            top = np.argpartition(-score, kb - 1)[:kb]
            top = top[np.argsort(-score[top], kind="stable")]
        t1 = time.perf_counter()
        sec["select"] += t1 - t0
        rows = self.sink_n + runs_to_index(self.backend.layout(top, self.bstart, self.bcount))
        self._rows = [rows] * self.kvh
        sec["gather"] += time.perf_counter() - t1
        return np.full(self.kvh, rows.size, np.int64)

    def _history_state(self) -> dict[str, Any]:
        """TopKCache's history (block tables; positions only in place of k/v) plus the device arena's tokens."""
        return {**super()._history_state(), **self._device_state()}

    def _restore_history(self, s: dict[str, Any]) -> None:
        super()._restore_history(s)
        self._restore_device(s)


class DeviceWindowKV(DeviceArena, WindowCache):
    """WindowCache with k/v and attention on `engine`'s device. Tokens leaving the window stay in the
    arena until it is full; then the live window moves down behind the sink (one device copy), so the
    arena stays within a few times sink + recent + chunk. Its state is WindowCache's (the host keeps
    the sink and the window as the base does); a restore writes them back into the arena."""

    def __init__(self, text: TextSpec, rope: Rope, *, sink: int, recent: int, positions: str, engine: OrtDeviceEngine):
        if positions == "compact":
            raise ConfigError(
                "window with its KV on the GPU does not support positions=compact; drop it or use --provider cpu"
            )
        buffer = AttentionBuffer(text.num_kv_heads, 0)  # unused: the attended set is gathered on the device
        super().__init__(text, rope, sink=sink, recent=recent, positions=positions, table=None, buffer=buffer)
        self._attach(engine)

    def _make_room(self, n: int) -> None:
        if self.kv.n + n > self.kv.capacity:
            self._compact()

    def _compact(self) -> None:
        """Move the window down behind the sink when the rows it leaves are at least as many as its own
        (so the copy does not overlap itself); the rows after it are free again."""
        kv, s, w = self.kv, self.sink_n, self.ring.n
        if kv.n - s - w >= w:
            self.dev.move(kv, kv.n - w, s, w)
            kv.n = s + w

    def extend(self, k: np.ndarray, v: np.ndarray, positions: np.ndarray, *, chunk: int) -> None:
        super().extend(k, v, positions, chunk=chunk)
        self._compact()

    def nbytes(self) -> int:
        return self.kv.nbytes() + self.window_nbytes()

    def _restore_history(self, s: dict[str, Any]) -> None:
        rs = slice(self.ring.s, self.ring.s + self.ring.n)
        self.kv.n = 0
        self.dev.upload(self.kv, self.sink_k[:, : self.sink_n], self.sink_v[:, : self.sink_n])
        self.dev.upload(self.kv, self.ring.k[:, rs], self.ring.v[:, rs])
