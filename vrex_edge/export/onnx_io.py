"""ONNX export of one stage and its parity check with onnxruntime."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from vrex_edge.errors import ExportError

OPSET = 17
# Max abs error allowed, relative to (1 + max |reference|), per weight dtype. Measured worst cases
# on SmolLM2-135M: fp32 2.4e-7, fp16 6.4e-4, int8 2.6e-2 (int4: a loose bound; its quality is
# measured on real text by benchmarks/bench_quant.py).
TOLERANCE = {"fp32": 1e-4, "fp16": 5e-3, "int8": 0.08, "int4": 0.5}
# Graphs whose weights pass this size keep them in one external file beside the graph (`<file>.data`):
# protobuf cannot hold more than 2 GB. The embedding and head, written block by block, always do.
EXTERNAL_DATA_BYTES = 1_500_000_000
_ALIGN = 4096


def data_file(path: Path) -> Path:
    """The external-data file of the graph at `path` (it exists only for large graphs)."""
    return path.with_name(path.name + ".data")


def save_model(model, path: Path) -> None:  # model: onnx.ModelProto with every tensor loaded
    """Write `model` to `path`, with its weights in `data_file(path)` when they pass EXTERNAL_DATA_BYTES."""
    import onnx

    data = data_file(path)
    if data.exists():
        data.unlink()
    size = sum(t.ByteSize() for t in model.graph.initializer)
    if size > EXTERNAL_DATA_BYTES:
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data.name,
            size_threshold=1024,
        )
    else:
        onnx.save_model(model, str(path))


class DataFile:
    """Tensors appended one at a time to a graph's external-data file `data_file(path)`, each page-aligned
    (so onnxruntime can map them); `tensor` makes the TensorProto that points at the last one written."""

    def __init__(self, path: Path):
        self.path = data_file(path)
        self._f = open(self.path, "wb")  # noqa: SIM115 (closed by close())

    def start(self) -> int:
        """Pad to the next page; the offset the next tensor starts at."""
        pos = self._f.tell()
        self._f.write(b"\0" * (-pos % _ALIGN))
        return pos + (-pos % _ALIGN)

    def write(self, arr: np.ndarray) -> None:
        self._f.write(np.ascontiguousarray(arr).data)

    def tensor(self, name: str, dtype: int, dims: tuple[int, ...], offset: int):  # -> onnx.TensorProto
        import onnx

        t = onnx.TensorProto(name=name, data_type=dtype, dims=list(dims))
        t.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", self.path.name), ("offset", offset), ("length", self._f.tell() - offset)):
            entry = t.external_data.add()
            entry.key, entry.value = key, str(value)
        return t

    def add(self, name: str, arr: np.ndarray):  # -> onnx.TensorProto
        from onnx.helper import np_dtype_to_tensor_dtype

        offset = self.start()
        self.write(arr)
        return self.tensor(name, np_dtype_to_tensor_dtype(arr.dtype), tuple(arr.shape), offset)

    def close(self) -> None:
        self._f.close()


def export_onnx(
    module: torch.nn.Module,
    example: tuple[torch.Tensor, ...],
    path: Path,
    input_names: list[str],
    output_names: list[str],
    dynamic_axes: dict[str, dict[int, str]],
) -> None:
    """Trace `module` on `example` and write an fp32 ONNX graph to `path`, its weights in `data_file(path)`
    (`inline_small` moves them into the graph once the module is freed).

    The graph is traced without its weights: torch.onnx.export with them holds the stage up to three
    times more (constant-folded transposes, the serialized graph, a parsed copy of it). Each weight is
    then appended to the data file from the module, one at a time; a Transpose of a weight is stored
    transposed, as constant folding would (the fp16/int8 converters look for MatMuls of initializers)."""
    import io

    import onnx

    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about python scalars are expected
        torch.onnx.export(
            module,
            example,
            buf,
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            opset_version=OPSET,
            export_params=False,  # weights become graph inputs named as in the module's state_dict
            do_constant_folding=False,
            dynamo=False,
        )
    model = onnx.load_model_from_string(buf.getvalue())
    del buf
    tensors = dict(module.named_buffers(remove_duplicate=False))
    tensors.update(module.state_dict(keep_vars=True))
    graph = model.graph
    weights = [i.name for i in graph.input if i.name in tensors]
    inputs = [i for i in graph.input if i.name not in tensors]
    missing = [n for n in input_names if n not in {i.name for i in inputs}]
    if missing or len(inputs) != len(input_names):
        raise ExportError(f"internal: the traced graph's inputs are not the stage's ({missing or len(inputs)})")
    del graph.input[:]
    graph.input.extend(inputs)
    users: dict[str, list] = {}
    for node in graph.node:
        for x in node.input:
            users.setdefault(x, []).append(node)
    folded: set[int] = set()
    data = DataFile(path)
    try:
        for name in weights:
            arr = tensors[name].detach().cpu().numpy()
            for node in users.get(name, []):
                if node.op_type == "Transpose" and node.input[0] == name:
                    perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
                    graph.initializer.append(data.add(node.output[0], np.transpose(arr, perm)))
                    folded.add(id(node))
            if any(id(n) not in folded for n in users.get(name, [])):
                graph.initializer.append(data.add(name, arr))
            del arr
    finally:
        data.close()
    kept = [n for n in graph.node if id(n) not in folded]
    del graph.node[:]
    graph.node.extend(kept)
    onnx.save_model(model, str(path))


def inline_small(path: Path) -> None:
    """Move the weights of the graph at `path` into the graph when they fit (EXTERNAL_DATA_BYTES)."""
    import onnx

    data = data_file(path)
    if data.is_file() and data.stat().st_size <= EXTERNAL_DATA_BYTES:
        save_model(onnx.load(str(path)), path)


def ort_session(path: Path, *, threads: int = 0):
    """An onnxruntime CPU session with thread spinning off (spinning thrashes small machines)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


Trial = tuple[dict[str, np.ndarray], list[np.ndarray]]  # (inputs, PyTorch outputs)


def reference_trials(module: torch.nn.Module, inputs: list[dict[str, np.ndarray]]) -> list[Trial]:
    """PyTorch's outputs of `module` on each input set (kept, so the weights can be freed before checking)."""
    trials = []
    for feeds in inputs:
        with torch.no_grad():
            ref = module(*(torch.from_numpy(v) for v in feeds.values()))
        refs = ref if isinstance(ref, (tuple, list)) else (ref,)
        trials.append((feeds, [r.detach().float().numpy() for r in refs]))
    return trials


def compare(path: Path, trials: list[Trial], output_names: list[str]) -> tuple[float, float]:
    """(max abs error, max |reference|) of the ONNX graph at `path` against the reference outputs."""
    sess = ort_session(path)
    err, scale = 0.0, 0.0
    for inputs, refs in trials:
        got = sess.run(output_names, inputs)
        for name, r, g in zip(output_names, refs, got, strict=True):
            if r.shape != g.shape:
                raise ExportError(f"stage output {name}: ONNX shape {g.shape} != PyTorch shape {r.shape}")
            if g.dtype != np.float32:
                raise ExportError(f"stage output {name}: ONNX dtype {g.dtype}, expected float32")
            err = max(err, float(np.abs(r - g).max()))
            scale = max(scale, float(np.abs(r).max()))
    return err, scale


def max_abs_error(
    module: torch.nn.Module, path: Path, trials: list[dict[str, np.ndarray]], output_names: list[str]
) -> tuple[float, float]:
    """(max abs error, max |reference|) of the ONNX graph vs the torch module over input sets."""
    return compare(path, reference_trials(module, trials), output_names)


def check_error(stage: str, err: float, scale: float, dtype: str) -> None:
    limit = TOLERANCE[dtype] * (1.0 + scale)
    if not np.isfinite(err) or err > limit:
        raise ExportError(
            f"stage {stage} does not match PyTorch after export ({dtype}): max abs error {err:.3g} "
            f"> {limit:.3g}; try --dtype fp32 or report this model"
        )
