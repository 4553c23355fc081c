"""Where the device attention's time goes at long histories: the engine's graph and its parts, timed alone.

The ort-cuda engine's first attention graph took 5.1 ms per call over a 40K-token history on an H200
(bench_gpu_attention.py), about 12 GB/s of K+V: far from the device's bandwidth. This script times, on
device-resident inputs and outputs (no host copies), the attention graph in each of its forms
(ort_graphs.FORMS) and the parts of the first form as graphs of their own, and (with torch's profiler,
where torch with CUDA is installed) the kernels of a few runs of each form.

    python benchmarks/profile_gpu_attention.py --sizes 1000 8000 40000
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def _graph(nodes, inputs, outputs, inits=()):
    from onnx import helper

    g = helper.make_graph(nodes, "probe", inputs, outputs, initializer=list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m.SerializeToString()


def probes(hd: int) -> dict[str, tuple[bytes, list[str]]]:
    """name -> (model, its input names) over q [K, M, hd], k, v [L, K, hd] (token-major) or their transposes."""
    from onnx import TensorProto, helper

    from vrex_edge.runtime.kernels.ort_graphs import FORMS, attend_graph

    f = TensorProto.FLOAT
    vi = helper.make_tensor_value_info
    ax2 = helper.make_tensor("ax2", TensorProto.INT64, [1], [2])
    out = {f"attend graph, form {form}": (attend_graph(hd, append=False, form=form), ["q", "k", "v"]) for form in FORMS}
    out["Transpose k [L,K,hd]->[K,hd,L] alone"] = (
        _graph(
            [helper.make_node("Transpose", ["k"], ["kt"], perm=[1, 2, 0])],
            [vi("k", f, ["L", "K", hd])],
            [vi("kt", f, ["K", hd, "L"])],
        ),
        ["k"],
    )
    out["Transpose v [L,K,hd]->[K,L,hd] alone"] = (
        _graph(
            [helper.make_node("Transpose", ["v"], ["vt"], perm=[1, 0, 2])],
            [vi("v", f, ["L", "K", hd])],
            [vi("vt", f, ["K", "L", hd])],
        ),
        ["v"],
    )
    out["Transpose k as [L,K*hd]->[K*hd,L] alone (2-D)"] = (
        _graph(
            [
                helper.make_node("Reshape", ["k", "flat"], ["k2"]),
                helper.make_node("Transpose", ["k2"], ["kt"], perm=[1, 0]),
            ],
            [vi("k", f, ["L", "K", hd])],
            [vi("kt", f, ["KD", "L"])],
            [helper.make_tensor("flat", TensorProto.INT64, [2], [0, -1])],
        ),
        ["k"],
    )
    out["MatMul q.kt alone (kt given [K,hd,L])"] = (
        _graph(
            [helper.make_node("MatMul", ["q", "kt"], ["s"])],
            [vi("q", f, ["K", "M", hd]), vi("kt", f, ["K", hd, "L"])],
            [vi("s", f, ["K", "M", "L"])],
        ),
        ["q", "kt"],
    )
    out["softmax parts alone (s given)"] = (
        _graph(
            [
                helper.make_node("ReduceMax", ["s"], ["m"], axes=[2], keepdims=1),
                helper.make_node("Sub", ["s", "m"], ["d"]),
                helper.make_node("Exp", ["d"], ["p"]),
                helper.make_node("ReduceSum", ["p", "ax2"], ["den"], keepdims=1),
            ],
            [vi("s", f, ["K", "M", "L"])],
            [vi("p", f, ["K", "M", "L"]), vi("m", f, ["K", "M", 1]), vi("den", f, ["K", "M", 1])],
            [ax2],
        ),
        ["s"],
    )
    out["LogSoftmax + Exp alone (s given, as [K*M, L])"] = (
        _graph(
            [helper.make_node("LogSoftmax", ["s2"], ["ls"], axis=1), helper.make_node("Exp", ["ls"], ["p"])],
            [vi("s2", f, ["KM", "L"])],
            [vi("p", f, ["KM", "L"])],
        ),
        ["s2"],
    )
    out["MatMul p.vt alone (vt given [K,L,hd])"] = (
        _graph(
            [helper.make_node("MatMul", ["p", "vt"], ["acc"])],
            [vi("p", f, ["K", "M", "L"]), vi("vt", f, ["K", "L", hd])],
            [vi("acc", f, ["K", "M", hd])],
        ),
        ["p", "vt"],
    )
    return out


def main(argv: list[str] | None = None) -> None:
    import onnxruntime as ort

    from vrex_edge.runtime.kernels.ort_graphs import FORMS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 8000, 40000])
    ap.add_argument("--kv-heads", type=int, default=3)
    ap.add_argument("--rows", type=int, default=30, help="query rows per KV head (G * new tokens)")
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--tf32", action="store_true")
    ap.add_argument("--torch-profile", action="store_true", help="kernel table of the engine graph (torch+CUDA)")
    args = ap.parse_args(argv)
    kvh, M, hd = args.kv_heads, args.rows, args.head_dim
    rng = np.random.default_rng(0)
    so = ort.SessionOptions()
    so.log_severity_level = 1  # node placement warnings go to stderr
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    prov = [("CUDAExecutionProvider", {"use_tf32": "1" if args.tf32 else "0"})]
    graphs = probes(hd)
    sessions = {n: (ort.InferenceSession(model, so, providers=prov), names) for n, (model, names) in graphs.items()}
    print(f"| history | graph | ms per run (median of {args.repeats}) | GB/s of K+V |")
    print("|---:|---|---:|---:|")
    for L in args.sizes:
        host = {
            "q": rng.standard_normal((kvh, M, hd)).astype(np.float32),
            "k": rng.standard_normal((L, kvh, hd)).astype(np.float32),
            "v": rng.standard_normal((L, kvh, hd)).astype(np.float32),
        }
        host["kt"] = np.ascontiguousarray(host["k"].transpose(1, 2, 0))
        host["vt"] = np.ascontiguousarray(host["v"].transpose(1, 0, 2))
        host["s"] = rng.standard_normal((kvh, M, L)).astype(np.float32)
        host["s2"] = host["s"].reshape(kvh * M, L)
        host["p"] = np.exp(host["s"] - host["s"].max(-1, keepdims=True))
        dev = {n: ort.OrtValue.ortvalue_from_numpy(a, "cuda", 0) for n, a in host.items()}
        results = {}
        for name, (sess, names) in sessions.items():
            io = sess.io_binding()
            for n in names:
                io.bind_ortvalue_input(n, dev[n])
            for o in sess.get_outputs():
                io.bind_output(o.name, "cuda")
            for _ in range(3):
                sess.run_with_iobinding(io)
            ts = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                sess.run_with_iobinding(io)
                io.synchronize_outputs()
                ts.append(time.perf_counter() - t0)
            ms = 1e3 * statistics.median(ts)
            results[name] = io.copy_outputs_to_cpu()
            gbs = 2 * L * kvh * hd * 4 / (ms * 1e-3) / 1e9
            print(f"| {L:,} | {name} | {ms:.3f} | {gbs:.0f} |", flush=True)
        (a, am, ad), (b, bm, bd) = results["attend graph, form transposed"], results["attend graph, form flat"]
        err = float(np.abs(a / ad - b / bd).max() / (1 + np.abs(a / ad).max()))
        lse = float(np.abs((am + np.log(ad)) - (bm + np.log(bd))).max())
        print(f"| {L:,} | form flat vs transposed: normalised output / log-sum-exp | {err:.1e} / {lse:.1e} | |")
        if args.torch_profile and L == max(args.sizes):
            for form in FORMS:
                print(f"kernels of form {form}:")
                torch_kernels(sessions[f"attend graph, form {form}"], dev)


def torch_kernels(entry, dev) -> None:
    """The CUDA kernels and copies of 5 runs of one session, from torch's profiler (CUPTI sees the process)."""
    try:
        import torch
        from torch.profiler import ProfilerActivity, profile
    except ImportError:
        print("torch not installed: no kernel table")
        return
    if not torch.cuda.is_available():
        print("torch has no CUDA: no kernel table")
        return
    sess, names = entry
    io = sess.io_binding()
    for n in names:
        io.bind_ortvalue_input(n, dev[n])
    for o in sess.get_outputs():
        io.bind_output(o.name, "cuda")
    torch.cuda.init()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            sess.run_with_iobinding(io)
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25))


if __name__ == "__main__":
    main()
