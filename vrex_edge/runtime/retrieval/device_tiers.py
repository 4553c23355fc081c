"""`resv` on the device under a device KV budget: the KV tiers on the GPU (`--provider cuda --kv-budget`).

What lives where, per layer:
- host memory: every token's rotated k, v in arrival order (`HostKV`, token-major), the cluster tables
  and each token's cluster (a ClusterStore over zero-width rows whose pos is the token's index, as in
  DeviceReSVKV, whose host-selection path this cache runs).
- device: a slot arena [C, KVH, hd] of at most `budget` bytes of k/v. Each KV head has its own C slots
  (arena rows slot * KVH + head) and `SlotMap` says which token each slot holds and when it was last
  used; plus ReSV's cluster table, from which the device computes the cluster masses.
Per call: the masses come back to the host, WiCSum selects, and each head's sink + selected + recent
tokens are listed. Those already in a slot are read there; the others are gathered from host memory
into one staging buffer and written, together with the chunk, into the least recently used slots of
their head by the same device run that then gathers and attends (kernels: `attend_slots`). The sink and
the recent window are needed by every call, so they stay in their slots; what the rest of the slots
keep is the recently selected tokens. A call that needs more rows than its head's slots can hold beside
the rows it already uses attends to the rest straight from host memory (copied for this call only).
Outputs are DeviceReSVKV's and ReSVCache's to float rounding; `uploads` counts the KV copied in.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from vrex_edge.bundle import TextSpec
from vrex_edge.errors import KVStoreError
from vrex_edge.runtime.kernels.ort_cuda import HostKV
from vrex_edge.runtime.retrieval.base import WindowedCache
from vrex_edge.runtime.retrieval.device_resv import DeviceReSVKV
from vrex_edge.runtime.retrieval.resv import ReSVOptions
from vrex_edge.runtime.rope import Rope

if TYPE_CHECKING:
    from vrex_edge.runtime.kernels.ort_cuda import OrtDeviceEngine
    from vrex_edge.runtime.retrieval.policy import Policy
    from vrex_edge.runtime.retrieval.storage import KVStorage

_F32 = 4  # bytes


def device_budget(storage: KVStorage, layers: int) -> int | None:
    """Device KV bytes per layer when `storage` is the KV tiers of a session with a budget and nothing kept
    on disk (--kv-budget without --keep-kv / --resume): the budget split evenly between the layers;
    else None (the host's tiers keep the history)."""
    from vrex_edge.runtime.kvstore import TieredStorage

    if not isinstance(storage, TieredStorage):
        return None
    config = storage.mgr.config
    if config.budget is None or config.folder is not None:
        return None
    return config.budget // layers


class SlotMap:
    """Which token each of a KV head's `cap` device slots holds and the call (tick) that last used it,
    each token's slot, and the slots in least recently used order. Vectorised over heads and rows: the
    order is kept by stable partitions (a radix sort of a boolean), never a sort of the ticks."""

    def __init__(self, kvh: int, cap: int):
        self.kvh, self.cap = kvh, cap
        self.token = np.full((kvh, cap), -1, np.int64)  # [KVH, C]: token in each slot (-1: free)
        self.used = np.full((kvh, cap), -1, np.int64)  # [KVH, C]: tick of the last call that used it
        self.order = np.tile(np.arange(cap), (kvh, 1))  # [KVH, C]: slots by `used`, oldest first
        self.slot = np.full((kvh, 1024), -1, np.int64)  # [KVH, tokens]: each token's slot (-1: host only)
        self.tick = 0

    def start(self, tokens: int) -> None:
        """A new call (tick) over tokens 0 .. tokens - 1."""
        self.tick += 1
        if tokens > self.slot.shape[1]:
            big = np.full((self.kvh, max(tokens, 2 * self.slot.shape[1])), -1, np.int64)
            big[:, : self.slot.shape[1]] = self.slot
            self.slot = big

    def lookup(self, tok: np.ndarray, live: np.ndarray) -> np.ndarray:
        """tok [KVH, S] token indices, live [KVH, S] -> their slots [KVH, S] (-1: not on the device or not live)."""
        s = np.take_along_axis(self.slot, np.where(live, tok, 0), axis=1)
        return np.where(live, s, -1)

    def touch(self, slots: np.ndarray) -> None:
        """slots [KVH, S] (-1: none) are used by this call."""
        h, j = np.nonzero(slots >= 0)
        self.used[h, slots[h, j]] = self.tick

    def settle(self) -> np.ndarray:
        """Move the slots this call used to the end of the order (the others keep theirs) -> the slots'
        ticks in the new order [KVH, C] (non-decreasing)."""
        u = np.take_along_axis(self.used, self.order, axis=1)  # [KVH, C]
        p = np.argsort(u >= self.tick, axis=1, kind="stable")
        self.order = np.take_along_axis(self.order, p, axis=1)
        return np.take_along_axis(u, p, axis=1)

    def oldest(self, want: np.ndarray, before: int) -> tuple[np.ndarray, np.ndarray]:
        """Per head up to want[h] slots last used before tick `before` (this call's last), least recently
        used first -> slots [KVH, max(want)] and how many of each row qualify, got [KVH] (<= want)."""
        u = self.settle()
        k = min(int(want.max(initial=0)), self.cap)
        return self.order[:, :k], np.minimum(want, (u < before).sum(axis=1))

    def assign(self, heads: np.ndarray, slots: np.ndarray, tokens: np.ndarray) -> None:
        """Put tokens [P] of heads [P] into slots [P] (evicting what they held); used by this call."""
        old = self.token[heads, slots]
        gone = old >= 0
        self.slot[heads[gone], old[gone]] = -1
        self.token[heads, slots] = tokens
        self.slot[heads, tokens] = slots
        self.used[heads, slots] = self.tick

    def check(self) -> None:
        """The maps agree and the order is by last use (tests)."""
        h, s = np.nonzero(self.token >= 0)
        assert (self.slot[h, self.token[h, s]] == s).all()
        h, t = np.nonzero(self.slot >= 0)
        assert (self.token[h, self.slot[h, t]] == t).all()
        assert (np.diff(np.take_along_axis(self.used, self.order, axis=1), axis=1) >= 0).all()
        assert (np.sort(self.order, axis=1) == np.arange(self.cap)).all()


class BudgetReSVKV(DeviceReSVKV):
    """DeviceReSVKV (host-selection path) whose device arena holds at most `budget` bytes of k/v: the
    rest lives in host memory and each call copies in the rows it needs that are not resident (module
    docstring). `uploads` counts them: rows, bytes, calls; `last_upload` is the last call's bytes."""

    def __init__(
        self,
        layer: int,
        text: TextSpec,
        rope: Rope,
        o: ReSVOptions,
        *,
        policy: Policy,
        engine: OrtDeviceEngine,
        budget: int,
    ):
        """budget: device bytes for this layer's k/v (the slots; the cluster table comes beside it)."""
        kvh, hd = text.num_kv_heads, text.head_dim
        self.row_bytes = 2 * hd * _F32  # one head's k and v of one token
        self.slot_count = budget // (kvh * self.row_bytes)
        if self.slot_count < 1:
            raise KVStoreError(f"--kv-budget leaves {budget} bytes per layer: less than one token's k/v on the GPU")
        super().__init__(layer, text, rope, o, policy=policy, engine=engine, fused=False)
        self.host = HostKV(kvh, hd)
        self.uploads = dict.fromkeys(("rows", "bytes", "calls", "passed"), 0)  # passed: rows not kept
        self.last_upload = 0

    def _attach(self, engine: OrtDeviceEngine) -> None:
        """The slot arena, zeroed (a padded gather may read any slot), instead of the growing arena."""
        self.dev = engine
        self.kv = engine.new_kv(self.kvh, self.hd, self.slot_count, exact=True)
        zero = np.zeros((self.slot_count, self.kvh, self.hd), np.float32)
        engine.write(self.kv, 0, zero, zero)
        self.kv.n = self.slot_count  # every slot is bound by the runs
        self.slots = SlotMap(self.kvh, self.slot_count)
        self._rows = [np.zeros(0, np.int64) for _ in range(self.kvh)]

    def extend(self, k: np.ndarray, v: np.ndarray, positions: np.ndarray, *, chunk: int) -> None:
        """Warm-up: the tokens go to host memory only (the calls bring in what they need)."""
        self.host.append(self.rope.apply(k, np.asarray(positions, np.int64)), v)
        WindowedCache.extend(self, k, v, positions, chunk=chunk)

    def _attend_device(
        self, q: np.ndarray, q_abs: np.ndarray, k_abs: np.ndarray, v: np.ndarray, sec: dict[str, float]
    ) -> tuple[np.ndarray, np.ndarray]:
        """The host's selection, the slots of the rows it needs, one device run (module docstring)."""
        kvh, n, sm = self.kvh, q.shape[1], self.slots
        c = min(n, sm.cap)  # the chunk's last c tokens get slots (all of it unless the budget is tiny)
        r = self._retrieve(q, q_abs, self.retrieve_budget(n), sec)  # [KVH]; selected tokens in self._rows
        t1 = time.perf_counter()
        tok, lens = self._layout(r, end=self.seen)  # [KVH, S] token indices: sink, selected, recent
        live = np.arange(tok.shape[1]) < lens[:, None]  # [KVH, S]
        sm.start(self.seen + n)
        slots = sm.lookup(tok, live)  # [KVH, S]
        sm.touch(slots)  # the resident rows this call reads are evicted last
        heads = np.repeat(np.arange(kvh), c)  # [KVH * c], head-major
        chunk, _ = sm.oldest(np.full(kvh, c), before=sm.tick + 1)  # the chunk always gets slots
        displaced = bool((np.take_along_axis(sm.used, chunk, axis=1) == sm.tick).any())  # a row read now
        sm.assign(heads, chunk.ravel(), np.tile(np.arange(self.seen + n - c, self.seen + n), kvh))
        if displaced:  # such a row is missing again
            slots = sm.lookup(tok, live)
        miss = live & (slots < 0)
        free, got = sm.oldest(miss.sum(axis=1), before=sm.tick)  # slots no row of this call uses
        mh, mj = np.nonzero(miss)  # head-major
        rank = (np.cumsum(miss, axis=1) - 1)[mh, mj]  # each miss's place among its head's misses
        kept = rank < got[mh]
        ch, cj = mh[kept], mj[kept]
        slots[ch, cj] = free[ch, rank[kept]]
        sm.assign(ch, slots[ch, cj], tok[ch, cj])
        sm.settle()
        ctok = tok[ch, cj]
        put = np.concatenate([slots[ch, cj] * kvh + ch, chunk.ravel() * kvh + heads])  # arena rows
        hk, hv = self.host.rows(ctok, ch)  # [P - KVH * c, hd]
        put_k = np.concatenate([hk, k_abs[:, n - c :].reshape(-1, self.hd)])  # [P, hd]: the staging buffers
        put_v = np.concatenate([hv, v[:, n - c :].reshape(-1, self.hd)])
        xh, xj = mh[~kept], mj[~kept]  # needed now, no slot left: read from host memory for this call
        xlens = np.bincount(xh, minlength=kvh)
        xr = rank[~kept] - got[xh]
        xk = np.zeros((kvh, int(xlens.max(initial=0)), self.hd), np.float32)
        xv = np.zeros_like(xk)
        xk[xh, xr], xv[xh, xr] = self.host.rows(tok[xh, xj], xh)
        on = slots >= 0  # [KVH, S]: read from the arena
        idx = np.where(on, slots * kvh + np.arange(kvh)[:, None], 0)
        rows = int(mh.size)
        self.last_upload = rows * self.row_bytes
        for key, add in (("rows", rows), ("bytes", self.last_upload), ("calls", 1), ("passed", int(xh.size))):
            self.uploads[key] += add
        t2 = time.perf_counter()
        sec["gather"] += t2 - t1
        o = self.dev.attend_slots(
            q_abs.reshape(kvh, self.g, n, self.hd), self.kv, idx, on, put, put_k, put_v, (xk, xv, xlens), k_abs, v
        )
        self.host.append(k_abs, v)
        sec["attend"] += time.perf_counter() - t2
        return o, lens

    def device_nbytes(self) -> int:
        """Device memory: the slot arena (within the budget) plus the cluster and owner tables."""
        return self.kv.nbytes() + self.table.nbytes() + self.owner.nbytes()

    def nbytes(self) -> int:
        """Device memory plus host memory (every token's k/v, the window, the cluster tables)."""
        return self.device_nbytes() + self.host.nbytes() + self.window_nbytes() + self.store.nbytes()

    # ------------------------------------------------------------------ declared state

    def _device_state(self) -> dict[str, Any]:
        """Every token's k, v [KVH, n, hd] from host memory: DeviceReSVKV's state, so either resumes the other."""
        k, v = self.host.head_major()
        return {"k": k, "v": v}

    def _restore_device(self, s: dict[str, Any]) -> None:
        self.host = HostKV(self.kvh, self.hd, max(int(s["k"].shape[1]), 1))
        self.host.append(s["k"], s["v"])
        self.slots = SlotMap(self.kvh, self.slot_count)  # nothing resident: the next calls bring it in
