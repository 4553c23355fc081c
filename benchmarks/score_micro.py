"""CPU time of one ReSV selection (ClusterStore.score: masses + WiCSum) per scoring mode, one layer.

Random keys, so clusters hold ~1 token as the real post-RoPE keys do (benchmarks/results/
retrieval_fastpath.md); shapes of the embedded model (4 query heads, 2 KV heads, head_dim 64,
11-token frame chunks) or SmolLM2 (9 / 3 / 64, 10-token chunks). Timing only: fidelity is
measured on real text and video (benchmarks/results/resv_defaults.md).

    OPENBLAS_NUM_THREADS=1 python3 benchmarks/score_micro.py --model embedded --tokens 6000
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from vrex_edge.bundle import TextSpec
from vrex_edge.runtime.retrieval import make_policy
from vrex_edge.runtime.rope import Rope
from vrex_edge.testing.tiny import layer_text

SHAPES = {"embedded": (4, 2, 64, 11), "smollm2": (9, 3, 64, 10)}  # heads, KV heads, head_dim, chunk


def spec(h: int, kvh: int, hd: int) -> TextSpec:
    return layer_text(h=h, kvh=kvh, hd=hd, max_positions=65536)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=tuple(SHAPES), default="embedded")
    ap.add_argument("--tokens", type=int, default=6000)
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument(
        "--modes",
        nargs="+",
        default=["exact", "subset", "score_queries=4", "mean", "prefilter", "prefilter=0.25"],
        help="score=<mode>, or an option of a mode (score_queries=N: subset, prefilter=F: prefilter)",
    )
    args = ap.parse_args()
    h, kvh, hd, n = SHAPES[args.model]
    text = spec(h, kvh, hd)
    cache = make_policy("resv", dense_below=0)(0, text, Rope(text.rope))
    rng = np.random.default_rng(0)
    pos = 0
    while pos < args.tokens:
        q = rng.standard_normal((h, n, hd)).astype(np.float32)
        k = rng.standard_normal((kvh, n, hd)).astype(np.float32)
        cache.attend(q, k, k.copy(), np.arange(pos, pos + n), phase="prefill")
        pos += n
    st = cache.store
    q = rng.standard_normal((kvh, h // kvh * n, hd)).astype(np.float32)
    print(f"{args.model}: {int(st.nclu.mean()):,} clusters per KV head, {args.tokens:,} tokens, chunk {n}")
    print("| scoring | ms per layer and call (CPU) | vs exact |")
    print("|---|---|---|")
    base = None
    for m in args.modes:
        key, _, val = m.partition("=")
        st.score_mode, st.score_queries, st.prefilter = "exact", 2, 0.5
        if key == "score_queries":
            st.score_mode, st.score_queries = "subset", int(val)
        elif key == "prefilter" and val:
            st.score_mode, st.prefilter = "prefilter", float(val)
        else:
            st.score_mode = key
        st.score(q, tau=0.9)
        t0 = time.process_time()
        for _ in range(args.calls):
            st.score(q, tau=0.9)
        ms = (time.process_time() - t0) / args.calls * 1e3
        base = base or ms
        print(f"| {m} | {ms:.3f} | {ms / base:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
