"""Chunk attention time of the ort-cuda engine (KV in device memory) vs ort-cpu (KV in host memory).

SmolLM2 shapes by default: 9 query heads over 3 KV heads, head_dim 64, 10 new tokens per call, at
histories of 1K / 8K / 40K tokens. Each call attends to one of `--layers` KV copies in turn (so the
history does not sit in a cache as one layer's would). ort-cuda: `attend_append` (the chunk is also
written into the device arena in the same run; the arena is reset to the history length after each
call) and `attend` (no append). ort-cpu: the default host engine over [KVH, cap, hd] numpy buffers.
Medians of `--repeats` calls after 3 warm-ups; errors vs the float64 numpy reference.

    python benchmarks/bench_gpu_attention.py                    # needs onnxruntime-gpu and a GPU
    taskset -c 2 python benchmarks/bench_gpu_attention.py --no-cuda
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def median_ms(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(ts)


def main(argv: list[str] | None = None) -> None:
    from vrex_edge.runtime import kernels
    from vrex_edge.runtime.kernels.ort_cuda import OrtDeviceEngine

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 8000, 40000])
    ap.add_argument("--heads", type=int, default=9)
    ap.add_argument("--kv-heads", type=int, default=3)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--new", type=int, default=10, help="new tokens per call")
    ap.add_argument("--layers", type=int, default=8, help="KV copies cycled through")
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--no-cuda", action="store_true")
    ap.add_argument("--forms", nargs="+", default=["auto"], help="ort-cuda graph forms (ort_cuda.ENGINE_FORMS)")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    cpu = kernels.make_engine("ort-cpu")
    devs = [] if args.no_cuda else [OrtDeviceEngine(form=form) for form in args.forms]
    print("| history | new tokens | engine | ms per call | vs ort-cpu | max abs err vs reference |")
    print("|---:|---:|---|---:|---:|---:|")
    for L in args.sizes:
        for row in bench_size(L, args, cpu, devs, rng):
            print(row, flush=True)


def bench_size(L: int, args: argparse.Namespace, cpu, devs, rng: np.random.Generator) -> list[str]:
    """The table rows of one history length L."""
    from vrex_edge.runtime.kernels import Segment
    from vrex_edge.runtime.kernels.reference import attend_reference

    kvh, hd, n, g = args.kv_heads, args.head_dim, args.new, args.heads // args.kv_heads
    q = rng.standard_normal((kvh, g, n, hd)).astype(np.float32)  # [KVH, G, n, hd]
    k_new, v_new = (rng.standard_normal((kvh, n, hd)).astype(np.float32) for _ in range(2))  # [KVH, n, hd]
    host = [
        (
            rng.standard_normal((kvh, L + n, hd)).astype(np.float32),
            rng.standard_normal((kvh, L + n, hd)).astype(np.float32),
        )
        for _ in range(args.layers)
    ]  # [KVH, cap, hd]
    lens = np.full(kvh, L, np.int64)
    ref = attend_reference(q, [Segment(host[0][0], host[0][1], lens)], k_new, v_new)
    calls = [0]

    def layer() -> int:
        calls[0] += 1
        return (calls[0] - 1) % args.layers

    def run_cpu():
        k, v = host[layer()]
        return cpu.attend(q, [Segment(k, v, lens)], k_new, v_new)

    rows = []
    t_cpu = median_ms(run_cpu, args.repeats)
    calls[0] = 0
    err = float(np.abs(run_cpu() - ref).max())
    rows.append(f"| {L:,} | {n} | ort-cpu (host KV) | {t_cpu:.3f} | 1.00x | {err:.1e} |")
    for dev in devs:
        rows += bench_device(L, args, dev, host, q, k_new, v_new, ref, layer, calls, t_cpu)
    return rows


def bench_device(L, args, dev, host, q, k_new, v_new, ref, layer, calls, t_cpu) -> list[str]:
    """The ort-cuda rows of one engine (one graph form)."""
    from vrex_edge.runtime.kernels import Segment

    kvh, hd, n = args.kv_heads, args.head_dim, args.new
    rows, arenas = [], []
    for k, v in host:
        kv = dev.new_kv(kvh, hd, L + n)
        dev.upload(kv, k[:, :L], v[:, :L])
        arenas.append(kv)

    def run_append():
        kv = arenas[layer()]
        out = dev.attend_append(q, kv, k_new, v_new)
        kv.n = L  # keep the history length fixed (rows past L are overwritten by the next call)
        return out

    def run_attend():
        kv = arenas[layer()]
        return dev.attend(q, [Segment(kv, kv)], k_new, v_new)

    tag = f"form {dev.form}"
    runs = ((f"ort-cuda attend_append (device KV, {tag})", run_append), (f"ort-cuda attend ({tag})", run_attend))
    for label, fn in runs:
        t = median_ms(fn, args.repeats)
        calls[0] = 0  # layer 0, the one `ref` was computed on
        err = float(np.abs(fn() - ref).max())
        rows.append(f"| {L:,} | {n} | {label} | {t:.3f} | {t_cpu / t:.2f}x | {err:.1e} |")
    return rows


if __name__ == "__main__":
    main()
