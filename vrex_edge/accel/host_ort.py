"""The `host` retrieval backend: the NumPy reference with its cluster masses run by onnxruntime.

Scoring is the largest retrieval stage of a frame (`masses`: a [KVH, R, C] QK over every cluster
representative, then exp and a weighted normalisation; with clusters of ~1 token it is the QK of
full attention). NumPy runs it as five passes over [KVH, R, C] temporaries; one small onnxruntime
graph runs the same float32 math in fewer, fused passes, 2.4x faster at a 6K cache
(benchmarks/results/resv_defaults.md, section 4). Everything else (hashing, clustering, WiCSum,
the layout) is HostBackend's, which stays the reference (`host-numpy`) the tests compare against.

The representatives usually come as a view of the cluster table's over-allocated, transposed
buffer (`ClusterStore.means`: [KVH, hd, capacity], columns 0..C-1); its C columns are copied into one
contiguous [KVH, hd, C] block first (a row copy per head and dimension), which measured faster than
binding the whole buffer in place (the graph then scores every spare column too).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vrex_edge.accel.host import HostBackend


def masses_graph(kvh: int, hd: int, *, transposed: bool) -> bytes:
    """q [KVH, R, hd] (scaled), reps [KVH, hd, W] (transposed) or [KVH, W, hd], tc [KVH, 1, W] f32 token
    counts (0: no cluster) -> mass [KVH, 1, W] = sum over r of TC * exp(s - max s) / z_r (not yet / R)."""
    from onnx import TensorProto, helper

    f = TensorProto.FLOAT
    reps_shape = [kvh, hd, "W"] if transposed else [kvh, "W", hd]
    nodes = [] if transposed else [helper.make_node("Transpose", ["reps"], ["rt"], perm=[0, 2, 1])]
    nodes += [
        helper.make_node("MatMul", ["q", "reps" if transposed else "rt"], ["s0"]),  # [KVH, R, W]
        helper.make_node("Greater", ["tc", "zero"], ["valid"]),
        helper.make_node("Where", ["valid", "zero", "ninf"], ["bias"]),  # -inf where no cluster
        helper.make_node("Add", ["s0", "bias"], ["s"]),
        helper.make_node("ReduceMax", ["s"], ["mx"], axes=[2], keepdims=1),
        helper.make_node("Sub", ["s", "mx"], ["d"]),
        helper.make_node("Exp", ["d"], ["p"]),
        helper.make_node("Mul", ["p", "tc"], ["pw"]),  # [KVH, R, W] TC_j exp(s_j - max)
        helper.make_node("ReduceSum", ["pw", "axis"], ["z"], keepdims=1),  # [KVH, R, 1] per-query normaliser
        helper.make_node("Reciprocal", ["z"], ["iz"]),
        helper.make_node("Transpose", ["iz"], ["izt"], perm=[0, 2, 1]),  # [KVH, 1, R]
        helper.make_node("MatMul", ["izt", "pw"], ["mass"]),  # [KVH, 1, W]
    ]
    graph = helper.make_graph(
        nodes,
        "cluster_masses",
        [
            helper.make_tensor_value_info("q", f, [kvh, "R", hd]),
            helper.make_tensor_value_info("reps", f, reps_shape),
            helper.make_tensor_value_info("tc", f, [kvh, 1, "W"]),
        ],
        [helper.make_tensor_value_info("mass", f, [kvh, 1, "W"])],
        initializer=[
            helper.make_tensor("axis", TensorProto.INT64, [1], [2]),
            helper.make_tensor("zero", f, [], [0.0]),
            helper.make_tensor("ninf", f, [], [-np.inf]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


class OrtHostBackend(HostBackend):
    """HostBackend with `masses` run by onnxruntime on the CPU provider (one intra-op thread).

    One instance per policy (the session's caches share it) and one for the prefetch thread: a
    session's io binding is not shared between threads."""

    name = "host"

    def __init__(self) -> None:
        self._sessions: dict[tuple[int, int, bool], tuple[Any, Any]] = {}

    def __deepcopy__(self, memo: dict) -> OrtHostBackend:
        return self  # a copied cache keeps its backend (sessions cannot be copied)

    def _session(self, kvh: int, hd: int, transposed: bool) -> tuple[Any, Any]:
        key = (kvh, hd, transposed)
        if key not in self._sessions:
            import onnxruntime as ort

            so = ort.SessionOptions()
            so.intra_op_num_threads = 1
            so.inter_op_num_threads = 1
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            so.log_severity_level = 3
            sess = ort.InferenceSession(masses_graph(kvh, hd, transposed=transposed), so, ["CPUExecutionProvider"])
            self._sessions[key] = (sess, sess.io_binding())
        return self._sessions[key]

    def masses(self, q: np.ndarray, reps: np.ndarray, counts: np.ndarray) -> np.ndarray:
        kvh, r, hd = q.shape
        c = counts.shape[1]
        transposed = reps.strides[1] == 4 and not reps.flags.c_contiguous  # a view of [KVH, hd, capacity]
        # the transposed view's rows are contiguous: copying them is a memcpy per (head, dim), not a transpose
        table = np.ascontiguousarray(reps.swapaxes(1, 2) if transposed else reps, dtype=np.float32)
        tc = counts.astype(np.float32).reshape(kvh, 1, c)
        qs = np.ascontiguousarray(q * np.float32(1.0 / np.sqrt(hd)), dtype=np.float32)
        out = np.empty((kvh, 1, c), np.float32)
        sess, io = self._session(kvh, hd, transposed)
        for name, a in (("q", qs), ("reps", table), ("tc", tc)):
            io.bind_input(name, "cpu", 0, np.float32, list(a.shape), a.ctypes.data)
        io.bind_output("mass", "cpu", 0, np.float32, list(out.shape), out.ctypes.data)
        sess.run_with_iobinding(io)
        return out[:, 0, :] * np.float32(1.0 / r)  # [KVH, C]
