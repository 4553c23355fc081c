"""Reduced-precision stage graphs. Graph inputs and outputs stay float32 in every dtype.

fp16: every MatMul with a weight initializer runs in fp16 (its input is cast to fp16, its
      output back to fp32); the embedding table is stored in fp16. Norms, residual adds,
      softmax and activations stay fp32: small LMs carry "massive activations" (SmolLM2's
      residual stream reaches ~25,000) that fp16 elementwise ops lose.
int8: int8 weights (MatMulNBits, symmetric, one scale per block of 32 input channels) on every
      MatMul with a weight initializer, computed with accuracy level 4 (activations quantised
      per block on the fly, int8 dot products); the embedding table is stored in fp16.
      On SmolLM2-135M this keeps next-token KL vs fp32 below 0.01 (per-tensor dynamic int8
      of every MatMul reaches KL > 1) and prefills ~1.8x faster than fp32 on CPU.
int4: 4-bit weights (MatMulNBits bits=4, blocks of 32) fitted with HQQ (asymmetric, a zero
      point per block), accuracy level 4. On SmolLM2-135M, HQQ cuts KL vs fp32 from ~0.35
      (round-to-nearest) to ~0.09, still far from int8: see benchmarks/results/quant.md.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np

from vrex_edge.errors import ExportError
from vrex_edge.export.onnx_io import inline_small, save_model

INT8_BLOCK = 32
NBITS = {"int8": 8, "int4": 4}
_FP16_MAX = 65504.0


def convert(path: Path, dtype: str) -> None:
    """Rewrite the fp32 graph at `path` in place for `dtype` (fp32: its weights moved into the graph
    when they fit, see `onnx_io.inline_small`)."""
    if dtype == "fp32":
        inline_small(path)
        return
    if dtype == "fp16":
        _to_fp16(path)
    elif dtype in NBITS:
        _to_nbits(path, NBITS[dtype])
    else:
        raise ExportError(f"unknown dtype '{dtype}' (choose fp32, fp16, int8 or int4)")


def _weight_matmuls(graph) -> list:  # [onnx.NodeProto] whose second input is a 2-D float initializer
    import onnx

    inits = {i.name: i for i in graph.initializer}
    return [
        n
        for n in graph.node
        if n.op_type == "MatMul"
        and n.input[1] in inits
        and inits[n.input[1]].data_type == onnx.TensorProto.FLOAT
        and len(inits[n.input[1]].dims) == 2
    ]


def _to_fp16(path: Path, *, matmuls: bool = True) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    new_nodes = []
    for node in g.node:
        w = inits.get(node.input[1]) if len(node.input) > 1 else None
        if matmuls and node.op_type == "MatMul" and w is not None and w.data_type == TensorProto.FLOAT:
            _store_fp16(w, numpy_helper)
            x16, y16 = node.input[0] + f"/{node.name}/fp16", node.output[0] + "/fp16"
            new_nodes.append(
                helper.make_node("Cast", [node.input[0]], [x16], name=f"{node.name}/cast_in", to=TensorProto.FLOAT16)
            )
            new_nodes.append(helper.make_node("MatMul", [x16, node.input[1]], [y16], name=node.name))
            new_nodes.append(
                helper.make_node("Cast", [y16], [node.output[0]], name=f"{node.name}/cast_out", to=TensorProto.FLOAT)
            )
        elif (
            node.op_type == "Gather" and node.input[0] in inits and inits[node.input[0]].data_type == TensorProto.FLOAT
        ):
            _store_fp16(inits[node.input[0]], numpy_helper)  # embedding table: look up in fp16, widen the rows
            y16 = node.output[0] + "/fp16"
            new_nodes.append(helper.make_node("Gather", list(node.input), [y16], name=node.name, axis=_axis(node)))
            new_nodes.append(
                helper.make_node("Cast", [y16], [node.output[0]], name=f"{node.name}/cast_out", to=TensorProto.FLOAT)
            )
        else:
            new_nodes.append(node)
    del g.node[:]
    g.node.extend(new_nodes)
    _drop_stale_value_info(g)
    save_model(model, path)
    onnx.checker.check_model(str(path))


def _axis(node) -> int:
    return next((a.i for a in node.attribute if a.name == "axis"), 0)


def _store_fp16(init, numpy_helper) -> None:
    arr = np.array(numpy_helper.to_array(init))  # an owned copy: the proto's bytes can go now
    init.ClearField("raw_data")
    np.clip(arr, -_FP16_MAX, _FP16_MAX, out=arr)
    half = arr.astype(np.float16)
    del arr
    init.CopyFrom(numpy_helper.from_array(half, init.name))


def _drop_stale_value_info(graph) -> None:
    del graph.value_info[:]  # shapes/types recorded by the exporter no longer hold for rewritten edges


def _to_nbits(path: Path, bits: int) -> None:
    import onnx

    model = onnx.load(str(path))
    if not _weight_matmuls(model.graph):
        _to_fp16(path, matmuls=False)  # the embedding stage: an fp16 table
        return
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quiet = [logging.getLogger(n) for n in ("onnxruntime.quantization.matmul_nbits_quantizer", "root")]
    levels = [lg.level for lg in quiet]
    try:
        for lg in quiet:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            algo = None
            if bits == 4:
                from onnxruntime.quantization.matmul_nbits_quantizer import HQQWeightOnlyQuantConfig

                algo = HQQWeightOnlyQuantConfig(block_size=INT8_BLOCK, bits=4)
            q = MatMulNBitsQuantizer(
                model, bits=bits, block_size=INT8_BLOCK, is_symmetric=bits == 8, accuracy_level=4, algo_config=algo
            )
            q.process()
    finally:
        for lg, level in zip(quiet, levels, strict=True):
            lg.setLevel(level)
    save_model(q.model.model, path)
