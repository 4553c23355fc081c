"""Attention with the KV cache in device memory: onnxruntime's CUDA provider over device OrtValues.

    engine = make_engine("ort-cuda")                 # once per session
    kv = engine.new_kv(kvh, hd)                      # DeviceKV: k, v [cap, KVH, hd] f32 on the GPU
    o = engine.attend_append(q, kv, k_new, v_new)    # [KVH, G, n, hd]; the chunk is now in kv

The arena is token-major ([cap, KVH, hd]), so the first L tokens of every head are one contiguous
[L, KVH, hd] run: the history is bound by address with no slice, and a chunk's [n, KVH, hd] is
written in place after it by the same graph run that attends (an Identity output bound at the
arena's address + L rows). One run per layer and chunk; what crosses to the host is q and the
chunk's k/v going in ([KVH, n, hd] each) and the partial softmax coming out (acc [KVH, G*n, hd],
m and den [KVH, G*n, 1]): never KV-sized data. The chunk's own causal block (n x n) and the
log-sum-exp merge stay on the host in numpy, as in ort_engine.py. `device="cpu"` runs the same
graphs and bindings on the CPU provider (the CPU-only tests check the logic with it).

For the retrieval policies on the device (retrieval/device.py, device_resv.py) ort_cuda_runs.py adds
`attend_rows_append` (each head's rows gathered from the arena by index, attended, the chunk
appended), `masses` (ReSV's cluster masses over a device table the same run refreshes) and
`resv_attend_append` (ReSV's whole retrieval and attention in one run) and `attend_slots` (a slot arena
under a device budget: the rows a call needs written into it, then gathered, in one run). For a cache
whose history lies partly in host memory, `attend_split` attends to a device part and a host part that
the run copies to the device first. The graphs: ort_graphs.py.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from vrex_edge.errors import ConfigError
from vrex_edge.runtime.kernels.numpy_engine import NumpyEngine, merge_partial, start_with_chunk
from vrex_edge.runtime.kernels.ort_cuda_runs import RetrievalRuns
from vrex_edge.runtime.kernels.ort_graphs import (
    FORMS,
    attend_graph,
    copy_graph,
    gather_attend_graph,
    masses_graph,
    resv_attend_graph,
    slots_attend_graph,
    split_attend_graph,
)
from vrex_edge.runtime.kernels.segments import Segment, segment_lens

_F32 = 4  # bytes
DEFAULT_FORM = "auto"  # "flat" from FLAT_FROM history tokens, "transposed" below (benchmarks/results/gpu.md)
FLAT_FROM = 2048  # where form flat's graph run became the faster on an H200 (1K: 0.18 vs 0.14 ms, 2K: 0.18 vs 0.20)
ENGINE_FORMS = ("auto", *FORMS)
_GRAPHS = {  # kind -> graph(hd, form)
    "copy": lambda hd, form: copy_graph(),
    "attend": lambda hd, form: attend_graph(hd, append=False, form=form),
    "attend_append": lambda hd, form: attend_graph(hd, append=True, form=form),
    "gather_append": lambda hd, form: gather_attend_graph(hd, append=True),
    "masses": masses_graph,
    "resv_append": resv_attend_graph,
    "split": split_attend_graph,
    "slots": lambda hd, form: slots_attend_graph(hd),
}


class DeviceKV:
    """One layer's k, v [cap, KVH, hd] float32 OrtValues on the engine's device; `n` tokens used.
    Made by OrtDeviceEngine.new_kv and written only through its engine."""

    def __init__(self, k: Any, v: Any, kvh: int, hd: int):
        self.k, self.v, self.kvh, self.hd = k, v, kvh, hd
        self.n = 0

    @property
    def capacity(self) -> int:
        return int(self.k.shape()[0])

    def nbytes(self) -> int:
        return 2 * self.capacity * self.kvh * self.hd * _F32

    def row_ptr(self, buf: Any, row: int) -> int:
        """Device address of token `row` (all heads) in `buf` (self.k or self.v)."""
        return buf.data_ptr() + row * self.kvh * self.hd * _F32


class HostKV:
    """Every token's k, v [cap, KVH, hd] float32 in host memory, token-major like DeviceKV (doubling when
    full); `n` tokens used. The tier below a device budget: rows of it are bound as host inputs of a run."""

    def __init__(self, kvh: int, hd: int, capacity: int = 1024):
        self.k = np.empty((capacity, kvh, hd), np.float32)
        self.v = np.empty_like(self.k)
        self.kvh, self.hd, self.n = kvh, hd, 0

    def append(self, k: np.ndarray, v: np.ndarray) -> None:
        """k, v [KVH, m, hd] -> rows n .. n + m."""
        m = k.shape[1]
        if self.n + m > self.k.shape[0]:
            cap = max(self.n + m, 2 * self.k.shape[0])
            for name in ("k", "v"):
                big = np.empty((cap, self.kvh, self.hd), np.float32)
                big[: self.n] = getattr(self, name)[: self.n]
                setattr(self, name, big)
        self.k[self.n : self.n + m] = k.transpose(1, 0, 2)
        self.v[self.n : self.n + m] = v.transpose(1, 0, 2)
        self.n += m

    def rows(self, tok: np.ndarray, heads: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """tok, heads [P] -> k, v [P, hd] of those tokens' heads (one gather each: a staging buffer)."""
        flat = tok * self.kvh + heads  # rows of the [cap * KVH, hd] view
        return np.take(self.k.reshape(-1, self.hd), flat, axis=0), np.take(self.v.reshape(-1, self.hd), flat, axis=0)

    def head_major(self) -> tuple[np.ndarray, np.ndarray]:
        """-> copies k, v [KVH, n, hd] (the caches' state form)."""
        return (
            np.ascontiguousarray(self.k[: self.n].transpose(1, 0, 2)),
            np.ascontiguousarray(self.v[: self.n].transpose(1, 0, 2)),
        )

    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes


class OrtDeviceEngine(RetrievalRuns):
    """Chunk attention over DeviceKV arenas (see module docstring). Not thread-safe."""

    name = "ort-cuda"

    def __init__(
        self,
        *,
        threads: int = 1,
        device: str = "cuda",
        providers: Sequence[Any] | None = None,
        min_capacity: int = 1024,
        form: str | None = None,
    ):
        """device: "cuda" (CUDAExecutionProvider, TF32 off so results match the CPU path to float32
        rounding) or "cpu" (the same graphs on the CPU provider); min_capacity: tokens per first arena;
        form: how a contiguous history is read (ENGINE_FORMS; None: $VREX_ORT_CUDA_FORM, else
        DEFAULT_FORM, the fastest measured; the variable is for benchmarks comparing the forms)."""
        import onnxruntime as ort

        if device not in ("cuda", "cpu"):
            raise ConfigError(f"device engine: device must be cuda or cpu, got '{device}'")
        if providers is None:
            providers = [("CUDAExecutionProvider", {"use_tf32": "0"})] if device == "cuda" else ["CPUExecutionProvider"]
        names = [p if isinstance(p, str) else p[0] for p in providers]
        missing = [n for n in names if n not in ort.get_available_providers()]
        if missing:
            from vrex_edge.runtime.engine import missing_provider_message

            raise ConfigError(missing_provider_message(missing[0], ort.get_available_providers(), ort.__version__))
        form = form or os.environ.get("VREX_ORT_CUDA_FORM") or DEFAULT_FORM
        if form not in ENGINE_FORMS:
            raise ConfigError(f"device engine: form must be one of {', '.join(ENGINE_FORMS)}, got '{form}'")
        self.device, self.providers, self.threads, self.form = device, list(providers), threads, form
        self.min_capacity = min_capacity
        self.host = NumpyEngine()  # host numpy segments (the other policies' buffers), if given
        self._sessions: dict[tuple[str, int], tuple[Any, Any]] = {}
        self._ort = ort

    def __deepcopy__(self, memo: dict) -> OrtDeviceEngine:
        return self  # a copied cache keeps its session's engine (sessions cannot be copied)

    # ------------------------------------------------------------------ sessions

    def _form(self, history: int | None) -> str:
        """The graph form of a run: the engine's, or with "auto" by the history it reads (None: not an
        attention over a contiguous history, which reads its rows the flat way)."""
        if self.form != "auto":
            return self.form
        return "flat" if history is None or history >= FLAT_FROM else "transposed"

    def _session(self, kind: str, hd: int = 0, history: int | None = None) -> tuple[Any, Any]:
        form = self._form(history)
        key = (kind, hd, form)
        if key not in self._sessions:
            ort = self._ort
            so = ort.SessionOptions()
            so.intra_op_num_threads = self.threads
            so.inter_op_num_threads = 1
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            so.log_severity_level = 3
            model = _GRAPHS[kind](hd, form)
            sess = ort.InferenceSession(model, sess_options=so, providers=self.providers)
            self._sessions[key] = (sess, sess.io_binding())
        return self._sessions[key]

    def _bind_in(self, io: Any, name: str, ptr: int, shape: Sequence[int], device: str) -> None:
        io.bind_input(name, device, 0, np.float32, list(shape), ptr)

    def _bind_out(self, io: Any, name: str, ptr: int, shape: Sequence[int], device: str) -> None:
        io.bind_output(name, device, 0, np.float32, list(shape), ptr)

    def _copy(self, src: int, src_dev: str, dst: int, dst_dev: str, shape: tuple[int, int, int]) -> None:
        """Copy a contiguous float32 [a, b, c] block between addresses (host or the engine's device)."""
        if shape[0] == 0:
            return
        sess, io = self._session("copy")
        io.clear_binding_inputs()
        io.clear_binding_outputs()
        self._bind_in(io, "x", src, shape, src_dev)
        self._bind_out(io, "y", dst, shape, dst_dev)
        sess.run_with_iobinding(io)
        io.synchronize_outputs()

    # ------------------------------------------------------------------ arenas

    def new_kv(self, kvh: int, hd: int, capacity: int | None = None, *, exact: bool = False) -> DeviceKV:
        """An arena of `capacity` tokens (at least min_capacity unless `exact`: a budgeted arena)."""
        cap = int(capacity or 0) if exact else max(capacity or 0, self.min_capacity)
        new = self._ort.OrtValue.ortvalue_from_shape_and_type
        return DeviceKV(
            new([cap, kvh, hd], np.float32, self.device, 0), new([cap, kvh, hd], np.float32, self.device, 0), kvh, hd
        )

    def reserve(self, kv: DeviceKV, need: int) -> None:
        """Room for `need` tokens; a full arena is replaced by one twice as large (device-to-device copy)."""
        if need <= kv.capacity:
            return
        big = self.new_kv(kv.kvh, kv.hd, max(need, 2 * kv.capacity))
        for src, dst in ((kv.k, big.k), (kv.v, big.v)):
            self._copy(src.data_ptr(), self.device, dst.data_ptr(), self.device, (kv.n, kv.kvh, kv.hd))
        kv.k, kv.v = big.k, big.v

    def upload(self, kv: DeviceKV, k: np.ndarray, v: np.ndarray) -> None:
        """Append k, v [KVH, m, hd] (host) to the arena without attending."""
        m = k.shape[1]
        self.reserve(kv, kv.n + m)
        self.write(kv, kv.n, np.asarray(k, np.float32).transpose(1, 0, 2), np.asarray(v, np.float32).transpose(1, 0, 2))
        kv.n += m

    def write(self, kv: DeviceKV, row: int, kt: np.ndarray, vt: np.ndarray) -> None:
        """Overwrite arena rows row .. row + m with host kt, vt [m, KVH, hd] (token-major; within kv.n
        or its capacity): one host-to-device copy each, what a KV tier streaming to the device does."""
        if row + kt.shape[0] > kv.capacity:
            raise ValueError("arena write past its capacity")
        for src, dst in ((kt, kv.k), (vt, kv.v)):
            x = np.ascontiguousarray(src, np.float32)  # [m, KVH, hd]
            self._copy(x.ctypes.data, "cpu", kv.row_ptr(dst, row), self.device, x.shape)

    def move(self, kv: DeviceKV, src: int, dst: int, m: int) -> None:
        """Copy arena rows src .. src + m to dst .. dst + m on the device (the ranges must not overlap)."""
        if abs(src - dst) < m:
            raise ValueError("arena move between overlapping rows")
        for buf in (kv.k, kv.v):
            self._copy(kv.row_ptr(buf, src), self.device, kv.row_ptr(buf, dst), self.device, (m, kv.kvh, kv.hd))

    def download(self, kv: DeviceKV) -> tuple[np.ndarray, np.ndarray]:
        """-> host copies k, v [KVH, n, hd] of the arena's tokens."""
        out = []
        for src in (kv.k, kv.v):
            x = np.empty((kv.n, kv.kvh, kv.hd), np.float32)  # [n, KVH, hd]
            self._copy(src.data_ptr(), self.device, x.ctypes.data, "cpu", x.shape)
            out.append(np.ascontiguousarray(x.transpose(1, 0, 2)))  # [KVH, n, hd]
        return out[0], out[1]

    # ------------------------------------------------------------------ attention

    def attend_append(self, q: np.ndarray, kv: DeviceKV, k_new: np.ndarray, v_new: np.ndarray) -> np.ndarray:
        """q [KVH, G, n, hd] rotated queries attend to kv's n tokens and, causally, to the chunk k_new/v_new
        [KVH, n, hd]; the chunk is then appended to kv (same graph run) -> [KVH, G, n, hd] float32."""
        kvh, g, n, hd = q.shape
        self.reserve(kv, kv.n + n)
        qs = np.ascontiguousarray((q * np.float32(1.0 / np.sqrt(hd))).reshape(kvh, g * n, hd))  # [KVH, G*n, hd]
        m, den, acc = start_with_chunk(qs, k_new, v_new, g)  # [KVH, G*n, 1] x2, [KVH, G*n, hd]
        kt = np.ascontiguousarray(np.asarray(k_new, np.float32).transpose(1, 0, 2))  # [n, KVH, hd]
        vt = np.ascontiguousarray(np.asarray(v_new, np.float32).transpose(1, 0, 2))
        if kv.n == 0:  # nothing to attend to yet: only the append
            for x, buf in ((kt, kv.k), (vt, kv.v)):
                self._copy(x.ctypes.data, "cpu", kv.row_ptr(buf, 0), self.device, x.shape)
        else:
            sess, io = self._session("attend_append", hd, kv.n)
            self._run(io, sess, qs, kv, kv.n, m, den, acc, append=(kt, vt))
        kv.n += n
        acc /= den
        return acc.reshape(kvh, g, n, hd)

    def attend(self, q: np.ndarray, segments: Sequence[Segment], k_new: Any, v_new: Any) -> np.ndarray:
        """The AttentionEngine contract. A segment is Segment(kv, kv, lens) over a DeviceKV (every head
        reading the same number of tokens, at most kv.n) or numpy [KVH, cap, hd] buffers (run on the host)."""
        kvh, g, n, hd = q.shape
        qs = np.ascontiguousarray((q * np.float32(1.0 / np.sqrt(hd))).reshape(kvh, g * n, hd))  # [KVH, G*n, hd]
        m, den, acc = start_with_chunk(qs, k_new, v_new, g)  # [KVH, G*n, 1] x2, [KVH, G*n, hd]
        for seg in segments:
            if not isinstance(seg.k, DeviceKV):
                self.host.fold(qs, seg.k, seg.v, segment_lens(seg, kvh), m, den, acc)
                continue
            kv = seg.k
            lens = np.full(kvh, kv.n, np.int64) if seg.lens is None else np.asarray(seg.lens, np.int64).reshape(kvh)
            if not (lens == lens[0]).all() or not 0 <= lens[0] <= kv.n:
                raise ValueError("a DeviceKV segment needs one length for every head, within the arena")
            if lens[0] > 0:
                sess, io = self._session("attend", hd, int(lens[0]))
                self._run(io, sess, qs, kv, int(lens[0]), m, den, acc, append=None)
        acc /= den
        return acc.reshape(kvh, g, n, hd)

    def attend_split(
        self, q: np.ndarray, kv: DeviceKV, kh: np.ndarray, vh: np.ndarray, k_new: np.ndarray, v_new: np.ndarray
    ) -> np.ndarray:
        """q [KVH, G, n, hd] attends to kv's n tokens, then kh, vh [L2, KVH, hd] (host, token-major: the
        run copies them to a device buffer first, one bulk copy each) and, causally, the chunk k_new/v_new
        [KVH, n, hd], which is not appended -> [KVH, G, n, hd] float32. One run (ort_graphs.split_attend_graph)."""
        kvh, g, n, hd = q.shape
        qs = np.ascontiguousarray((q * np.float32(1.0 / np.sqrt(hd))).reshape(kvh, g * n, hd))  # [KVH, G*n, hd]
        m, den, acc = start_with_chunk(qs, k_new, v_new, g)  # [KVH, G*n, 1] x2, [KVH, G*n, hd]
        kh, vh = np.ascontiguousarray(kh, np.float32), np.ascontiguousarray(vh, np.float32)
        parts = [(kv.k.data_ptr(), kv.v.data_ptr(), kv.n, self.device)] if kv.n else []
        if kh.shape[0]:
            parts.append((kh.ctypes.data, vh.ctypes.data, kh.shape[0], "cpu"))
        if parts:  # one part: the plain graph, bound where it lies; two: the split graph
            sess, io = self._session("attend" if len(parts) == 1 else "split", hd, kv.n + kh.shape[0])
            io.clear_binding_inputs()
            io.clear_binding_outputs()
            for (pk, pv, L, where), names in zip(parts, (("k", "v"), ("kh", "vh")), strict=False):
                self._bind_in(io, names[0], pk, (L, kvh, hd), where)
                self._bind_in(io, names[1], pv, (L, kvh, hd), where)
            self._partial(io, sess, qs, m, den, acc)
        acc /= den
        return acc.reshape(kvh, g, n, hd)

    def _partial(self, io: Any, sess: Any, qs: np.ndarray, m: np.ndarray, den: np.ndarray, acc: np.ndarray) -> None:
        """Bind q and the partial softmax outputs (host), run, merge into m, den, acc (in place)."""
        kvh, rows, hd = qs.shape
        o_acc = np.empty((kvh, rows, hd), np.float32)
        o_m, o_den = np.empty((kvh, rows, 1), np.float32), np.empty((kvh, rows, 1), np.float32)
        self._bind_in(io, "q", qs.ctypes.data, qs.shape, "cpu")
        for name, a in (("acc", o_acc), ("m", o_m), ("den", o_den)):
            self._bind_out(io, name, a.ctypes.data, a.shape, "cpu")
        sess.run_with_iobinding(io)
        io.synchronize_outputs()
        merge_partial(m, den, acc, o_m, o_den, o_acc)

    def _run(
        self,
        io: Any,
        sess: Any,
        qs: np.ndarray,
        kv: DeviceKV,
        L: int,
        m: np.ndarray,
        den: np.ndarray,
        acc: np.ndarray,
        append: tuple[np.ndarray, np.ndarray] | None,
    ) -> None:
        """One graph run over kv's first L tokens (and, with `append`, the chunk written at row L); its
        partial softmax is folded into m, den, acc (host, in place)."""
        kvh, rows, hd = qs.shape
        o_acc = np.empty((kvh, rows, hd), np.float32)  # small host outputs, [KVH, G*n, hd]
        o_m, o_den = np.empty((kvh, rows, 1), np.float32), np.empty((kvh, rows, 1), np.float32)
        io.clear_binding_inputs()
        io.clear_binding_outputs()
        self._bind_in(io, "q", qs.ctypes.data, qs.shape, "cpu")  # ORT copies it to the device
        self._bind_in(io, "k", kv.k.data_ptr(), (L, kvh, hd), self.device)  # the history, where it lies
        self._bind_in(io, "v", kv.v.data_ptr(), (L, kvh, hd), self.device)
        for name, a in (("acc", o_acc), ("m", o_m), ("den", o_den)):
            self._bind_out(io, name, a.ctypes.data, a.shape, "cpu")
        if append is not None:
            kt, vt = append  # [n, KVH, hd] host
            self._bind_in(io, "k_new", kt.ctypes.data, kt.shape, "cpu")
            self._bind_in(io, "v_new", vt.ctypes.data, vt.shape, "cpu")
            self._bind_out(io, "k_out", kv.row_ptr(kv.k, L), kt.shape, self.device)  # in place, after the history
            self._bind_out(io, "v_out", kv.row_ptr(kv.v, L), vt.shape, self.device)
        sess.run_with_iobinding(io)
        io.synchronize_outputs()
        merge_partial(m, den, acc, o_m, o_den, o_acc)
