"""The device engine's runs for the retrieval policies (retrieval/device.py, device_resv.py, device_tiers.py): a chunk
attending to rows gathered from the arena by index, ReSV's cluster masses, ReSV's whole retrieval plus
attention in one run, and attention over a slot arena that the same run first writes the missing rows
into. Part of OrtDeviceEngine (ort_cuda.py), which provides the sessions, bindings and copies.

Every attending run takes a chunk's queries and k/v from the host, appends the chunk to the arena in
place (an Identity output bound after its last row) and returns the partial softmax of its rows,
merged on the host with the chunk's causal block (`_Chunk`). Tables the runs read (ReSV's cluster
table, its rows' owners) are `DeviceRows`, refreshed by the run that reads them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from vrex_edge.runtime.kernels.numpy_engine import merge_partial, start_with_chunk

if TYPE_CHECKING:
    from vrex_edge.runtime.kernels.ort_cuda import DeviceKV

_F32 = 4  # bytes
_FAR = np.float32(-1e30)  # the score bias of a padded row: exp() of it is 0, and a row of them stays finite


class DeviceRows:
    """A growable float32 OrtValue [cap, a, b] on the engine's device (rows of [a, b]); `n` rows used.
    Made by OrtDeviceEngine.new_rows and written only through its engine."""

    def __init__(self, buf: Any, row: tuple[int, int]):
        self.buf, self.row = buf, row
        self.n = 0

    @property
    def capacity(self) -> int:
        return int(self.buf.shape()[0])

    def nbytes(self) -> int:
        return self.capacity * self.row[0] * self.row[1] * _F32

    def ptr(self, row: int) -> int:
        return self.buf.data_ptr() + row * self.row[0] * self.row[1] * _F32


class _Chunk:
    """The host side of one attending run: q [KVH, G, n, hd] scaled to qs [KVH, G*n, hd], the chunk's own
    causal block as the starting partial softmax, its k/v token-major ([n, KVH, hd]) for the append, and
    the run's outputs."""

    def __init__(self, q: np.ndarray, k_new: np.ndarray, v_new: np.ndarray):
        kvh, g, n, hd = self.shape = q.shape
        self.qs = np.ascontiguousarray((q * np.float32(1.0 / np.sqrt(hd))).reshape(kvh, g * n, hd))
        self.m, self.den, self.acc = start_with_chunk(self.qs, k_new, v_new, g)  # [KVH, G*n, 1] x2, [.., hd]
        self.kt = np.ascontiguousarray(np.asarray(k_new, np.float32).transpose(1, 0, 2))  # [n, KVH, hd]
        self.vt = np.ascontiguousarray(np.asarray(v_new, np.float32).transpose(1, 0, 2))
        self.out = {
            "acc": np.empty((kvh, g * n, hd), np.float32),
            "m": np.empty((kvh, g * n, 1), np.float32),
            "den": np.empty((kvh, g * n, 1), np.float32),
        }

    def bind(self, eng: Any, io: Any, kv: DeviceKV, q_name: str) -> None:
        """Queries, the chunk (in, and out into kv after its last row) and the partial softmax outputs."""
        eng._bind_in(io, q_name, self.qs.ctypes.data, self.qs.shape, "cpu")
        eng._bind_in(io, "k_new", self.kt.ctypes.data, self.kt.shape, "cpu")
        eng._bind_in(io, "v_new", self.vt.ctypes.data, self.vt.shape, "cpu")
        eng._bind_in(io, "k", kv.k.data_ptr(), (kv.n * kv.kvh, kv.hd), eng.device)  # the arena, where it lies
        eng._bind_in(io, "v", kv.v.data_ptr(), (kv.n * kv.kvh, kv.hd), eng.device)
        for name, a in self.out.items():
            eng._bind_out(io, name, a.ctypes.data, a.shape, "cpu")
        eng._bind_out(io, "k_out", kv.row_ptr(kv.k, kv.n), self.kt.shape, eng.device)
        eng._bind_out(io, "v_out", kv.row_ptr(kv.v, kv.n), self.vt.shape, eng.device)

    def result(self, ran: bool) -> np.ndarray:
        """-> [KVH, G, n, hd]: the chunk's block merged with the run's partial softmax (if it ran)."""
        if ran:
            o = self.out
            merge_partial(self.m, self.den, self.acc, o["m"], o["den"], o["acc"])
        self.acc /= self.den
        return self.acc.reshape(self.shape)


class RetrievalRuns:
    """OrtDeviceEngine's runs for the retrieval policies (see the module docstring)."""

    device: str
    _ort: Any
    _bind_in: Any
    _bind_out: Any
    _copy: Any
    _session: Any
    reserve: Any

    def new_rows(self, row: tuple[int, int], capacity: int) -> DeviceRows:
        new = self._ort.OrtValue.ortvalue_from_shape_and_type
        return DeviceRows(new([max(capacity, 1), *row], np.float32, self.device, 0), row)

    def _room(self, table: DeviceRows, keep: int, need: int) -> None:
        """Room for `need` rows in `table`, its first `keep` rows kept (device-to-device copy when it grows)."""
        if need > table.capacity:
            big = self.new_rows(table.row, max(need, 2 * table.capacity))
            self._copy(table.ptr(0), self.device, big.ptr(0), self.device, (keep, *table.row))
            table.buf = big.buf

    def _go(self, sess: Any, io: Any) -> None:
        sess.run_with_iobinding(io)
        io.synchronize_outputs()

    def _start(self, kind: str, hd: int) -> tuple[Any, Any]:
        sess, io = self._session(kind, hd)
        io.clear_binding_inputs()
        io.clear_binding_outputs()
        return sess, io

    def _append_only(self, kv: DeviceKV, ch: _Chunk) -> None:
        for x, buf in ((ch.kt, kv.k), (ch.vt, kv.v)):
            self._copy(x.ctypes.data, "cpu", kv.row_ptr(buf, kv.n), self.device, x.shape)

    def attend_rows_append(
        self, q: np.ndarray, kv: DeviceKV, rows: np.ndarray, lens: np.ndarray, k_new: np.ndarray, v_new: np.ndarray
    ) -> np.ndarray:
        """q [KVH, G, n, hd] rotated queries; head h attends to the arena tokens rows[h, :lens[h]]
        (rows [KVH, S] int64, any order, entries past lens[h] ignored) and, causally, to the chunk
        k_new/v_new [KVH, n, hd], which is then appended to kv (same graph run) -> [KVH, G, n, hd].
        What crosses: q, the rows, a [KVH, S] bias and the chunk in; the partial softmax out."""
        kvh, _, n, hd = q.shape
        self.reserve(kv, kv.n + n)
        ch = _Chunk(q, k_new, v_new)
        s = rows.shape[1]
        ran = kv.n > 0 and s > 0 and bool(np.any(lens))
        if not ran:  # nothing to attend to: only the append
            self._append_only(kv, ch)
        else:
            live = np.arange(s) < np.asarray(lens)[:, None]  # [KVH, S]
            flat = np.where(live, rows * kvh + np.arange(kvh)[:, None], 0).astype(np.int64)  # rows of [n*KVH, hd]
            bias = np.where(live, np.float32(0), _FAR).astype(np.float32)[:, None, :]  # [KVH, 1, S]
            sess, io = self._start("gather_append", hd)
            ch.bind(self, io, kv, "q")
            io.bind_input("idx", "cpu", 0, np.int64, list(flat.shape), flat.ctypes.data)
            self._bind_in(io, "bias", bias.ctypes.data, bias.shape, "cpu")
            self._go(sess, io)
        kv.n += n
        return ch.result(ran)

    def attend_slots(
        self,
        q: np.ndarray,
        kv: DeviceKV,
        idx: np.ndarray,
        live: np.ndarray,
        put: np.ndarray,
        put_k: np.ndarray,
        put_v: np.ndarray,
        extra: tuple[np.ndarray, np.ndarray, np.ndarray],
        k_new: np.ndarray,
        v_new: np.ndarray,
    ) -> np.ndarray:
        """Attention over a slot arena under a device budget (retrieval/device_tiers.py), in one run
        (ort_graphs.slots_attend_graph). The arena kv [cap, KVH, hd] is seen as rows slot * KVH + head.
        First the rows `put` [P] int64 are written with put_k, put_v [P, hd] (host staging buffers: one
        host-to-device copy each); then head h attends to the arena rows idx[h][live[h]] (idx [KVH, S]
        int64, live [KVH, S] bool), to the rows extra = (xk, xv [KVH, X, hd] host, xlens [KVH]) that are
        needed now but not kept, and, causally, to the chunk k_new/v_new [KVH, n, hd] (which reaches the
        arena through `put` like any row) -> [KVH, G, n, hd]. Every arena row read must have been written
        (the caller zeroes a new arena)."""
        kvh, _, n, hd = q.shape
        ch = _Chunk(q, k_new, v_new)
        xk, xv, xlens = extra
        s, x = max(idx.shape[1], 1), max(xk.shape[1], 1)  # at least one (padded) row each
        idx_p = np.zeros((kvh, s), np.int64)
        idx_p[:, : idx.shape[1]] = np.where(live, idx, 0)
        bias = np.full((kvh, 1, s + x), _FAR, np.float32)
        bias[:, 0, : idx.shape[1]] = np.where(live, np.float32(0), _FAR)
        bias[:, 0, s : s + xk.shape[1]] = np.where(np.arange(xk.shape[1]) < np.asarray(xlens)[:, None], 0, _FAR)
        if xk.shape[1] == 0:
            xk = xv = np.zeros((kvh, 1, hd), np.float32)
        xk, xv = np.ascontiguousarray(xk, np.float32), np.ascontiguousarray(xv, np.float32)
        put = np.ascontiguousarray(np.asarray(put, np.int64).reshape(-1, 1))
        put_k, put_v = np.ascontiguousarray(put_k, np.float32), np.ascontiguousarray(put_v, np.float32)
        rows = kv.capacity * kvh
        sess, io = self._start("slots", hd)
        self._bind_in(io, "q", ch.qs.ctypes.data, ch.qs.shape, "cpu")
        for name, buf in (("k", kv.k), ("v", kv.v)):  # the whole arena in, and out at the same address
            self._bind_in(io, name, buf.data_ptr(), (rows, hd), self.device)
            self._bind_out(io, f"{name}_out", buf.data_ptr(), (rows, hd), self.device)
        io.bind_input("put", "cpu", 0, np.int64, list(put.shape), put.ctypes.data)
        self._bind_in(io, "put_k", put_k.ctypes.data, put_k.shape, "cpu")
        self._bind_in(io, "put_v", put_v.ctypes.data, put_v.shape, "cpu")
        io.bind_input("idx", "cpu", 0, np.int64, list(idx_p.shape), idx_p.ctypes.data)
        self._bind_in(io, "xk", xk.ctypes.data, xk.shape, "cpu")
        self._bind_in(io, "xv", xv.ctypes.data, xv.shape, "cpu")
        self._bind_in(io, "bias", bias.ctypes.data, bias.shape, "cpu")
        for name, a in ch.out.items():
            self._bind_out(io, name, a.ctypes.data, a.shape, "cpu")
        self._go(sess, io)
        return ch.result(True)

    def masses(self, q: np.ndarray, table: DeviceRows, a: int, new: np.ndarray) -> np.ndarray:
        """q [KVH, R, hd] scoring queries against a cluster table [cap, KVH, hd + 1] (representative,
        then token count; 0: no cluster) whose first `a` rows are on the device and whose rows a ..
        a + len(new) are `new` [m, KVH, hd + 1] (host; written into the table by the same run) ->
        mass [KVH, a + m] float32 on the host: HostBackend.masses's definition (accel/host.py)."""
        kvh, _, hd = q.shape
        c = a + new.shape[0]
        self._room(table, a, c)
        qs = np.ascontiguousarray(q * np.float32(1.0 / np.sqrt(hd)), np.float32)  # [KVH, R, hd]
        new = np.ascontiguousarray(new, np.float32)
        out = np.empty((kvh, c), np.float32)
        sess, io = self._start("masses", hd)
        self._bind_in(io, "q", qs.ctypes.data, qs.shape, "cpu")
        self._bind_table(io, table, a, new)
        self._bind_out(io, "mass", out.ctypes.data, out.shape, "cpu")
        self._go(sess, io)
        table.n = c
        return out

    def _bind_table(self, io: Any, table: DeviceRows, a: int, new: np.ndarray) -> None:
        """The table's first a rows in (device), its next rows `new` in (host) and out after them (device)."""
        self._bind_in(io, "old", table.ptr(0), (a, *table.row), self.device)
        self._bind_in(io, "new", new.ctypes.data, new.shape, "cpu")
        self._bind_out(io, "new_out", table.ptr(a), new.shape, self.device)

    def resv_attend_append(
        self,
        q: np.ndarray,
        kv: DeviceKV,
        k_new: np.ndarray,
        v_new: np.ndarray,
        *,
        score_q: np.ndarray,
        table: DeviceRows,
        new: np.ndarray,
        a: int,
        owner: DeviceRows,
        owner_new: np.ndarray,
        tau: float,
        recent: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        """ReSV's retrieval and attention in one device run (ort_graphs.resv_attend_graph).

        q, kv, k_new, v_new as in attend_rows_append; score_q [KVH, R, hd] the scoring queries; the
        cluster table's first a rows are on the device and `new` [m, KVH, hd + 1] are its rows a ..
        a + m; owner [cap, KVH, 1] holds each clustered arena row's cluster id (-1: sink) for its first
        owner.n rows and owner_new [mo, KVH] the next ones (both written by the run); the arena's last
        `recent` rows are the recent window. -> output [KVH, G, n, hd], rows attended per head [KVH]."""
        kvh, _, n, hd = q.shape
        c, ao = a + new.shape[0], owner.n
        lh = ao + owner_new.shape[0]
        assert kv.n == lh + recent and c > 0, "the owner table must cover the arena's clustered rows"
        self._room(table, a, c)
        self._room(owner, ao, lh)
        self.reserve(kv, kv.n + n)
        ch = _Chunk(q, k_new, v_new)
        qs = np.ascontiguousarray(score_q * np.float32(1.0 / np.sqrt(hd)), np.float32)  # [KVH, R, hd]
        new, owner_new = np.ascontiguousarray(new, np.float32), np.ascontiguousarray(owner_new, np.float32)
        ring = np.array([kvh, recent], np.int64)
        tau_a = np.array([tau if tau < 1.0 else 2.0], np.float64)  # > 1: every valid cluster
        kept = np.empty(kvh, np.float32)
        sess, io = self._start("resv_append", hd)
        ch.bind(self, io, kv, "qa")
        self._bind_in(io, "q", qs.ctypes.data, qs.shape, "cpu")
        self._bind_table(io, table, a, new)
        self._bind_in(io, "own_old", owner.ptr(0), (ao, kvh), self.device)
        self._bind_in(io, "own_new", owner_new.ctypes.data, owner_new.shape, "cpu")
        self._bind_out(io, "own_out", owner.ptr(ao), owner_new.shape, self.device)  # in place, after the old rows
        io.bind_input("ring", "cpu", 0, np.int64, [2], ring.ctypes.data)
        io.bind_input("tau", "cpu", 0, np.float64, [1], tau_a.ctypes.data)
        self._bind_out(io, "kept", kept.ctypes.data, kept.shape, "cpu")
        self._go(sess, io)
        table.n, owner.n = c, lh
        kv.n += n
        return ch.result(True), np.rint(kept).astype(np.int64)
