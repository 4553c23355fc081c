"""One layer's cache call (a chunk of --new tokens: retrieval, attention, append) for full and resv with
the KV in host memory, all on the device, and under a device budget of 1/4 of the KV (issue 16, item 3).

SmolLM2 shapes by default (9 query heads over 3 KV heads, head_dim 64), histories of 1K / 8K / 40K.
Each variant fills `--layers` cache copies and calls them in turn (as a model's layers would be called);
medians of --repeats calls after 3 warm-ups per copy. Variants:

  full host      FullKV with the default host engine (the CPU path)
  full device    DeviceFullKV: every token on the device (kernels/ort_cuda.py)
  full offload   DeviceFullKV whose oldest 3/4 of the KV lives in host memory and is copied to the device
                 before every call (what transformers' OffloadedCache streams per layer), 1/4 resident
  resv host      ReSVCache (host retrieval and attention)
  resv device    DeviceReSVKV: KV, cluster table, scoring, selection and attention in one device run per
                 call (retrieval/device_resv.py)
  resv offload   DeviceReSVKV with the selection on the host (so the selected rows are known there, as a tier
                 needs: two device runs per call) plus, per call, the host gather and device copy of the
                 selected tokens that lie in the offloaded 3/4: a cost model of the tiered device path,
                 which is not built (attention still reads those tokens from the device arena)

The offload copies are synchronous from pageable numpy memory (OffloadedCache uses pinned memory and
overlaps the next layer's copy with this layer's compute), so "full offload" is a pessimistic baseline.
Keys are synthetic: `--pool` centroids per head plus `--noise`, with queries near `--hot` of them, so resv
keeps part of the history (the "kept" column says how much); they cluster before RoPE, hence resv's
`keys=pre` by default (--resv-opt). `--no-cuda` runs the device variants on
onnxruntime's CPU provider (same graphs; checks the script on a machine without a GPU).

    python benchmarks/bench_gpu_caches.py
    python benchmarks/bench_gpu_caches.py --sizes 1000 8000 --no-cuda --layers 2 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

VARIANTS = ("full host", "full device", "full offload", "resv host", "resv device", "resv offload")


def text_spec(h: int, kvh: int, hd: int, max_positions: int):
    from vrex_edge.bundle import RopeSpec, TextSpec

    inv = tuple(float(x) for x in 1.0 / (10000.0 ** (np.arange(0, hd, 2) / hd)))
    return TextSpec(
        num_layers=1,
        hidden_size=h * hd,
        num_heads=h,
        num_kv_heads=kvh,
        head_dim=hd,
        vocab_size=32,
        max_positions=max_positions,
        rms_norm_eps=1e-5,
        rope=RopeSpec(theta=10000.0, inv_freq=inv),
    )


class Stream:
    """Synthetic keys around centroids; the queries of a call lean towards a few hot centroids."""

    def __init__(self, args: argparse.Namespace, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.kvh, self.h, self.hd, self.noise = args.kv_heads, args.heads, args.head_dim, args.noise
        self.cent = self.rng.standard_normal((self.kvh, args.pool, self.hd)).astype(np.float32)
        self.hot, self.focus = args.hot, args.focus

    def kv(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """-> k, v [KVH, n, hd] un-rotated."""
        pick = self.rng.integers(0, self.cent.shape[1], size=(self.kvh, n))
        k = np.take_along_axis(self.cent, pick[..., None], axis=1)
        k = (k + self.noise * self.rng.standard_normal(k.shape)).astype(np.float32)
        return k, self.rng.standard_normal(k.shape).astype(np.float32)

    def chunk(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """-> q [H, n, hd], k, v [KVH, n, hd]."""
        g = self.h // self.kvh
        hot = self.cent[:, self.rng.integers(0, self.hot, size=n)]  # [KVH, n, hd]
        q = np.repeat(hot, g, axis=0) * self.focus + self.rng.standard_normal((self.h, n, self.hd))
        k, v = self.kv(n)
        return q.astype(np.float32), k, v


def build(variant: str, L: int, text, rope, stream: Stream, dev, new: int, resv_opt: dict[str, str]):
    """A cache filled with L tokens, and its call (q, k, v, positions) -> output; plus an upload counter."""
    from vrex_edge.runtime.retrieval import FullKV, make_policy
    from vrex_edge.runtime.retrieval.device_resv import DeviceReSVKV
    from vrex_edge.runtime.retrieval.full import DeviceFullKV
    from vrex_edge.runtime.retrieval.policy import Policy
    from vrex_edge.runtime.retrieval.registry import get_spec
    from vrex_edge.runtime.retrieval.resv import ReSVOptions

    k, v = stream.kv(L)
    pos = np.arange(L)
    policy, where = variant.split()
    moved = [0]  # bytes copied host -> device by the offload model, summed over calls
    if policy == "full":
        cache = FullKV(text, rope) if where == "host" else DeviceFullKV(text, rope, engine=dev)
        cache.restore({"k": rope.apply(k, pos), "v": v})
    else:
        spec = get_spec("resv")
        if where == "host":
            cache = make_policy("resv", resv_opt)(0, text, rope)
        else:
            pol = Policy(spec, spec.options.parse(resv_opt), device="cuda", device_engine=dev)
            assert isinstance(pol.options, ReSVOptions)  # offload: the host-selection path (its rows are known)
            cache = DeviceReSVKV(0, text, rope, pol.options, policy=pol, engine=dev, fused=where == "device")
        cache.extend(k, v, pos, chunk=new)
    off = 3 * L // 4  # rows 0 .. off-1 live in host memory under the 1/4 budget
    host_k = np.ascontiguousarray(rope.apply(k[:, :off], pos[:off]).transpose(1, 0, 2))  # [off, KVH, hd]
    host_v = np.ascontiguousarray(v[:, :off].transpose(1, 0, 2))
    scratch = dev.new_kv(text.num_kv_heads, text.head_dim, off) if where == "offload" and policy == "resv" else None

    def call(q: np.ndarray, kn: np.ndarray, vn: np.ndarray, p: np.ndarray) -> np.ndarray:
        if where == "offload" and policy == "full":  # stream the offloaded 3/4 in before attending
            dev.write(cache.kv, 0, host_k, host_v)
            moved[0] += host_k.nbytes + host_v.nbytes
        out = cache.attend(q, kn, vn, p, phase="prefill")
        if scratch is not None:  # the selected tokens resv would have fetched from host memory
            rows = np.unique(np.concatenate(cache.selected_rows()))
            rows = rows[rows < off]
            dev.write(scratch, 0, host_k[rows], host_v[rows])
            moved[0] += 2 * host_k[rows].nbytes
        return out

    return cache, call, moved


def median_ms(fn: Callable[[], object], repeats: int, warm: int) -> float:
    for _ in range(warm):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(ts)


def parse_pairs(pairs: list[str], where: str) -> dict[str, str]:
    from vrex_edge.runtime.retrieval.options import parse_pairs as parse

    return parse(pairs, where=where)


def time_variant(variant: str, L: int, args: argparse.Namespace, text, rope, dev) -> tuple[float, float, float]:
    """-> (median ms per call, kept fraction of the history, MiB copied host -> device per call)."""
    stream = Stream(args, seed=L)  # the same keys and queries for every variant
    opt = parse_pairs(args.resv_opt, where="--resv-opt")
    built = [build(variant, L, text, rope, stream, dev, args.new, opt) for _ in range(args.layers)]
    pos = [L] * args.layers
    turn = [0]

    def one() -> None:
        i = turn[0] % args.layers
        turn[0] += 1
        q, k, v = stream.chunk(args.new)
        built[i][1](q, k, v, np.arange(pos[i], pos[i] + args.new))
        pos[i] += args.new

    ms = median_ms(one, args.repeats * args.layers, 3 * args.layers)
    st = built[0][0].stats()
    kept = float(np.mean(st.kept)) / max(st.history, 1)
    return ms, kept, sum(b[2][0] for b in built) / turn[0] / 2**20


def bench_size(L: int, args: argparse.Namespace, dev) -> list[str]:
    from vrex_edge.runtime.rope import Rope

    text = text_spec(args.heads, args.kv_heads, args.head_dim, max_positions=4 * L + 65536)
    rope = Rope(text.rope)
    rows, base = [], {}
    for variant in args.variants:
        ms, kept, up = time_variant(variant, L, args, text, rope, dev)
        base[variant] = ms
        rel = [f"{base[r] / ms:.2f}x" if r in base else "-" for r in ("full device", "full offload")]
        rows.append(f"| {L:,} | {variant} | {ms:.3f} | {rel[0]} | {rel[1]} | {100 * kept:.0f}% | {up:.1f} |")
    return rows


def main(argv: list[str] | None = None) -> None:
    from vrex_edge.runtime.kernels.ort_cuda import OrtDeviceEngine

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 8000, 40000])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS, metavar="VARIANT")
    ap.add_argument("--heads", type=int, default=9)
    ap.add_argument("--kv-heads", type=int, default=3)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--new", type=int, default=10, help="new tokens per call")
    ap.add_argument("--layers", type=int, default=4, help="filled cache copies called in turn")
    ap.add_argument("--repeats", type=int, default=20, help="timed calls per copy")
    ap.add_argument("--pool", type=int, default=2000, help="key centroids per KV head")
    ap.add_argument("--noise", type=float, default=0.3, help="key noise around its centroid")
    ap.add_argument("--hot", type=int, default=50, help="centroids the queries lean towards")
    ap.add_argument("--focus", type=float, default=1.5, help="how hard (lower: resv keeps more; 1.5: about 1/5 of 8K)")
    ap.add_argument(
        "--resv-opt",
        nargs="*",
        default=["keys=pre"],
        help="resv options (default keys=pre: the synthetic keys cluster before RoPE, not after it)",
    )
    ap.add_argument("--no-cuda", action="store_true", help="device variants on the CPU provider")
    args = ap.parse_args(argv)
    dev = OrtDeviceEngine(device="cpu" if args.no_cuda else "cuda")
    print(
        "| history | variant | ms per call | vs full device | vs full offload | kept (history) "
        "| MiB host->device per call (offload) |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|")
    for L in args.sizes:
        for row in bench_size(L, args, dev):
            print(row, flush=True)


if __name__ == "__main__":
    main()
