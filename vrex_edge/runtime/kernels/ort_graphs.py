"""The ONNX graphs the device engine (ort_cuda.py) runs: partial-softmax attention over a token-major
history (contiguous, split between device and host, or gathered by index, also from a slot arena the
same run writes), the softmax-consistent cluster masses of ReSV, and a copy.

Every graph is float32, opset 17, with symbolic sizes, so one session per (graph, head_dim) serves
every history length. Attention graphs return the partial softmax of their rows (acc unnormalised,
m the row max, den the row sum), which the engine merges on the host with the chunk's causal block.
"""

from __future__ import annotations

from typing import Any

_OPSET = 17


def _model(nodes: list, name: str, inputs: list, outputs: list, initializer: list | None = None) -> bytes:
    from onnx import helper

    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=initializer or [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)])
    model.ir_version = 8
    return model.SerializeToString()


def _softmax_tail(s: str, *, rowwise: bool = True) -> list[Any]:
    """Nodes from scores `s` [K, M, L] and values `vt` [K, L, hd] to acc [K, M, hd], m, den [K, M, 1].

    rowwise (every graph but form "transposed", kept as measured first): LogSoftmax, onnxruntime's own
    row kernel, instead of ReduceMax, which went to cuDNN's reduction (3 ms over [3, 30, 40K] on an H200,
    benchmarks/results/gpu.md); then p = exp(s - lse), den = sum p, and m = lse recovered as the
    p-weighted mean of s - LogSoftmax(s) (constant along a row; padded columns, s = -1e30, weigh 0)."""
    from onnx import helper

    if not rowwise:
        return [
            helper.make_node("ReduceMax", [s], ["m"], axes=[2], keepdims=1),  # [K, M, 1]
            helper.make_node("Sub", [s, "m"], ["d"]),
            helper.make_node("Exp", ["d"], ["p"]),
            helper.make_node("ReduceSum", ["p", "ax2"], ["den"], keepdims=1),  # [K, M, 1]
            helper.make_node("MatMul", ["p", "vt"], ["acc"]),  # [K, M, hd]
        ]
    return [
        helper.make_node("LogSoftmax", [s], ["ls"], axis=2),
        helper.make_node("Exp", ["ls"], ["p"]),  # [K, M, L]
        helper.make_node("ReduceSum", ["p", "ax2"], ["den"], keepdims=1),  # [K, M, 1], 1 up to rounding
        helper.make_node("Sub", [s, "ls"], ["lse_each"]),
        helper.make_node("Mul", ["lse_each", "p"], ["lse_w"]),
        helper.make_node("ReduceSum", ["lse_w", "ax2"], ["lse_sum"], keepdims=1),
        helper.make_node("Div", ["lse_sum", "den"], ["m"]),
        helper.make_node("MatMul", ["p", "vt"], ["acc"]),  # [K, M, hd]
    ]


def _append_io(hd: int) -> tuple[list, list, list]:
    """The in-place append of a chunk: k_new, v_new [n, K, hd] -> k_out, v_out (bound where it goes)."""
    from onnx import TensorProto, helper

    f = TensorProto.FLOAT
    nodes = [helper.make_node("Identity", ["k_new"], ["k_out"]), helper.make_node("Identity", ["v_new"], ["v_out"])]
    inputs = [helper.make_tensor_value_info(n, f, ["n", "K", hd]) for n in ("k_new", "v_new")]
    outputs = [helper.make_tensor_value_info(n, f, ["n", "K", hd]) for n in ("k_out", "v_out")]
    return nodes, inputs, outputs


def _partial_outputs(hd: int) -> list:
    from onnx import TensorProto, helper

    f = TensorProto.FLOAT
    return [
        helper.make_tensor_value_info("acc", f, ["K", "M", hd]),
        helper.make_tensor_value_info("m", f, ["K", "M", 1]),
        helper.make_tensor_value_info("den", f, ["K", "M", 1]),
    ]


def _ax2() -> Any:
    from onnx import TensorProto, helper

    return helper.make_tensor("ax2", TensorProto.INT64, [1], [2])


FORMS = ("flat", "transposed")


def _history_attention(k: str, v: str, hd: int, form: str) -> tuple[list[Any], list[Any]]:
    """Nodes and initializers: q [K, M, hd] over k, v [L, K, hd] -> acc, m, den (partial softmax)."""
    from onnx import helper

    if form not in FORMS:
        raise ValueError(f"attention graph form must be one of {FORMS}, got '{form}'")
    if form == "flat":
        return _flat_nodes("q", k, v, hd), _flat_inits(hd)
    nodes = [
        helper.make_node("Transpose", [k], ["kt"], perm=[1, 2, 0]),  # [K, hd, L]
        helper.make_node("MatMul", ["q", "kt"], ["s"]),  # [K, M, L]
        helper.make_node("Transpose", [v], ["vt"], perm=[1, 0, 2]),  # [K, L, hd]
        *_softmax_tail("s", rowwise=False),
    ]
    return nodes, [_ax2()]


def attend_graph(hd: int, *, append: bool, form: str = "flat") -> bytes:
    """q [K, M, hd], k, v [L, K, hd] (token-major history) -> acc [K, M, hd], m, den [K, M, 1]; with
    `append` also k_new, v_new [n, K, hd] -> k_out, v_out (Identity: bound where the chunk goes).
    form: how the history is read (FORMS; benchmarks/results/gpu.md measures them)."""
    from onnx import TensorProto, helper

    f = TensorProto.FLOAT
    nodes, inits = _history_attention("k", "v", hd, form)
    inputs = [
        helper.make_tensor_value_info("q", f, ["K", "M", hd]),
        helper.make_tensor_value_info("k", f, ["L", "K", hd]),
        helper.make_tensor_value_info("v", f, ["L", "K", hd]),
    ]
    outputs = _partial_outputs(hd)
    if append:
        n2, i2, o2 = _append_io(hd)
        nodes, inputs, outputs = nodes + n2, inputs + i2, outputs + o2
    return _model(nodes, "device_partial_softmax", inputs, outputs, inits)


def _flat_nodes(q: str, k: str, v: str, hd: int) -> list[Any]:
    """Partial softmax of q [K, M, hd] over a token-major history k, v [L, K, hd], without the two kernels
    that took the first graph's time (benchmarks/results/gpu.md: at 40K tokens on an H200, 3.0 of its
    4.6 ms were cuDNN's ReduceMax over the scores, 1.5 ms a batched GEMM of p and v without split-K).

    Every head's queries score every head's keys in one GEMM, [L, K*hd] x [K*hd, K*M], the queries laid
    block-diagonally (zeros off their own head); the scores' [K*M, L] transpose goes through LogSoftmax
    (onnxruntime's own row kernel), so m is each row's log-sum-exp, p = exp(s - m) and den = sum p (1 up
    to rounding); p v is one plain GEMM [K*M, L] x [L, K*hd]; each head's own block is then summed out of
    [K, M, K, hd] by a 0/1 mask -> acc [K, M, hd], m, den [K, M, 1], merged like any partial softmax.
    Needs the initializers of _flat_inits(hd)."""
    from onnx import TensorProto, helper

    node = helper.make_node
    return [
        node("Shape", [q], ["f_qs"]),
        node("Slice", ["f_qs", "f_i0", "f_i1"], ["f_K"]),  # [1] = K
        node("Slice", ["f_qs", "f_i1", "f_i2"], ["f_M"]),  # [1] = M
        node("Concat", ["f_K", "f_K"], ["f_KK"], axis=0),
        node("ConstantOfShape", ["f_KK"], ["f_zkk"], value=helper.make_tensor("f_z", TensorProto.FLOAT, [1], [0.0])),
        node("EyeLike", ["f_zkk"], ["f_eye"]),  # [K, K]
        node("Concat", ["f_K", "f_i1", "f_K", "f_i1"], ["f_e4s"], axis=0),
        node("Reshape", ["f_eye", "f_e4s"], ["f_eye4"]),  # [K, 1, K, 1]
        node("Reshape", [k, "f_flat"], ["f_k2"]),  # [L, K*hd]: a view of the history
        node("Reshape", [v, "f_flat"], ["f_v2"]),
        node("Transpose", [q], ["f_qt"], perm=[0, 2, 1]),  # [K, hd, M] (small)
        node("Unsqueeze", ["f_qt", "f_ax2"], ["f_q4"]),  # [K, hd, 1, M]
        node("Mul", ["f_q4", "f_eye4"], ["f_qb"]),  # [K, hd, K, M]: zero off each head's block
        node("Mul", ["f_K", "f_hd"], ["f_Kd"]),
        node("Mul", ["f_K", "f_M"], ["f_KM"]),
        node("Concat", ["f_Kd", "f_KM"], ["f_qbs"], axis=0),
        node("Reshape", ["f_qb", "f_qbs"], ["f_qbd"]),  # [K*hd, K*M]
        node("MatMul", ["f_k2", "f_qbd"], ["f_st"]),  # [L, K*M]
        node("Transpose", ["f_st"], ["f_s"], perm=[1, 0]),  # [K*M, L]
        node("LogSoftmax", ["f_s"], ["f_ls"], axis=1),  # s - logsumexp(s), per row
        node("Exp", ["f_ls"], ["f_p"]),
        node("ReduceSum", ["f_p", "f_i1"], ["f_den"], keepdims=1),  # [K*M, 1]
        node("Slice", ["f_s", "f_i0", "f_i1", "f_i1"], ["f_s0"]),  # [K*M, 1]: any column gives the lse
        node("Slice", ["f_ls", "f_i0", "f_i1", "f_i1"], ["f_ls0"]),
        node("Sub", ["f_s0", "f_ls0"], ["f_lse"]),
        node("MatMul", ["f_p", "f_v2"], ["f_acc2"]),  # [K*M, K*hd]
        node("Concat", ["f_K", "f_M", "f_K", "f_hd"], ["f_a4s"], axis=0),
        node("Reshape", ["f_acc2", "f_a4s"], ["f_acc4"]),  # [K, M, K, hd]
        node("Mul", ["f_acc4", "f_eye4"], ["f_accm"]),
        node("ReduceSum", ["f_accm", "f_ax2"], ["acc"], keepdims=0),  # [K, M, hd]
        node("Concat", ["f_K", "f_M", "f_i1"], ["f_cs"], axis=0),
        node("Reshape", ["f_lse", "f_cs"], ["m"]),  # [K, M, 1]
        node("Reshape", ["f_den", "f_cs"], ["den"]),
    ]


def _flat_inits(hd: int) -> list[Any]:
    from onnx import TensorProto, helper

    i64 = TensorProto.INT64
    return [
        helper.make_tensor("f_i0", i64, [1], [0]),
        helper.make_tensor("f_i1", i64, [1], [1]),
        helper.make_tensor("f_i2", i64, [1], [2]),
        helper.make_tensor("f_ax2", i64, [1], [2]),
        helper.make_tensor("f_hd", i64, [1], [hd]),
        helper.make_tensor("f_flat", i64, [2], [0, -1]),  # [L, K, hd] -> [L, K*hd]
    ]


def gather_attend_graph(hd: int, *, append: bool) -> bytes:
    """q [K, M, hd]; k, v [T, hd] (a token-major arena seen as rows token * K + head); idx [K, S] int64
    rows of each head's attended tokens; bias [K, 1, S] (0, or a large negative past a head's length)
    -> acc [K, M, hd], m, den [K, M, 1]; with `append` the chunk's in-place write as in attend_graph."""
    from onnx import TensorProto, helper

    f = TensorProto.FLOAT
    nodes = [
        helper.make_node("Gather", ["k", "idx"], ["kg"], axis=0),  # [K, S, hd]
        helper.make_node("Gather", ["v", "idx"], ["vt"], axis=0),  # [K, S, hd]
        helper.make_node("Transpose", ["kg"], ["kt"], perm=[0, 2, 1]),  # [K, hd, S]
        helper.make_node("MatMul", ["q", "kt"], ["s0"]),  # [K, M, S]
        helper.make_node("Add", ["s0", "bias"], ["s"]),
        *_softmax_tail("s"),
    ]
    inputs = [
        helper.make_tensor_value_info("q", f, ["K", "M", hd]),
        helper.make_tensor_value_info("k", f, ["T", hd]),
        helper.make_tensor_value_info("v", f, ["T", hd]),
        helper.make_tensor_value_info("idx", TensorProto.INT64, ["K", "S"]),
        helper.make_tensor_value_info("bias", f, ["K", 1, "S"]),
    ]
    outputs = _partial_outputs(hd)
    if append:
        n2, i2, o2 = _append_io(hd)
        nodes, inputs, outputs = nodes + n2, inputs + i2, outputs + o2
    return _model(nodes, "device_gather_partial_softmax", inputs, outputs, [_ax2()])


def split_attend_graph(hd: int, form: str = "flat") -> bytes:
    """attend_graph over a history in two parts: k, v [L1, K, hd] (bound on the device) then kh, vh
    [L2, K, hd] (bound in host memory: onnxruntime copies them to a device buffer before the run, what
    an offloaded cache streams per layer) -> acc [K, M, hd], m, den [K, M, 1]."""
    from onnx import TensorProto, helper

    f = TensorProto.FLOAT
    nodes = [
        helper.make_node("Concat", ["k", "kh"], ["ka"], axis=0),  # [L, K, hd]
        helper.make_node("Concat", ["v", "vh"], ["va"], axis=0),
    ]
    attn, inits = _history_attention("ka", "va", hd, form)
    nodes += attn
    inputs = [
        helper.make_tensor_value_info("q", f, ["K", "M", hd]),
        helper.make_tensor_value_info("k", f, ["L1", "K", hd]),
        helper.make_tensor_value_info("v", f, ["L1", "K", hd]),
        helper.make_tensor_value_info("kh", f, ["L2", "K", hd]),
        helper.make_tensor_value_info("vh", f, ["L2", "K", hd]),
    ]
    return _model(nodes, "device_split_partial_softmax", inputs, _partial_outputs(hd), inits)


def slots_attend_graph(hd: int) -> bytes:
    """Attention over rows of a slot arena that the same run writes first (the KV tiers on the device).

    k, v [T, hd]: the arena as rows slot * K + head; put [P, 1] int64 arena rows and put_k, put_v [P, hd]
    (host): written into the arena first (ScatterND, whose outputs k_out, v_out are bound at the arena
    itself, so the write is in place); idx [K, S] int64 the arena rows each head attends to, read after
    the write; xk, xv [K, X, hd] (host) rows attended but not kept in the arena; bias [K, 1, S + X] (0,
    or a large negative for padding); q [K, M, hd] -> acc [K, M, hd], m, den [K, M, 1], k_out, v_out."""
    from onnx import TensorProto, helper

    f, i64 = TensorProto.FLOAT, TensorProto.INT64
    nodes = [
        helper.make_node("ScatterND", ["k", "put", "put_k"], ["k_out"]),  # [T, hd], in place
        helper.make_node("ScatterND", ["v", "put", "put_v"], ["v_out"]),
        helper.make_node("Gather", ["k_out", "idx"], ["kg"], axis=0),  # [K, S, hd]
        helper.make_node("Gather", ["v_out", "idx"], ["vg"], axis=0),
        helper.make_node("Concat", ["kg", "xk"], ["ka"], axis=1),  # [K, S + X, hd]
        helper.make_node("Concat", ["vg", "xv"], ["vt"], axis=1),
        helper.make_node("Transpose", ["ka"], ["kt"], perm=[0, 2, 1]),  # [K, hd, S + X]
        helper.make_node("MatMul", ["q", "kt"], ["s0"]),  # [K, M, S + X]
        helper.make_node("Add", ["s0", "bias"], ["s"]),
        *_softmax_tail("s"),
    ]
    inputs = [
        helper.make_tensor_value_info("q", f, ["K", "M", hd]),
        helper.make_tensor_value_info("k", f, ["T", hd]),
        helper.make_tensor_value_info("v", f, ["T", hd]),
        helper.make_tensor_value_info("put", i64, ["P", 1]),
        helper.make_tensor_value_info("put_k", f, ["P", hd]),
        helper.make_tensor_value_info("put_v", f, ["P", hd]),
        helper.make_tensor_value_info("idx", i64, ["K", "S"]),
        helper.make_tensor_value_info("xk", f, ["K", "X", hd]),
        helper.make_tensor_value_info("xv", f, ["K", "X", hd]),
        helper.make_tensor_value_info("bias", f, ["K", 1, "SX"]),
    ]
    outputs = [
        *_partial_outputs(hd),
        helper.make_tensor_value_info("k_out", f, ["T", hd]),
        helper.make_tensor_value_info("v_out", f, ["T", hd]),
    ]
    return _model(nodes, "device_slots_partial_softmax", inputs, outputs, [_ax2()])


def _masses_nodes(form: str) -> list[Any]:
    """q, old, new -> mass [K, C] and tc3 [K, 1, C] (counts), new_out (see masses_graph). Form "flat"
    normalises with Softmax over s + log(count) (onnxruntime's row kernel); "transposed" as first
    written, with ReduceMax (cuDNN's reduction, slow over long rows: benchmarks/results/gpu.md)."""
    from onnx import TensorProto, helper

    node = helper.make_node
    head = [
        node("Identity", ["new"], ["new_out"]),
        node("Concat", ["old", "new"], ["t"], axis=0),  # [c, K, hd + 1]
        node("Slice", ["t", "zero_i", "hd_i", "ax2"], ["reps"]),  # [c, K, hd]
        node("Slice", ["t", "hd_i", "hd1_i", "ax2"], ["cnt"]),  # [c, K, 1]
        node("Transpose", ["reps"], ["rt"], perm=[1, 2, 0]),  # [K, hd, c]
        node("MatMul", ["q", "rt"], ["sc"]),  # [K, R, c]
        node("Transpose", ["cnt"], ["tc3"], perm=[1, 2, 0]),  # [K, 1, c]
        node("Greater", ["tc3", "zero"], ["valid"]),
        node("Shape", ["q"], ["qshape"]),
        node("Gather", ["qshape", "one"], ["r_i"], axis=0),
        node("Cast", ["r_i"], ["rows"], to=TensorProto.FLOAT),
    ]
    if form == "flat":
        return [
            *head,
            node("Log", ["tc3"], ["logc"]),  # -inf where there is no cluster
            node("Add", ["sc", "logc"], ["sl"]),
            node("Where", ["valid", "sl", "neginf"], ["sv"]),
            node("Softmax", ["sv"], ["pn"], axis=2),  # [K, R, c]: count * exp(s) / its sum over c
            node("Slice", ["qshape", "zero_i", "one_i"], ["m_k"]),
            node("Slice", ["qshape", "one_i", "two_i"], ["m_r"]),
            node("Concat", ["m_k", "one_i", "m_r"], ["wshape"], axis=0),
            node(
                "ConstantOfShape", ["wshape"], ["w_ones"], value=helper.make_tensor("o1", TensorProto.FLOAT, [1], [1.0])
            ),
            node("Div", ["w_ones", "rows"], ["w"]),  # [K, 1, R] of 1 / R
            node("MatMul", ["w", "pn"], ["m3"]),  # [K, 1, c]: the mean over the R queries
            node("Squeeze", ["m3", "ax1"], ["mass"]),  # [K, c]
        ]
    return [
        *head,
        node("Transpose", ["cnt"], ["tcc"], perm=[1, 0, 2]),  # [K, c, 1]
        node("Where", ["valid", "sc", "neginf"], ["sv"]),
        node("ReduceMax", ["sv"], ["mx"], axes=[2], keepdims=1),  # [K, R, 1]
        node("Sub", ["sv", "mx"], ["dm"]),
        node("Exp", ["dm"], ["pm"]),  # [K, R, c]
        node("MatMul", ["pm", "tcc"], ["z"]),  # [K, R, 1] per-query normaliser
        node("Reciprocal", ["z"], ["iz"]),
        node("Div", ["iz", "rows"], ["w0"]),  # / R
        node("Transpose", ["w0"], ["w"], perm=[0, 2, 1]),  # [K, 1, R]
        node("MatMul", ["w", "pm"], ["mp"]),  # [K, 1, c]
        node("Mul", ["mp", "tc3"], ["m3"]),
        node("Squeeze", ["m3", "ax1"], ["mass"]),  # [K, c]
    ]


def _masses_inits(hd: int) -> list[Any]:
    from onnx import TensorProto, helper

    f, i64 = TensorProto.FLOAT, TensorProto.INT64
    return [
        helper.make_tensor("one_i", i64, [1], [1]),
        helper.make_tensor("two_i", i64, [1], [2]),
        helper.make_tensor("ax1", i64, [1], [1]),
        helper.make_tensor("zero_i", i64, [1], [0]),
        helper.make_tensor("hd_i", i64, [1], [hd]),
        helper.make_tensor("hd1_i", i64, [1], [hd + 1]),
        helper.make_tensor("one", i64, [], [1]),
        helper.make_tensor("zero", f, [], [0.0]),
        helper.make_tensor("neginf", f, [], [float("-inf")]),
    ]


def _masses_inputs(hd: int) -> list[Any]:
    from onnx import TensorProto, helper

    f = TensorProto.FLOAT
    return [
        helper.make_tensor_value_info("q", f, ["K", "R", hd]),
        helper.make_tensor_value_info("old", f, ["A", "K", hd + 1]),
        helper.make_tensor_value_info("new", f, ["B", "K", hd + 1]),
    ]


def masses_graph(hd: int, form: str = "flat") -> bytes:
    """The cluster masses over a cluster-major table of representatives and counts, refreshing it.

    old [a, K, hd + 1] (the table's first a rows, on the device; column hd is the cluster's token count,
    0: no cluster), new [c - a, K, hd + 1] (the rows that changed since the last run) and q [K, R, hd]
    scaled queries -> mass [K, c]: per head the mean over the R queries of each cluster's normalised
    count * exp(s - max s), s = q . rep (accel/host.py's HostBackend.masses); and new_out (Identity:
    bound at the table's row a, so the device table holds every row afterwards)."""
    from onnx import TensorProto, helper

    f = TensorProto.FLOAT
    inits = [*_masses_inits(hd), helper.make_tensor("ax2", TensorProto.INT64, [1], [2])]
    outputs = [
        helper.make_tensor_value_info("mass", f, ["K", "C"]),
        helper.make_tensor_value_info("new_out", f, ["B", "K", hd + 1]),
    ]
    return _model(_masses_nodes(form), "device_cluster_masses", _masses_inputs(hd), outputs, inits)


_SCAN = 256  # elements per block of _blocked_cumsum


def _blocked_cumsum(x: str, out: str, xshape: str) -> list[Any]:
    """out = CumSum(x, axis 1) for x [K, C] (xshape = Shape of it, [2] int64) in two levels: onnxruntime's
    CUDA CumSum sums each element's whole prefix (1.3 ms over [3, 40K] f64 on an H200), so the scan runs
    within blocks of _SCAN and over the blocks' totals. The same sums in another order (f64)."""
    from onnx import helper

    node = helper.make_node
    return [
        node("Slice", [xshape, "one_1", "two_1"], ["cs_c"]),  # [1] = C
        node("Add", ["cs_c", "cs_bm1"], ["cs_c1"]),
        node("Div", ["cs_c1", "cs_b"], ["cs_nb"]),  # [1] = ceil(C / B)
        node("Mul", ["cs_nb", "cs_b"], ["cs_cp"]),
        node("Sub", ["cs_cp", "cs_c"], ["cs_pad"]),
        node("Concat", ["cs_zero3", "cs_pad"], ["cs_pads"], axis=0),  # [0, 0, 0, pad]
        node("Pad", [x, "cs_pads"], ["cs_x"]),  # [K, nb * B], zeros at the end
        node("Slice", [xshape, "zero_1", "one_1"], ["cs_k"]),
        node("Concat", ["cs_k", "cs_nb", "cs_b"], ["cs_3"], axis=0),
        node("Reshape", ["cs_x", "cs_3"], ["cs_blocks"]),  # [K, nb, B]
        node("CumSum", ["cs_blocks", "cs_two"], ["cs_in"]),  # within each block
        node("Slice", ["cs_in", "minus1_1", "big_1", "two_1"], ["cs_tot"]),  # [K, nb, 1] block totals
        node("CumSum", ["cs_tot", "one"], ["cs_before"], exclusive=1),  # totals of the blocks before
        node("Add", ["cs_in", "cs_before"], ["cs_sum"]),
        node("Concat", ["cs_k", "cs_cp"], ["cs_2"], axis=0),
        node("Reshape", ["cs_sum", "cs_2"], ["cs_flat"]),
        node("Slice", ["cs_flat", "zero_1", "cs_c", "one_1"], [out]),  # [K, C]
    ]


def _blocked_cumsum_inits() -> list[Any]:
    from onnx import TensorProto, helper

    i64 = TensorProto.INT64
    return [
        helper.make_tensor("cs_b", i64, [1], [_SCAN]),
        helper.make_tensor("cs_bm1", i64, [1], [_SCAN - 1]),
        helper.make_tensor("cs_zero3", i64, [3], [0, 0, 0]),
        helper.make_tensor("cs_two", i64, [], [2]),
    ]


def resv_attend_graph(hd: int, form: str = "flat") -> bytes:
    """ReSV's whole retrieval and attention in one run: masses, WiCSum, the token mask and a gather.

    qs [K, R, hd] scaled scoring queries, old/new the cluster table's rows as in masses_graph; own_old
    [AO, K] (device) and own_new [BO, K] (host): each clustered row's cluster id per head (-1: a sink
    row), for rows 0 .. Lh - 1 = AO + BO - 1; ring [2] int64 = (K, w): the last w arena rows are the
    recent window, always attended; tau [1] f64: the WiCSum fraction (> 1: every cluster); qa [K, M, hd]
    scaled attention queries; k, v [T, hd] the arena as rows token * K + head (T = (Lh + w) * K);
    k_new, v_new the chunk (appended in place as in attend_graph).
    -> acc, m, den (partial softmax over each head's sink + selected + recent rows), kept [K] (rows
    attended per head), new_out, own_out (Identity: bound where those table rows go), k_out, v_out.
    WiCSum here sorts the masses (TopK) and keeps a cluster when the clusters heavier than it hold less
    than tau of the total: the definition accel/host.py's `wicsum` computes with buckets."""
    from onnx import TensorProto, helper

    f, i64 = TensorProto.FLOAT, TensorProto.INT64
    nodes = [
        *_masses_nodes(form),  # mass [K, C], tc3 [K, 1, C]
        # WiCSum over the sorted masses
        helper.make_node("Shape", ["mass"], ["mshape"]),
        helper.make_node("Slice", ["mshape", "one_1", "two_1"], ["kc"]),  # [1] = C
        helper.make_node("TopK", ["mass", "kc"], ["vals", "order"], axis=1, largest=1, sorted=1),
        helper.make_node("Cast", ["vals"], ["vals64"], to=TensorProto.DOUBLE),  # sums in f64, as the host's
        *_blocked_cumsum("vals64", "cum", "mshape"),
        helper.make_node("Sub", ["cum", "vals64"], ["heavier"]),  # mass of the clusters before each
        helper.make_node("Slice", ["cum", "minus1_1", "big_1", "one_1"], ["total"]),  # [K, 1]: the last sum
        helper.make_node("Mul", ["total", "tau"], ["goal"]),
        helper.make_node("Less", ["heavier", "goal"], ["ks_b"]),
        helper.make_node("Cast", ["ks_b"], ["ks"], to=f),
        helper.make_node("ConstantOfShape", ["mshape"], ["zeros"], value=helper.make_tensor("z", f, [1], [0.0])),
        helper.make_node("ScatterElements", ["zeros", "order", "ks"], ["keep0"], axis=1),  # [K, C]
        helper.make_node("Greater", ["tc3", "zero"], ["valid3"]),
        helper.make_node("Cast", ["valid3"], ["validf3"], to=f),
        helper.make_node("Squeeze", ["validf3", "ax1"], ["validf"]),  # [K, C]
        helper.make_node("Mul", ["keep0", "validf"], ["keep"]),
        # the token mask over the arena's rows: clustered rows by their cluster, sink and recent always
        helper.make_node("Identity", ["own_new"], ["own_out"]),
        helper.make_node("Concat", ["own_old", "own_new"], ["own"], axis=0),  # [Lh, K]
        helper.make_node("Transpose", ["own"], ["own_t"], perm=[1, 0]),  # [K, Lh]
        helper.make_node("Less", ["own_t", "zero"], ["is_sink"]),
        helper.make_node("Max", ["own_t", "zero"], ["own_c"]),
        helper.make_node("Cast", ["own_c"], ["own_i"], to=i64),
        helper.make_node("GatherElements", ["keep", "own_i"], ["tk"], axis=1),  # [K, Lh]
        helper.make_node("Where", ["is_sink", "onef", "tk"], ["tkm"]),
        helper.make_node("ConstantOfShape", ["ring"], ["ones"], value=helper.make_tensor("o", f, [1], [1.0])),
        helper.make_node("Concat", ["tkm", "ones"], ["mask"], axis=1),  # [K, L]
        helper.make_node("ReduceSum", ["mask", "ax1"], ["kept"], keepdims=0),  # [K]
        # gather the attended rows of every head, attend each head's queries to its own rows only
        helper.make_node("Greater", ["mask", "half"], ["mask_b"]),
        helper.make_node("NonZero", ["mask_b"], ["nz"]),  # [2, nnz] (head, token), head-major
        helper.make_node("Gather", ["nz", "zero_s"], ["heads"], axis=0),  # [nnz]
        helper.make_node("Gather", ["nz", "one"], ["toks"], axis=0),
        helper.make_node("Slice", ["mshape", "zero_1", "one_1"], ["kk"]),  # [1] = K
        helper.make_node("Mul", ["toks", "kk"], ["tk_k"]),
        helper.make_node("Add", ["tk_k", "heads"], ["flat"]),  # rows of k, v [T, hd]
        helper.make_node("Gather", ["k", "flat"], ["kg"], axis=0),  # [nnz, hd]
        helper.make_node("Gather", ["v", "flat"], ["vt"], axis=0),  # [nnz, hd]
        helper.make_node("Transpose", ["kg"], ["kt"], perm=[1, 0]),  # [hd, nnz]
        helper.make_node("MatMul", ["qa", "kt"], ["s0"]),  # [K, M, nnz]
        helper.make_node("Squeeze", ["kk"], ["k_s"]),
        helper.make_node("Range", ["zero_s", "k_s", "one"], ["hr"]),  # [K]
        helper.make_node("Unsqueeze", ["hr", "ax12"], ["hr3"]),  # [K, 1, 1]
        helper.make_node("Equal", ["hr3", "heads"], ["same"]),  # [K, 1, nnz]
        helper.make_node("Where", ["same", "zero", "far"], ["hb"]),
        helper.make_node("Add", ["s0", "hb"], ["s"]),
        *_softmax_tail("s"),
    ]
    n2, i2, o2 = _append_io(hd)
    inits = [
        *_masses_inits(hd),
        helper.make_tensor("ax12", i64, [2], [1, 2]),
        helper.make_tensor("zero_1", i64, [1], [0]),
        helper.make_tensor("one_1", i64, [1], [1]),
        helper.make_tensor("two_1", i64, [1], [2]),
        *_blocked_cumsum_inits(),
        helper.make_tensor("minus1_1", i64, [1], [-1]),
        helper.make_tensor("big_1", i64, [1], [2**62]),
        helper.make_tensor("zero_s", i64, [], [0]),
        helper.make_tensor("onef", f, [], [1.0]),
        helper.make_tensor("half", f, [], [0.5]),
        helper.make_tensor("far", f, [], [-1e30]),
        _ax2(),
    ]
    inputs = [
        *_masses_inputs(hd),
        helper.make_tensor_value_info("own_old", f, ["AO", "K"]),
        helper.make_tensor_value_info("own_new", f, ["BO", "K"]),
        helper.make_tensor_value_info("ring", i64, [2]),
        helper.make_tensor_value_info("tau", TensorProto.DOUBLE, [1]),
        helper.make_tensor_value_info("qa", f, ["K", "M", hd]),
        helper.make_tensor_value_info("k", f, ["T", hd]),
        helper.make_tensor_value_info("v", f, ["T", hd]),
        *i2,
    ]
    outputs = [
        *_partial_outputs(hd),
        helper.make_tensor_value_info("kept", f, ["K"]),
        helper.make_tensor_value_info("new_out", f, ["B", "K", hd + 1]),
        helper.make_tensor_value_info("own_out", f, ["BO", "K"]),
        *o2,
    ]
    return _model(nodes + n2, "device_resv_attend", inputs, outputs, inits)


def copy_graph() -> bytes:
    """x [a, b, c] -> y (Identity): host <-> device and device <-> device copies by bound address."""
    from onnx import TensorProto, helper

    f = TensorProto.FLOAT
    return _model(
        [helper.make_node("Identity", ["x"], ["y"])],
        "copy",
        [helper.make_tensor_value_info("x", f, ["a", "b", "c"])],
        [helper.make_tensor_value_info("y", f, ["a", "b", "c"])],
    )
