"""Host attention engines at SmolLM2 shapes, against the machine's own read bandwidth.

One layer's attention of a chunk (9 query heads, 3 KV heads, head_dim 64; 10 new tokens, and one
for decode) over a history of 1K / 8K / 40K tokens held in [KVH, cap, hd] buffers with spare
capacity (as FullKV's GrowingArray holds them, so a head's tokens are contiguous but the heads are
not). Engines: the old `runtime.attention.attend`, the kernels' numpy online softmax, onnxruntime
(the kernels' partial-softmax graph, inputs bound by pointer) with 1 and 2 intra-op threads,
torch's scaled_dot_product_attention where torch is installed (a reference, not a runtime
candidate), and fp16 / int8 (per-token scale) KV storage. All variants run round-robin in one
process over the same layer copies (enough that K+V is read from memory, not from a warm cache;
--working-set); each cell is the median of --repeats calls. Read bandwidth: numpy sum
over a 256 MiB float32 array, median of 7, measured before and after. Efficiency = bytes of K+V
as stored / time / bandwidth. Error columns: max |out - fp32 kernel| and relative L2, random data.

    PYTHONPATH=$PWD python3 benchmarks/bench_attention.py --out benchmarks/results/attention.md
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from vrex_edge.runtime.attention import attend as attend_old
from vrex_edge.runtime.kernels import Segment
from vrex_edge.runtime.kernels.numpy_engine import NumpyEngine, merge_partial, start_with_chunk
from vrex_edge.runtime.kernels.ort_engine import OrtEngine
from vrex_edge.runtime.threads import _openblas_libs, limit_blas_threads

KVH, G, HD = 3, 3, 64


# ---------------------------------------------------------------------------- machine


def read_bandwidth(mib: int = 256, repeats: int = 7) -> float:
    """GB/s of numpy's float32 sum over a `mib` MiB array (larger than any cache here)."""
    a = np.ones(mib * 2**20 // 4, np.float32)  # [N]
    a.sum()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a.sum()
        ts.append(time.perf_counter() - t0)
    return a.nbytes / statistics.median(ts) / 1e9


def blas_info() -> str:
    try:
        import threadpoolctl

        return "; ".join(
            f"{d.get('internal_api')} {d.get('version')} {d.get('architecture')} threads={d.get('num_threads')}"
            for d in threadpoolctl.threadpool_info()
        )
    except ImportError:
        import ctypes

        out = []
        for path in _openblas_libs():
            lib = ctypes.CDLL(path)
            for pre in ("scipy_openblas_", "openblas_", ""):
                fn = getattr(lib, f"{pre}get_corename64_", None) or getattr(lib, f"{pre}get_corename", None)
                if fn is not None:
                    fn.restype = ctypes.c_char_p
                    out.append(f"{Path(path).name} core={fn().decode()}")
                    break
        return "; ".join(out) + " (threadpoolctl not installed; OpenBLAS queried directly)"


def machine() -> list[str]:
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    import onnxruntime

    lines = [
        f"- CPU: {cpu} ({platform.machine()}), {os.cpu_count()} cores, this process on cores "
        f"{sorted(os.sched_getaffinity(0))}",
        f"- numpy {np.__version__}, onnxruntime {onnxruntime.__version__}; BLAS: {blas_info()}; "
        f"numpy's BLAS pool set to 1 thread (2 threads are not measured: OpenBLAS's pool spins after a call "
        f"and slowed whatever ran next 2.3x)",
        f"- OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}, "
        f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', '(unset)')}",
    ]
    return lines


def busy() -> str:
    """Load average and the busiest other processes (what else was running)."""
    try:
        ps = subprocess.run(["ps", "-eo", "pcpu,comm", "--sort=-pcpu"], capture_output=True, text=True, timeout=5)
        top = ", ".join(" ".join(r.split()) for r in ps.stdout.splitlines()[1:6])
    except (OSError, subprocess.SubprocessError):
        top = "ps unavailable"
    return f"load average {os.getloadavg()[0]:.2f}; top processes (%cpu command): {top}"


# ---------------------------------------------------------------------------- storage variants


def quant8(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x [KVH, L, hd] -> int8 codes [KVH, L, hd], per-token scales [KVH, L] (symmetric)."""
    scale = np.maximum(np.abs(x).max(-1), 1e-12) / 127.0  # [KVH, L]
    return np.round(x / scale[..., None]).astype(np.int8), scale.astype(np.float32)


def numpy_int8(q, k8, ks, v8, vs, k_new, v_new, block: int = 4096) -> np.ndarray:
    """The numpy kernel's loop over int8 K/V [KVH, L, hd] with per-token scales [KVH, L]."""
    kvh, g, n, hd = q.shape
    qs = (q * np.float32(1.0 / np.sqrt(hd))).reshape(kvh, g * n, hd)  # [KVH, G*n, hd]
    m, den, acc = start_with_chunk(qs, k_new, v_new, g)
    kb = np.empty((kvh, block, hd), np.float32)  # [KVH, b, hd] dequantisation scratch
    vb = np.empty_like(kb)
    for s0 in range(0, k8.shape[1], block):
        e = min(s0 + block, k8.shape[1])
        b = e - s0
        np.copyto(kb[:, :b], k8[:, s0:e])
        np.copyto(vb[:, :b], v8[:, s0:e])
        s = np.matmul(qs, kb[:, :b].transpose(0, 2, 1))  # [KVH, G*n, b]
        s *= ks[:, None, s0:e]
        bm = np.maximum(s.max(-1, keepdims=True), m)  # [KVH, G*n, 1]
        alpha = np.exp(m - bm)
        m[...] = bm
        np.exp(np.subtract(s, bm, out=s), out=s)
        den *= alpha
        den += s.sum(-1, keepdims=True)
        s *= vs[:, None, s0:e]
        acc *= alpha
        acc += np.matmul(s, vb[:, :b])
    return (acc / den).reshape(kvh, g, n, hd)


def ort_stored_graph(hd: int, kind: str) -> bytes:
    """The partial-softmax graph over fp16 K/V (Cast) or int8 K/V with per-token scales (DequantizeLinear)."""
    from onnx import TensorProto, helper

    f = TensorProto.FLOAT
    ins = [helper.make_tensor_value_info("q", f, ["M", hd])]
    nodes = []
    for x in ("k", "v"):
        if kind == "fp16":
            ins.append(helper.make_tensor_value_info(x, TensorProto.FLOAT16, ["L", hd]))
            nodes.append(helper.make_node("Cast", [x], [f"{x}f"], to=f))
        else:
            ins += [
                helper.make_tensor_value_info(x, TensorProto.INT8, ["L", hd]),
                helper.make_tensor_value_info(f"{x}s", f, ["L"]),
            ]
            nodes.append(helper.make_node("DequantizeLinear", [x, f"{x}s"], [f"{x}f"], axis=0))
    nodes += [
        helper.make_node("Transpose", ["kf"], ["kt"], perm=[1, 0]),
        helper.make_node("MatMul", ["q", "kt"], ["s"]),
        helper.make_node("ReduceMax", ["s"], ["m"], axes=[1], keepdims=1),
        helper.make_node("Sub", ["s", "m"], ["d"]),
        helper.make_node("Exp", ["d"], ["p"]),
        helper.make_node("ReduceSum", ["p", "ax"], ["den"], keepdims=1),
        helper.make_node("MatMul", ["p", "vf"], ["acc"]),
    ]
    outs = [
        helper.make_tensor_value_info("acc", f, ["M", hd]),
        helper.make_tensor_value_info("m", f, ["M", 1]),
        helper.make_tensor_value_info("den", f, ["M", 1]),
    ]
    graph = helper.make_graph(
        nodes, f"partial_softmax_{kind}", ins, outs, initializer=[helper.make_tensor("ax", TensorProto.INT64, [1], [1])]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def ort_stored(kind: str, threads: int = 1) -> Callable:
    """-> f(q, feeds per head, k_new, v_new): the OrtEngine loop over fp16 or int8 storage (numpy feeds)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    sess = ort.InferenceSession(ort_stored_graph(HD, kind), sess_options=so, providers=["CPUExecutionProvider"])

    def run(q, heads: list[dict[str, np.ndarray]], k_new, v_new) -> np.ndarray:
        kvh, g, n, hd = q.shape
        qs = np.ascontiguousarray((q * np.float32(1.0 / np.sqrt(hd))).reshape(kvh, g * n, hd))
        m, den, acc = start_with_chunk(qs, k_new, v_new, g)
        for h, feed in enumerate(heads):
            o_acc, o_m, o_den = sess.run(None, {"q": qs[h], **feed})
            merge_partial(m[h], den[h], acc[h], o_m, o_den, o_acc)
        return (acc / den).reshape(kvh, g, n, hd)

    return run


def torch_sdpa(threads: int) -> Callable | None:
    try:
        import torch
    except ImportError:
        return None

    def run(q, kbuf, vbuf, L: int, k_new, v_new) -> np.ndarray:
        torch.set_num_threads(threads)
        n = q.shape[2]
        kbuf[:, L : L + n] = k_new  # the chunk written after the history, as FullKV appends it
        vbuf[:, L : L + n] = v_new
        kt = torch.from_numpy(kbuf)[None, :, : L + n]  # [1, KVH, L+n, hd] (a strided view, no copy)
        vt = torch.from_numpy(vbuf)[None, :, : L + n]
        qt = torch.from_numpy(q.reshape(1, -1, n, q.shape[-1]))  # [1, H, n, hd]
        mask = torch.ones(n, L + n, dtype=torch.bool).tril(L)  # [n, L+n]
        with torch.no_grad():
            o = torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, enable_gqa=True)
        return o.numpy().reshape(q.shape)

    return run


# ---------------------------------------------------------------------------- one size


def make_layer(L: int, rng) -> dict:
    """One layer's KV in every storage form: [KVH, cap, hd] buffers with spare capacity (as GrowingArray)."""
    cap = L + L // 2 + 16
    kbuf = rng.standard_normal((KVH, cap, HD), dtype=np.float32)  # [KVH, cap, hd]
    vbuf = rng.standard_normal((KVH, cap, HD), dtype=np.float32)
    K, V = kbuf[:, :L], vbuf[:, :L]  # [KVH, L, hd] views
    K16, V16 = K.astype(np.float16), V.astype(np.float16)
    (k8, ks), (v8, vs) = quant8(K), quant8(V)
    return {
        "kbuf": kbuf,
        "vbuf": vbuf,
        "L": L,
        "seg": [Segment(K, V)],
        "seg16": [Segment(K16, V16)],
        "i8": (k8, ks, v8, vs),
        "h16": [{"k": K16[h], "v": V16[h]} for h in range(KVH)],
        "h8": [{"k": k8[h], "ks": ks[h], "v": v8[h], "vs": vs[h]} for h in range(KVH)],
        "bytes": {
            "fp32": K.nbytes + V.nbytes,
            "fp16": K16.nbytes + V16.nbytes,
            "int8": k8.nbytes + v8.nbytes + ks.nbytes + vs.nbytes,
        },
    }


def variants(q, k_new, v_new, with_torch: bool) -> dict[str, tuple[Callable, str]]:
    """name -> (call on a layer from make_layer, the storage form it reads)."""
    npk = NumpyEngine()
    o1, o2 = OrtEngine(threads=1, numpy_below=1), OrtEngine(threads=2, numpy_below=1)  # the graph for every head

    f16, i8 = ort_stored("fp16"), ort_stored("int8")
    out: dict[str, tuple[Callable, str]] = {
        "numpy attend (old)": (lambda lay: attend_old(q, lay["seg"][0].k, lay["seg"][0].v, k_new, v_new), "fp32"),
        "numpy kernel": (lambda lay: npk.attend(q, lay["seg"], k_new, v_new), "fp32"),
        "ort-cpu 1 thread": (lambda lay: o1.attend(q, lay["seg"], k_new, v_new), "fp32"),
        "ort-cpu 2 threads": (lambda lay: o2.attend(q, lay["seg"], k_new, v_new), "fp32"),
        "numpy kernel, fp16 KV": (lambda lay: npk.attend(q, lay["seg16"], k_new, v_new), "fp16"),
        "numpy kernel, int8 KV": (lambda lay: numpy_int8(q, *lay["i8"], k_new, v_new), "int8"),
        "ort-cpu 1 thread, fp16 KV": (lambda lay: f16(q, lay["h16"], k_new, v_new), "fp16"),
        "ort-cpu 1 thread, int8 KV": (lambda lay: i8(q, lay["h8"], k_new, v_new), "int8"),
    }
    if with_torch:
        for t in (1, 2):
            f = torch_sdpa(t)
            if f is not None:
                out[f"torch sdpa {t} thread{'s' * (t > 1)} (reference)"] = (
                    lambda lay, f=f: f(q, lay["kbuf"], lay["vbuf"], lay["L"], k_new, v_new),
                    "fp32",
                )
    return out


def bench_size(
    L: int,
    n: int,
    repeats: int,
    with_torch: bool,
    rng,
    working_set: int,
    clock: Callable[[], float] = time.perf_counter,
) -> list[dict]:
    """Calls cycle through `copies` layers of KV (about `working_set` bytes of fp32 K+V, at most 30 layers as
    SmolLM2 has), so each call reads KV that is not in cache, as a frame walking the layers does."""
    copies = int(min(30, max(2, -(-working_set // (2 * KVH * L * HD * 4 or 1)))))
    layers = [make_layer(L, rng) for _ in range(copies)]
    q = rng.standard_normal((KVH, G, n, HD), dtype=np.float32)  # [KVH, G, n, hd]
    k_new = rng.standard_normal((KVH, n, HD), dtype=np.float32)  # [KVH, n, hd]
    v_new = rng.standard_normal((KVH, n, HD), dtype=np.float32)
    vs = variants(q, k_new, v_new, with_torch)
    ref = NumpyEngine().attend(q, layers[0]["seg"], k_new, v_new)  # [KVH, G, n, hd]
    times: dict[str, list[float]] = {k: [] for k in vs}
    err: dict[str, tuple[float, float]] = {}
    for name, (f, _) in vs.items():  # warm-up (sessions, scratch) and the error vs the fp32 kernel
        o = f(layers[0])
        err[name] = (float(np.abs(o - ref).max()), float(np.linalg.norm(o - ref) / np.linalg.norm(ref)))
    names, calls = list(vs), 0
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate the order each round
            lay = layers[calls % copies]
            calls += 1
            t0 = clock()
            vs[name][0](lay)
            times[name].append(clock() - t0)
    flops = 2 * 2 * KVH * G * n * L * HD  # QK^T and PV
    return [
        {
            "L": L,
            "n": n,
            "name": k,
            "s": statistics.median(times[k]),
            "bytes": layers[0]["bytes"][vs[k][1]],
            "flops": flops,
            "err": err[k],
            "copies": copies,
        }
        for k in names
    ]


def table(rows: list[dict], bw: float) -> list[str]:
    out = [
        "| history | new tokens | engine | ms | vs old | K+V GB/s | efficiency | GFLOP/s | max abs err | rel. L2 err |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    old = {(r["L"], r["n"]): r["s"] for r in rows if r["name"] == "numpy attend (old)"}
    for r in rows:
        gbs = r["bytes"] / r["s"] / 1e9
        out.append(
            f"| {r['L']:,} | {r['n']} | {r['name']} | {r['s'] * 1e3:.2f} | {old[r['L'], r['n']] / r['s']:.2f}x "
            f"| {gbs:.1f} | {gbs / bw:.0%} | {r['flops'] / r['s'] / 1e9:.0f} | {r['err'][0]:.1e} "
            f"| {r['err'][1]:.1e} |"
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 8000, 40000])
    ap.add_argument("--decode-sizes", type=int, nargs="*", default=[8000, 40000], help="history sizes for n=1")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--no-torch", action="store_true", help="skip the torch reference rows")
    ap.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="cpu: process CPU time (all threads), so that other processes on a shared machine do not "
        "show up as latency; multi-thread rows then count CPU-seconds, not latency",
    )
    ap.add_argument("--working-set", type=int, default=512, help="MiB of fp32 K+V the calls cycle through per size")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    limit_blas_threads(1)
    rng = np.random.default_rng(0)
    before, bw0 = busy(), read_bandwidth()
    rows = []
    for n, sizes in ((10, args.sizes), (1, args.decode_sizes)):
        for L in sizes:
            rows += bench_size(
                L,
                n,
                args.repeats,
                not args.no_torch,
                rng,
                args.working_set * 2**20,
                time.process_time if args.clock == "cpu" else time.perf_counter,
            )
    bw1, after = read_bandwidth(), busy()
    bw = (bw0 + bw1) / 2
    shown = ("sizes", "decode_sizes", "repeats", "working_set", "clock")
    flags = " ".join(
        f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
        for k, v in vars(args).items()
        if k in shown
    )
    copies = ", ".join(f"{L:,}: {c}" for L, c in dict((r["L"], r["copies"]) for r in rows).items())
    lines = [
        "# Host attention engines (SmolLM2 shapes: 9 query heads, 3 KV heads, head_dim 64)",
        "",
        f"    PYTHONPATH=$PWD python3 benchmarks/bench_attention.py {flags}",
        "",
        *machine(),
        f"- read bandwidth (numpy sum, 256 MiB f32): {bw0:.1f} GB/s before, {bw1:.1f} GB/s after; "
        f"efficiency uses their mean, {bw:.1f} GB/s",
        f"- before: {before}",
        f"- after: {after}",
        "",
        f"Clock: {args.clock}. Median of {args.repeats} calls per cell, all variants round-robin in one process, "
        f"each call on the next of the layer copies (history: copies; {copies}), so K+V is read from memory, "
        "not from a warm cache. "
        "K+V GB/s counts the bytes as stored (fp16: half, int8: a quarter plus fp32 per-token scales). "
        "Errors: against the fp32 numpy kernel on the same random data (N(0,1) q, k, v).",
        "",
        *table(rows, bw),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
