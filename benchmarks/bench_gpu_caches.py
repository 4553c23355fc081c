"""One layer's cache call (a chunk of --new tokens: retrieval, attention, append) for full and resv with
the KV in host memory, all on the device, and under a device budget of 1/4 of the KV (issue 16, item 3).

SmolLM2 shapes by default (9 query heads over 3 KV heads, head_dim 64, 30 layers), histories of 1K / 8K /
40K. Each variant fills `--layers` cache copies and calls them in turn (as a model's layers would be
called); medians of --repeats calls after 3 warm-ups per copy. Variants:

  full host      FullKV with the default host engine (the CPU path)
  full device    DeviceFullKV: every token on the device (kernels/ort_cuda.py)
  full offload   OffloadedFullKV (retrieval/full.py): the oldest 1/4 of the KV on the device, the other 3/4
                 in host memory, copied to the device by every call (one bulk copy each for k and v), then
                 attention over all of it: what transformers' OffloadedCache streams per layer
  resv host      ReSVCache (host retrieval and attention)
  resv device    DeviceReSVKV: KV, cluster table, scoring, selection and attention in one device run per
                 call (retrieval/device_resv.py)
  resv budget    BudgetReSVKV (retrieval/device_tiers.py): at most 1/4 of the KV on the device (slots: sink,
                 recent window, chunk, the recently selected rows; the cluster table beside them), every
                 token in host memory; per call the device's masses, the host's selection, and one run that
                 writes the selected rows not resident into the least recently used slots and attends

The host-to-device copies go from pageable numpy memory and are synchronous (OffloadedCache uses pinned
memory and overlaps the next layer's copy with this layer's compute), for both offloaded variants; the
last column is the KV bytes each call copies in (the chunk's own k/v, the same for every variant, aside).
Keys are synthetic: `--pool` centroids per head plus `--noise`, with queries near `--hot` of them, so resv
keeps part of the history (the "kept" column says how much); they cluster before RoPE, hence resv's
`keys=pre` by default (--resv-opt). `--no-cuda` runs the device variants on onnxruntime's CPU provider
(same graphs; checks the script on a machine without a GPU).

    python benchmarks/bench_gpu_caches.py
    python benchmarks/bench_gpu_caches.py --sizes 1000 8000 --no-cuda --layers 2 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

VARIANTS = ("full host", "full device", "full offload", "resv host", "resv device", "resv budget")


def text_spec(h: int, kvh: int, hd: int, max_positions: int):
    from vrex_edge.testing.tiny import layer_text

    return layer_text(h=h, kvh=kvh, hd=hd, max_positions=max_positions)


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
    """A cache filled with L tokens and its call (q, k, v, positions) -> output; the device budget of
    the offloaded variants is 1/4 of the L tokens' KV."""
    from vrex_edge.runtime.retrieval import FullKV, make_policy
    from vrex_edge.runtime.retrieval.device_resv import DeviceReSVKV
    from vrex_edge.runtime.retrieval.device_tiers import BudgetReSVKV
    from vrex_edge.runtime.retrieval.full import DeviceFullKV, OffloadedFullKV
    from vrex_edge.runtime.retrieval.policy import Policy
    from vrex_edge.runtime.retrieval.registry import get_spec
    from vrex_edge.runtime.retrieval.resv import ReSVOptions

    k, v = stream.kv(L)
    pos = np.arange(L)
    policy, where = variant.split()
    quarter = L // 4  # tokens of the device budget
    if policy == "full":
        if where == "host":
            cache = FullKV(text, rope)
        elif where == "device":
            cache = DeviceFullKV(text, rope, engine=dev)
        else:
            cache = OffloadedFullKV(text, rope, engine=dev, resident=quarter)
        cache.restore({"k": rope.apply(k, pos), "v": v})
    else:
        spec = get_spec("resv")
        if where == "host":
            cache = make_policy("resv", resv_opt)(0, text, rope)
        else:
            pol = Policy(spec, spec.options.parse(resv_opt), device="cuda", device_engine=dev)
            assert isinstance(pol.options, ReSVOptions)
            if where == "device":
                cache = DeviceReSVKV(0, text, rope, pol.options, policy=pol, engine=dev)
            else:
                row = 2 * text.num_kv_heads * text.head_dim * 4  # bytes of one token's k/v
                cache = BudgetReSVKV(0, text, rope, pol.options, policy=pol, engine=dev, budget=quarter * row)
        cache.extend(k, v, pos, chunk=new)
    return cache


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
    """-> (median ms per call, kept fraction of the history, MiB of KV copied host -> device per call)."""
    stream = Stream(args, seed=L)  # the same keys and queries for every variant
    opt = parse_pairs(args.resv_opt, where="--resv-opt")
    caches = [build(variant, L, text, rope, stream, dev, args.new, opt) for _ in range(args.layers)]
    pos = [L] * args.layers
    turn, moved = [0], [0]

    def one() -> None:
        i = turn[0] % args.layers
        turn[0] += 1
        q, k, v = stream.chunk(args.new)
        caches[i].attend(q, k, v, np.arange(pos[i], pos[i] + args.new), phase="prefill")
        moved[0] += getattr(caches[i], "last_upload", 0)
        pos[i] += args.new

    ms = median_ms(one, args.repeats * args.layers, 3 * args.layers)
    if args.torch_profile:
        kernel_table(f"{variant} at {L:,}", lambda: [one() for _ in range(args.layers)])
    st = caches[0].stats()
    kept = float(np.mean(st.kept)) / max(st.history, 1)
    return ms, kept, moved[0] / turn[0] / 2**20


def kernel_table(title: str, fn: Callable[[], object]) -> None:
    """The CUDA kernels and copies of fn (torch's profiler: CUPTI sees onnxruntime's kernels too)."""
    try:
        import torch
        from torch.profiler import ProfilerActivity, profile
    except ImportError:
        print("torch not installed: no kernel table")
        return
    if not torch.cuda.is_available():
        print("torch has no CUDA: no kernel table")
        return
    torch.cuda.init()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
    print(f"kernels of {title}:")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=20, max_name_column_width=70))


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
    ap.add_argument("--layers", type=int, default=30, help="filled cache copies called in turn (SmolLM2: 30)")
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
    ap.add_argument("--torch-profile", action="store_true", help="kernel table of each variant (torch with CUDA)")
    args = ap.parse_args(argv)
    dev = OrtDeviceEngine(device="cpu" if args.no_cuda else "cuda")
    print(
        "| history | variant | ms per call | vs full device | vs full offload | kept (history) "
        "| MiB of KV host->device per call |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|")
    for L in args.sizes:
        for row in bench_size(L, args, dev):
            print(row, flush=True)


if __name__ == "__main__":
    main()
