"""The device caches' shared part, and `topk` and `window` with their KV and attention on the device.

`DeviceArena` is the base of every device cache but full's (full.py): the tokens' rotated k, v in the
device engine's token-major arena (kernels/ort_cuda.py) in arrival order, and a call that attends to
sink + retrieved rows + recent in one device run, the chunk appended by the same run. `RowStorage`
lets a ClusterStore keep its tables on the host with no k/v (resv: device_resv.py).
`DeviceTopKKV` is topk's counterpart (its block tables stay on the host; positions=compact refused).
`DeviceWindowKV` is window's: its arena holds sink + recent and is compacted on the device when full.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from vrex_edge.bundle import TextSpec
from vrex_edge.errors import ConfigError
from vrex_edge.runtime.kvcache import LayerStats, Phase
from vrex_edge.runtime.retrieval.base import TIMERS, WindowedCache
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

    def _layout(self, r: np.ndarray, end: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Per head: sink rows, the selected rows, the recent window's rows (the `end` - ring.n rows before
        `end`, default the arena's kv.n) -> rows [KVH, S], lens [KVH]."""
        s, w = self.sink_n, self.ring.n
        end = self.kv.n if end is None else end
        lens = s + r + w  # [KVH]
        rows = np.zeros((self.kvh, int(lens.max())), np.int64)
        rows[:, :s] = np.arange(s)
        recent = np.arange(end - w, end)
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
        self._rows = [np.zeros(0, np.int64) for _ in range(self.kvh)]
        if self.nb == 0:
            return np.zeros(self.kvh, np.int64)
        t0 = time.perf_counter()
        top = self._top_blocks(q)
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
