"""Exact chunk attention with onnxruntime: one small ONNX graph per KV head over its history.

The graph (built in-process) is q [M, hd] (scaled) x k, v [L, hd] -> acc = exp(q k^T - m) v,
m = rowmax(q k^T), den = rowsum(exp(q k^T - m)): a partial softmax that the host folds into the
chunk's own (causal, computed in numpy: it is n x n) with a log-sum-exp merge. Inputs are bound by
pointer (IOBinding), so a head's contiguous [L, hd] run in a [KVH, cap, hd] buffer is read where
it lies: no copy of the history. Outputs go to preallocated numpy arrays. A device variant
is this class with the CUDA provider and `device = "cuda"`: k/v are then device OrtValues bound by
address, while q and the partial outputs (a few KB per head) stay host arrays that ORT copies.
Not run on a GPU yet.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from vrex_edge.runtime.kernels.numpy_engine import NumpyEngine, merge_partial, start_with_chunk
from vrex_edge.runtime.kernels.segments import Segment, segment_lens


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


class OrtEngine:
    """onnxruntime on the CPU provider (`threads` intra-op threads). Not thread-safe."""

    name = "ort-cpu"
    device = "cpu"  # where bound inputs live (a CUDA engine binds device pointers instead)

    def __init__(
        self, *, threads: int = 1, providers: Sequence[str] = ("CPUExecutionProvider",), numpy_below: int = 1024
    ):
        """numpy_below: head runs shorter than this go through the numpy kernel (a graph run costs
        ~40 us; at 1K tokens the two engines are even, benchmarks/results/attention.md)."""
        self.threads, self.providers, self.numpy_below = threads, list(providers), numpy_below
        self.host = NumpyEngine()
        self._heads: dict[int, tuple[Any, Any]] = {}  # hd -> (session, its io binding)
        self._out: tuple[tuple[int, int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None

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
        o_acc, o_m, o_den = self._outputs(io, g * n, hd)  # [G*n, hd], [G*n, 1], [G*n, 1]
        for seg in segments:
            lens = segment_lens(seg, kvh)  # [KVH]
            if (lens < self.numpy_below).all():
                self.host.fold(qs, seg.k, seg.v, lens, m, den, acc)
                continue
            for h in range(kvh):
                if lens[h] == 0:
                    continue
                if lens[h] < self.numpy_below:
                    hs = slice(h, h + 1)
                    self.host.scan(qs[hs], seg.k[hs], seg.v[hs], 0, int(lens[h]), m[hs], den[hs], acc[hs])
                    continue
                self._bind(io, "q", qs[h].ctypes.data, (g * n, hd), "cpu")  # small: ORT copies it where needed
                self._bind(io, "k", _head_ptr(seg.k, h), (int(lens[h]), hd), self.device)  # read where it lies
                self._bind(io, "v", _head_ptr(seg.v, h), (int(lens[h]), hd), self.device)
                sess.run_with_iobinding(io)
                merge_partial(m[h], den[h], acc[h], o_m, o_den, o_acc)
        acc /= den
        return acc.reshape(kvh, g, n, hd)

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
