"""The embedding and LM-head stages written directly with onnx.helper, a block of rows at a time.

These two stages are a table lookup and (after the final RMSNorm) one MatMul, and for a large
vocabulary they are the largest stages of the model (Llama-3-8B: 2.1 GB each in fp32). Tracing
them with torch.onnx.export holds the table several times (the module, the exporter's folded
transpose, the serialized graph); here the weights are read from the checkpoint in blocks of rows,
converted to the bundle's dtype and appended to the graph's external-data file `<file>.data`, so the
embedding table and an int8 head are never whole in memory (an fp32/fp16 head is assembled transposed
once, in its own dtype: the MatMul's [D, V]). The graphs are the ones
`precision.convert` makes from the traced stages: an fp16 table + Cast for every dtype but fp32, and
for the head Cast/MatMul/Cast in fp16 or MatMulNBits (8 bits, symmetric, blocks of 32, accuracy level
4) quantised by onnxruntime's own kernel. int4 (HQQ fits the whole matrix) keeps the traced head.

Each written graph is checked like a traced one: its outputs on random inputs against the torch
modules' (the head's RMSNorm runs in torch, the MatMul against the checkpoint rows in fp32).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vrex_edge.errors import ExportError
from vrex_edge.export import onnx_io
from vrex_edge.export.precision import INT8_BLOCK

BLOCK_ROWS = 4096  # rows read, converted and written at a time (Llama-3-8B: 64 MB of fp32)
_FP16_MAX = 65504.0


@dataclass(frozen=True)
class Rows:
    """A 2-D weight [rows, cols] read a block of rows at a time (fp32)."""

    shape: tuple[int, int]
    read: Callable[[int, int], torch.Tensor]  # (start, stop) -> [stop - start, cols] float32

    def blocks(self, size: int = BLOCK_ROWS) -> Iterator[tuple[int, np.ndarray]]:
        for start in range(0, self.shape[0], size):
            stop = min(start + size, self.shape[0])
            block = self.read(start, stop).detach().float().numpy()  # [stop - start, cols]
            if block.shape != (stop - start, self.shape[1]):
                raise ExportError(f"weight rows {start}:{stop} have shape {block.shape}, expected {self.shape}")
            yield start, block


def weight_rows(module: nn.Module, pname: str, weights) -> Rows:  # weights: LazyWeights | None
    """Rows of `module`'s 2-D parameter: from the checkpoint when it is lazy, else from memory."""
    p = module._parameters[pname]
    shape = (int(p.shape[0]), int(p.shape[1]))
    if p.is_meta:
        if weights is None or not weights.has(module, pname):
            raise ExportError(f"internal: {type(module).__name__}.{pname} has no weights")
        return Rows(shape, lambda a, b: weights.load_rows(module, pname, a, b))
    return Rows(shape, lambda a, b: p.detach()[a:b])


def embed_rows(embed: nn.Module, weights) -> Rows | None:
    """The table of a plain nn.Embedding (None for anything else: those are traced)."""
    if type(embed) is not nn.Embedding or embed.max_norm is not None:
        return None
    return weight_rows(embed, "weight", weights)


def head_parts(norm: nn.Module, lm_head: nn.Module, weights) -> tuple[Rows, float] | None:
    """(LM-head rows [V, D], RMSNorm epsilon) when the head is an HF Llama-style RMSNorm (weight * x /
    rms(x)) and a bias-free nn.Linear; None otherwise (traced)."""
    eps = getattr(norm, "variance_epsilon", None)
    name = type(norm).__name__
    if (
        type(lm_head) is not nn.Linear
        or lm_head.bias is not None
        or not name.endswith("RMSNorm")
        or name.startswith("Gemma")  # Gemma scales by (1 + weight)
        or eps is None
        or tuple(norm.weight.shape) != (lm_head.in_features,)
    ):
        return None
    return weight_rows(lm_head, "weight", weights), float(eps)


def _half(block: np.ndarray) -> np.ndarray:
    return np.clip(block, -_FP16_MAX, _FP16_MAX).astype(np.float16)


def _save(path: Path, nodes: list, inputs: list, outputs: list, inits: list, *, ms_domain: bool = False) -> None:
    import onnx
    from onnx import helper

    opsets = [helper.make_opsetid("", onnx_io.OPSET)]
    if ms_domain:
        opsets.append(helper.make_opsetid("com.microsoft", 1))
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=opsets, producer_name="vrex-edge", ir_version=8)
    onnx.save_model(model, str(path))  # the weights are already in the data file
    onnx.checker.check_model(str(path))


def write_embed(path: Path, table: Rows, dtype: str) -> None:
    """input_ids [n] -> embeds [n, D]: Gather from the table (fp32 for fp32 bundles, else fp16 + Cast)."""
    from onnx import TensorProto, helper

    v, d = table.shape
    half = dtype != "fp32"
    data = onnx_io.DataFile(path)
    try:
        offset = data.start()
        for _, block in table.blocks():
            data.write(_half(block) if half else block)
        init = data.tensor("embed_tokens.weight", TensorProto.FLOAT16 if half else TensorProto.FLOAT, (v, d), offset)
    finally:
        data.close()
    gathered = "embeds/fp16" if half else "embeds"
    nodes = [helper.make_node("Gather", [init.name, "input_ids"], [gathered], name="embed", axis=0)]
    if half:
        nodes.append(helper.make_node("Cast", [gathered], ["embeds"], name="embed/cast_out", to=TensorProto.FLOAT))
    _save(
        path,
        nodes,
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["n"])],
        [helper.make_tensor_value_info("embeds", TensorProto.FLOAT, ["n", d])],
        [init],
    )


def write_head(path: Path, norm_weight: np.ndarray, eps: float, head: Rows, dtype: str) -> None:
    """hidden [n, D] -> logits [n, V]: RMSNorm, then the LM head as MatMul (fp32), Cast/MatMul/Cast (fp16)
    or MatMulNBits (int8)."""
    from onnx import TensorProto, helper, numpy_helper

    if dtype not in ("fp32", "fp16", "int8"):
        raise ExportError(f"internal: the head is not written directly for {dtype}")
    v, d = head.shape
    gamma = numpy_helper.from_array(np.asarray(norm_weight, np.float32).reshape(d), "norm.weight")
    eps_t = numpy_helper.from_array(np.array(eps, np.float32), "norm.eps")
    nodes = [  # weight * x / sqrt(mean(x^2) + eps), as HF's RMSNorm
        helper.make_node("Mul", ["hidden", "hidden"], ["norm/sq"], name="norm/sq"),
        helper.make_node("ReduceMean", ["norm/sq"], ["norm/ms"], name="norm/mean", axes=[-1], keepdims=1),
        helper.make_node("Add", ["norm/ms", "norm.eps"], ["norm/var"], name="norm/add"),
        helper.make_node("Sqrt", ["norm/var"], ["norm/rms"], name="norm/sqrt"),
        helper.make_node("Reciprocal", ["norm/rms"], ["norm/inv"], name="norm/inv"),
        helper.make_node("Mul", ["hidden", "norm/inv"], ["norm/x"], name="norm/scale"),
        helper.make_node("Mul", ["norm.weight", "norm/x"], ["normed"], name="norm/weight"),
    ]
    data = onnx_io.DataFile(path)
    try:
        if dtype == "int8":
            inits = _head_int8(data, head)
            nodes.append(
                helper.make_node(
                    "MatMulNBits",
                    ["normed", inits[0].name, inits[1].name],
                    ["logits"],
                    name="lm_head_Q8",
                    domain="com.microsoft",
                    K=d,
                    N=v,
                    bits=8,
                    block_size=INT8_BLOCK,
                    accuracy_level=4,
                )
            )
        else:
            half = dtype == "fp16"
            wt = np.empty((d, v), np.float16 if half else np.float32)  # the MatMul's [K, N] = W^T
            for start, block in head.blocks():
                wt[:, start : start + block.shape[0]] = _half(block).T if half else block.T
            offset = data.start()
            data.write(wt)
            del wt
            inits = [
                data.tensor("lm_head.weight_T", TensorProto.FLOAT16 if half else TensorProto.FLOAT, (d, v), offset)
            ]
            if half:
                nodes += [
                    helper.make_node(
                        "Cast", ["normed"], ["normed/fp16"], name="lm_head/cast_in", to=TensorProto.FLOAT16
                    ),
                    helper.make_node("MatMul", ["normed/fp16", inits[0].name], ["logits/fp16"], name="lm_head"),
                    helper.make_node(
                        "Cast", ["logits/fp16"], ["logits"], name="lm_head/cast_out", to=TensorProto.FLOAT
                    ),
                ]
            else:
                nodes.append(helper.make_node("MatMul", ["normed", inits[0].name], ["logits"], name="lm_head"))
    finally:
        data.close()
    _save(
        path,
        nodes,
        [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["n", d])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", v])],
        [gamma, eps_t, *inits],
        ms_domain=dtype == "int8",
    )


def _head_int8(data: onnx_io.DataFile, head: Rows) -> list:  # [B_Q8 [V, k_blocks, 32] uint8, scales [V, k_blocks]]
    """Quantise the head block by block with onnxruntime's MatMulNBits kernel (the one its quantizer
    calls), so the result is the traced-and-converted stage's, bit for bit."""
    from onnx import TensorProto
    from onnxruntime.capi._pybind_state import quantize_matmul_8bits

    v, d = head.shape
    k_blocks = -(-d // INT8_BLOCK)
    scales = np.zeros((v, k_blocks), np.float32)
    offset = data.start()
    for start, block in head.blocks():
        rows = block.shape[0]
        kn = np.zeros((k_blocks * INT8_BLOCK, rows), np.float32)  # [K padded, N block]: the kernel's layout
        kn[:d] = block.T
        packed = np.zeros((rows, k_blocks, INT8_BLOCK), np.uint8)
        block_scales = np.zeros((rows, k_blocks), np.float32)
        zero_points = np.zeros((rows, k_blocks), np.uint8)  # unused: symmetric
        quantize_matmul_8bits(packed, kn, block_scales, zero_points, INT8_BLOCK, rows, d, True)
        scales[start : start + rows] = block_scales
        data.write(packed)
    q = data.tensor("lm_head.weight_Q8", TensorProto.UINT8, (v, k_blocks, INT8_BLOCK), offset)
    offset = data.start()
    data.write(scales)
    return [q, data.tensor("lm_head.weight_scales", TensorProto.FLOAT, (v, k_blocks), offset)]


def embed_trials(table: Rows, inputs: list[dict[str, np.ndarray]]) -> list[onnx_io.Trial]:
    """The table's rows at each input's ids (what nn.Embedding returns)."""
    trials = []
    for feeds in inputs:
        ids = feeds["input_ids"]  # [n]
        rows = [table.read(int(i), int(i) + 1).detach().float().numpy() for i in ids]
        trials.append((feeds, [np.concatenate(rows, axis=0)]))  # [n, D]
    return trials


def head_trials(norm: nn.Module, head: Rows, inputs: list[dict[str, np.ndarray]]) -> list[onnx_io.Trial]:
    """PyTorch's RMSNorm of each input, times the LM head's rows in fp32, block by block."""
    normed = []
    for feeds in inputs:
        with torch.no_grad():
            normed.append(norm(torch.from_numpy(feeds["hidden"])[None])[0].float().numpy())  # [n, D]
    logits = [np.empty((x.shape[0], head.shape[0]), np.float32) for x in normed]  # [n, V]
    for start, block in head.blocks():
        for x, out in zip(normed, logits, strict=True):
            out[:, start : start + block.shape[0]] = x @ block.T
    return [(feeds, [out]) for feeds, out in zip(inputs, logits, strict=True)]
