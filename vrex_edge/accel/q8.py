"""int8 cluster scoring on the host: representatives stored as int8 with one scale per cluster, the
chunk's queries quantized per row, the scores by an integer GEMM (onnxruntime's MatMulInteger).

Scoring every representative with every query of a chunk costs as much as the QK of full attention
when clusters hold ~1 token (text, and most video), so it is ReSV's largest retrieval stage. The
integer GEMM does the same product about 5x faster than NumPy's float32 GEMM on x86-64 (VNNI) and
aarch64 (dot-product instructions); the softmax-consistent masses that follow are float32 as on the
reference path. Fidelity against the float32 masses: benchmarks/results/resv_int8.md.

    vals, scale = table.current(means_t, c)         # retrieval/reps.py: [KVH, hd, c] int8, [KVH, c] f32
    mass = Int8Masses()(q, vals, scale, log_counts(counts))   # [KVH, C] f32, as HostBackend.masses

Queries use 7 bits (+-63, stored as uint8 around 64): a uint8 x int8 pair then sums to at most
2 x 127 x 63 < 2^15, so x86 kernels without VNNI (16-bit pair sums) cannot saturate.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vrex_edge.scratch import work

REP_LEVELS = 127  # int8 representatives: -127 .. 127 times their column's scale
QUERY_LEVELS = 63  # queries: -63 .. 63 (uint8 64 +- 63)
QUERY_ZERO = 64


def quantize_columns(x: np.ndarray, vals: np.ndarray, scale: np.ndarray) -> None:
    """x [hd, c] f32 -> vals [hd, c] int8 and scale [c] f32 (x ~ vals * scale, symmetric per column)."""
    np.max(np.abs(x), axis=0, out=scale)
    scale /= REP_LEVELS
    scale[scale == 0] = 1.0  # an all-zero column (padding) stays 0
    np.copyto(vals, np.rint(x / scale), casting="unsafe")


def quantize_queries(q: np.ndarray, mult: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """q [K, R, hd] f32 (times `mult`) -> a [K, R, hd] uint8 (QUERY_ZERO-centred), scale [K, R, 1] f32."""
    top = np.max(np.abs(q), axis=-1, keepdims=True)  # [K, R, 1]
    top[top == 0] = 1.0
    inv = np.float32(QUERY_LEVELS) / top
    a = np.rint(q * inv) + QUERY_ZERO  # [K, R, hd] in 1 .. 127
    return a.astype(np.uint8), (top * np.float32(mult / QUERY_LEVELS)).astype(np.float32)


def masses_graph(*, opset: int = 17) -> bytes:
    """The serialized ONNX model: a [K, R, hd] uint8, vals [K, hd, C] int8, qs [K, R, 1], bs [K, 1, C],
    logc [K, 1, C] f32 -> mass [K, C] = mean over R of softmax_C((a - 64) vals * qs * bs + logc)."""
    from onnx import TensorProto, helper

    f = TensorProto.FLOAT
    nodes = [
        helper.make_node("MatMulInteger", ["a", "vals", "az"], ["y"]),  # [K, R, C] int32
        helper.make_node("Cast", ["y"], ["yf"], to=f),
        helper.make_node("Mul", ["yf", "qs"], ["s1"]),
        helper.make_node("Mul", ["s1", "bs"], ["s2"]),
        helper.make_node("Add", ["s2", "logc"], ["s"]),  # log(TC) + q . rep / sqrt(hd)
        helper.make_node("Softmax", ["s"], ["p"], axis=-1),
        helper.make_node("ReduceMean", ["p"], ["mass"], axes=[1], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "int8_masses",
        [
            helper.make_tensor_value_info("a", TensorProto.UINT8, ["K", "R", "hd"]),
            helper.make_tensor_value_info("vals", TensorProto.INT8, ["K", "hd", "C"]),
            helper.make_tensor_value_info("qs", f, ["K", "R", 1]),
            helper.make_tensor_value_info("bs", f, ["K", 1, "C"]),
            helper.make_tensor_value_info("logc", f, ["K", 1, "C"]),
        ],
        [helper.make_tensor_value_info("mass", f, ["K", "C"])],
        initializer=[helper.make_tensor("az", TensorProto.UINT8, [], [QUERY_ZERO])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model.SerializeToString()


def dequantized_columns(x: np.ndarray) -> np.ndarray:
    """x [K, hd, c] f32 -> the int8 representatives as float32 (vals * scale): a float32 scorer given
    these and dequantized_queries computes Int8Masses' masses up to float rounding (the CUDA path)."""
    vals, scale = np.empty(x.shape, np.int8), np.empty((x.shape[0], x.shape[2]), np.float32)
    for h in range(x.shape[0]):
        quantize_columns(x[h], vals[h], scale[h])
    return vals.astype(np.float32) * scale[:, None, :]


def dequantized_queries(q: np.ndarray) -> np.ndarray:
    """q [K, R, hd] f32 -> the 7-bit queries Int8Masses scores with, as float32."""
    a, qs = quantize_queries(q)
    return (a.astype(np.float32) - QUERY_ZERO) * qs


class Int8Masses:
    """The masses of int8 representatives on onnxruntime's CPU provider (one intra-op thread: the
    runtime's other kernels run beside it). Thread-safe (onnxruntime's run is)."""

    def __init__(self) -> None:
        self._sess: Any = None

    def __deepcopy__(self, memo: dict) -> Int8Masses:
        return self  # a copied cache keeps its backend's kernel (sessions cannot be copied)

    def _session(self) -> Any:
        if self._sess is None:
            import onnxruntime as ort

            so = ort.SessionOptions()
            so.intra_op_num_threads = 1
            so.inter_op_num_threads = 1
            self._sess = ort.InferenceSession(masses_graph(), so, providers=["CPUExecutionProvider"])
        return self._sess

    def __call__(self, q: np.ndarray, vals: np.ndarray, scale: np.ndarray, logc: np.ndarray) -> np.ndarray:
        """q [K, R, hd] f32, vals [K, hd, C] int8, scale [K, C] f32, logc [K, C] = log_counts(counts) -> mass
        [K, C] f32 (sums to 1 per head with a cluster; a cluster of count 0 weighs 0, a head with none NaN)."""
        hd = q.shape[-1]
        a, qs = quantize_queries(q, 1.0 / np.sqrt(hd))
        feed = {"a": a, "vals": vals, "qs": qs, "bs": scale[:, None, :], "logc": logc[:, None, :]}
        return self._session().run(["mass"], feed)[0]


def log_counts(counts: np.ndarray) -> np.ndarray:
    """counts [K, C] -> log(counts) f32, -inf where 0 (a work array)."""
    out = work("q8.logc", counts.shape, np.float32)
    np.copyto(out, counts, casting="unsafe")
    with np.errstate(divide="ignore"):
        np.log(out, out=out)
    return out


def masses_reference(q: np.ndarray, vals: np.ndarray, scale: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The same masses as Int8Masses in NumPy: exact integer products, float64 after (the tests' oracle)."""
    hd = q.shape[-1]
    a, qs = quantize_queries(q, 1.0 / np.sqrt(hd))
    y = np.matmul(a.astype(np.int64) - QUERY_ZERO, vals.astype(np.int64))  # [K, R, C] exact
    with np.errstate(divide="ignore"):
        s = y * qs.astype(np.float64) * scale[:, None, :].astype(np.float64) + np.log(counts[:, None, :])
    s -= s.max(-1, keepdims=True)
    p = np.exp(s)
    mass = (p / p.sum(-1, keepdims=True)).mean(1)
    mass[counts <= 0] = 0
    return mass.astype(np.float32)
