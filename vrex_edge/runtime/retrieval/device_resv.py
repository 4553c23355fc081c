"""`resv` with its KV, scoring, selection and attention on the device (sessions on CUDA).

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
With reselect or decode_reselect > 1, max_kept or dense_below (or fused=False) the host selects as
ReSVCache does from masses [KVH, C] the device computes, and a second run gathers the selected rows
[KVH, S] it sends.
A gather by index is cheap on a GPU, so the arena keeps stream order, not a cluster-contiguous layout.

Same options, selections and outputs as ReSVCache (to float rounding), except positions=compact,
fine > 0 (two-level tables), the KV tiers and retrieval backends other than `host` (ConfigError).
The device arena and the call it shares with topk and window: retrieval/device.py; this cache under a
device KV budget (--kv-budget), the rest of the KV in host memory: retrieval/device_tiers.py.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from vrex_edge.accel.host import wicsum
from vrex_edge.accel.q8 import dequantized_columns, dequantized_queries
from vrex_edge.bundle import TextSpec
from vrex_edge.errors import ConfigError
from vrex_edge.runtime.retrieval.clusters import fit_budget
from vrex_edge.runtime.retrieval.device import DeviceArena, RowStorage
from vrex_edge.runtime.retrieval.resv import ReSVCache, ReSVOptions
from vrex_edge.runtime.retrieval.storage import RESIDENT, KVStorage
from vrex_edge.runtime.rope import Rope

if TYPE_CHECKING:
    from vrex_edge.runtime.kernels.ort_cuda import OrtDeviceEngine
    from vrex_edge.runtime.retrieval.policy import Policy


def unsupported(o: ReSVOptions, storage: KVStorage) -> str | None:
    """Why the device path cannot run these options (None: it can)."""
    if o.positions == "compact":
        return "positions=compact"
    if o.fine:
        return "fine > 0 (two-level tables)"
    if o.accel != "host":
        return f"accel={o.accel} (the device scores with its own graph)"
    if storage is not RESIDENT:
        return "the KV tiers kept on disk (--keep-kv, --resume; --kv-budget alone runs them on the GPU)"
    return None


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
        once = o.reselect == 1 and o.decode_reselect in (0, 1)  # a selection per call in both phases
        self.fused = fused and once and o.max_kept == 0 and o.dense_below == 0
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
        qs = self._scoring_queries(q, q_abs)  # [KVH, G*n, hd]
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
        reps = st.means_t[:, :, a:c]  # [KVH, hd, c - a]
        x[:, :, : self.hd] = (reps if st.q8 is None else dequantized_columns(reps)).transpose(2, 0, 1)
        x[:, :, self.hd] = st.counts[:, a:c].T
        return x

    def _scoring_queries(self, q: np.ndarray, q_abs: np.ndarray) -> np.ndarray:
        """The chunk's scoring queries [KVH, G*n, hd]; with reps=int8 the 7-bit ones the host scores
        with, as float32 (with the table's dequantized rows, the host's int8 masses to float rounding)."""
        qs = (q_abs if self.score_post else q).reshape(self.kvh, -1, self.hd)
        return qs if self.store.q8 is None else dequantized_queries(qs)

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
        elif (reused := self._take_reused()) is not None:
            sels = reused
        else:
            qs = self._scoring_queries(q, q_abs)  # [KVH, G*n, hd]
            mass = self.dev.masses(qs, self.table, self.dirty, self._dirty_rows(c))  # [KVH, C]; the table is current
            self.dirty = c
            valid = st.counts[:, :c] > 0
            keep = valid if self.tau >= 1.0 else wicsum(mass, self.tau) & valid
            sels = [np.flatnonzero(keep[h]) for h in range(self.kvh)]
            self.last_mass, self.last_sel = mass, sels
            self.last_nsel = np.array([s.size for s in sels])
            self._reuse = (self.phase, self.reselect[self.phase] - 1, st.nclu.copy())
        sels = fit_budget(sels, self.last_mass, st.counts, budget)  # max_kept
        for h in range(self.kvh):
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
        return {
            **super()._history_state(),
            "arena": self.store.arena.state(),
            "absorbed": self.absorbed,
            **self._device_state(),
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
