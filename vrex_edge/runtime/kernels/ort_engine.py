"""Exact chunk attention with onnxruntime: one small ONNX graph per KV head over its history.

The graph (built in-process) is q [M, hd] (scaled) x k, v [L, hd] -> acc = exp(q k^T - m) v,
m = rowmax(q k^T), den = rowsum(exp(q k^T - m)): a partial softmax that the host folds into the
chunk's own (causal, computed in numpy: it is n x n) with a log-sum-exp merge. Inputs are bound by
pointer (IOBinding), so a head's contiguous [L, hd] run in a [KVH, cap, hd] buffer is read where
it lies: no copy of the history. Outputs go to preallocated numpy arrays.

With `lanes` > 1 a call's graph runs go out on that many threads at once (runtime/lanes.py: the calling
thread and lanes - 1 workers; onnxruntime releases the GIL while it runs), each with its own IO binding: every
head is a run, and a head's history of at least `split_from` rows is cut into `lanes` pieces whose
partial softmaxes merge like segments. Each run keeps one intra-op thread; the lanes put the other
cores on long histories, where one core was the bound (benchmarks/results/attention.md). Merges go in
a fixed order, so the result does not depend on which lane finished first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from vrex_edge.runtime.kernels.numpy_engine import NumpyEngine, merge_partial, start_with_chunk
from vrex_edge.runtime.kernels.segments import Segment, segment_lens
from vrex_edge.runtime.lanes import Lanes, even_cuts


def partial_softmax_graph(hd: int, *, opset: int = 17) -> bytes:
    """The serialized ONNX model: q [M, hd], k [L, hd], v [L, hd] -> acc [M, hd], m [M, 1], den [M, 1]."""
    from onnx import TensorProto, helper

    f = TensorProto.FLOAT
    nodes = [
        helper.make_node("Transpose", ["k"], ["kt"], perm=[1, 0]),
        helper.make_node("MatMul", ["q", "kt"], ["s"]),  # [M, L]; fused to FusedMatMul(transB) by ORT
        helper.make_node("ReduceMax", ["s"], ["m"], axes=[1], keepdims=1)
        if opset < 18
        else helper.make_node("ReduceMax", ["s", "ax"], ["m"], keepdims=1),
        helper.make_node("Sub", ["s", "m"], ["d"]),
        helper.make_node("Exp", ["d"], ["p"]),
        helper.make_node("ReduceSum", ["p", "ax"], ["den"], keepdims=1),
        helper.make_node("MatMul", ["p", "v"], ["acc"]),
    ]
    graph = helper.make_graph(
        nodes,
        "partial_softmax",
        [
            helper.make_tensor_value_info("q", f, ["M", hd]),
            helper.make_tensor_value_info("k", f, ["L", hd]),
            helper.make_tensor_value_info("v", f, ["L", hd]),
        ],
        [
            helper.make_tensor_value_info("acc", f, ["M", hd]),
            helper.make_tensor_value_info("m", f, ["M", 1]),
            helper.make_tensor_value_info("den", f, ["M", 1]),
        ],
        initializer=[helper.make_tensor("ax", TensorProto.INT64, [1], [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model.SerializeToString()


Run = tuple[int, int, int, int]  # (head, k address, v address, rows): one graph run of a call


class OrtEngine:
    """onnxruntime on the CPU provider (`threads` intra-op threads per run, `lanes` runs at once).
    Not thread-safe: one caller at a time."""

    name = "ort-cpu"
    device = "cpu"  # where bound inputs live (a CUDA engine binds device pointers instead)

    def __init__(
        self,
        *,
        threads: int = 1,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        numpy_below: int = 1024,
        lanes: int | Lanes = 1,
        split_from: int = 4096,
        parallel_from: int = 4096,
    ):
        """numpy_below: head runs shorter than this go through the numpy kernel (a graph run costs
        ~40 us; at 1K tokens the two engines are even, benchmarks/results/attention.md).
        lanes: graph runs at once (a count, or Lanes to share); split_from: a head run of at least this
        many rows is cut into one piece per lane; parallel_from: a call's runs use the lanes when they
        hold at least this many rows in all (below it a thread hand-off costs more than it saves)."""
        self.threads, self.providers, self.numpy_below = threads, list(providers), numpy_below
        self.lanes = lanes if isinstance(lanes, Lanes) else Lanes(lanes)
        self.split_from, self.parallel_from = split_from, parallel_from
        self.host = NumpyEngine()
        self._heads: dict[int, tuple[Any, Any]] = {}  # hd -> (session, its io binding)
        self._out: tuple[tuple[int, int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None
        self._lane_io: dict[int, list[Any]] = {}  # hd -> one io binding per lane

    def __deepcopy__(self, memo: dict) -> OrtEngine:
        return self  # a copied cache keeps its session's engine (sessions cannot be copied)

    def _session(self, hd: int) -> tuple[Any, Any]:
        if hd not in self._heads:
            import onnxruntime as ort

            so = ort.SessionOptions()
            so.intra_op_num_threads = self.threads
            so.inter_op_num_threads = 1
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            so.log_severity_level = 3
            sess = ort.InferenceSession(partial_softmax_graph(hd), sess_options=so, providers=self.providers)
            self._heads[hd] = (sess, sess.io_binding())
        return self._heads[hd]

    def attend(self, q: np.ndarray, segments: Sequence[Segment], k_new: np.ndarray, v_new: np.ndarray) -> np.ndarray:
        """Same contract as NumpyEngine.attend. Segment buffers: numpy arrays whose heads' rows are contiguous,
        or OrtValues in the provider's memory (then every head run must reach `numpy_below`, or set it to 1)."""
        kvh, g, n, hd = q.shape
        sess, io = self._session(hd)
        qs = np.ascontiguousarray((q * np.float32(1.0 / np.sqrt(hd))).reshape(kvh, g * n, hd))  # [KVH, G*n, hd]
        m, den, acc = start_with_chunk(qs, k_new, v_new, g)  # [KVH, G*n, 1] x2, [KVH, G*n, hd]
        runs = self._plan(qs, segments, m, den, acc)
        if self.lanes.n > 1 and self.device == "cpu" and sum(r[3] for r in runs) >= self.parallel_from:
            self._run_lanes(sess, qs, runs, m, den, acc)
        else:
            o_acc, o_m, o_den = self._outputs(io, g * n, hd)  # [G*n, hd], [G*n, 1], [G*n, 1]
            for h, kp, vp, rows in runs:
                self._bind_run(io, qs[h], kp, vp, rows)
                sess.run_with_iobinding(io)
                merge_partial(m[h], den[h], acc[h], o_m, o_den, o_acc)
        acc /= den
        return acc.reshape(kvh, g, n, hd)

    def _plan(self, qs: np.ndarray, segments: Sequence[Segment], m, den, acc) -> list[Run]:
        """Fold the head runs shorter than numpy_below into m, den, acc with the numpy kernel -> the graph
        runs left, in merge order (a long run cut into `lanes` pieces when lanes > 1)."""
        kvh, _, hd = qs.shape
        runs: list[Run] = []
        for seg in segments:
            lens = segment_lens(seg, kvh)  # [KVH]
            if (lens < self.numpy_below).all():
                self.host.fold(qs, seg.k, seg.v, lens, m, den, acc)
                continue
            for h in range(kvh):
                rows = int(lens[h])
                if rows == 0:
                    continue
                if rows < self.numpy_below:
                    hs = slice(h, h + 1)
                    self.host.scan(qs[hs], seg.k[hs], seg.v[hs], 0, rows, m[hs], den[hs], acc[hs])
                    continue
                kp, vp = _head_ptr(seg.k, h), _head_ptr(seg.v, h)  # read where it lies
                cuts = even_cuts(rows, self.lanes.n if rows >= self.split_from else 1)
                runs += [(h, kp + a * hd * 4, vp + a * hd * 4, b - a) for a, b in cuts]
        return runs

    def _run_lanes(self, sess: Any, qs: np.ndarray, runs: list[Run], m, den, acc) -> None:
        """The runs on the lanes (each lane with its own IO binding), then merged in order."""
        rows, hd = qs.shape[1:]
        out_acc = np.empty((len(runs), rows, hd), np.float32)
        out_m = np.empty((len(runs), rows, 1), np.float32)
        out_den = np.empty((len(runs), rows, 1), np.float32)
        ios = self._lane_io.setdefault(hd, [sess.io_binding() for _ in range(self.lanes.n)])
        used = min(self.lanes.n, len(runs))

        def one(j: int) -> None:  # run j goes to lane j % used (Lanes.map), so that lane's binding is free
            io = ios[j % used]
            h, kp, vp, n = runs[j]
            self._bind_run(io, qs[h], kp, vp, n)
            for name, a in (("acc", out_acc[j]), ("m", out_m[j]), ("den", out_den[j])):
                io.bind_output(name, "cpu", 0, np.float32, list(a.shape), a.ctypes.data)
            sess.run_with_iobinding(io)

        self.lanes.map(one, range(len(runs)))
        for j, (h, *_) in enumerate(runs):
            merge_partial(m[h], den[h], acc[h], out_m[j], out_den[j], out_acc[j])

    def _bind_run(self, io: Any, q: np.ndarray, kp: int, vp: int, rows: int) -> None:
        hd = q.shape[1]
        self._bind(io, "q", q.ctypes.data, q.shape, "cpu")  # small: ORT copies it where needed
        self._bind(io, "k", kp, (rows, hd), self.device)
        self._bind(io, "v", vp, (rows, hd), self.device)

    def _bind(self, io: Any, name: str, ptr: int, shape: tuple[int, int], device: str) -> None:
        io.bind_input(name, device, 0, np.float32, list(shape), ptr)

    def _outputs(self, io: Any, rows: int, hd: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Preallocated outputs [rows, hd], [rows, 1], [rows, 1], bound to `io` (rebound when the shape changes)."""
        key = (rows, hd, id(io))
        if self._out is None or self._out[0] != key:
            out = (np.empty((rows, hd), np.float32), np.empty((rows, 1), np.float32), np.empty((rows, 1), np.float32))
            for name, a in zip(("acc", "m", "den"), out, strict=True):  # host arrays (small) on any provider
                io.bind_output(name, "cpu", 0, np.float32, list(a.shape), a.ctypes.data)
            self._out = (key, out)
        return self._out[1]


def _head_ptr(buf: Any, h: int) -> int:
    """Address of head h's first token in a [KVH, cap, hd] float32 buffer: a numpy array (or view) whose
    heads' rows are contiguous, or an OrtValue (host or device memory, C-contiguous)."""
    if isinstance(buf, np.ndarray):
        x = buf[h]  # [cap, hd]
        assert x.dtype == np.float32 and x.strides == (4 * x.shape[1], 4), "a head's KV rows must be contiguous f32"
        return x.ctypes.data
    kvh, cap, hd = buf.shape()  # an OrtValue
    return buf.data_ptr() + h * cap * hd * 4
