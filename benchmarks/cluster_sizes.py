"""How much ReSV's hash-bit clustering compresses real text keys (SmolLM2-135M, absolute positions).

    python3 benchmarks/cluster_sizes.py --size 4000 --variants resv resv:hamming=8 resv:hamming=12

Fills each variant's caches with the real KV of the first --size tokens of the reference text and
prints clusters per (layer, KV head) and tokens per cluster. Scoring costs one representative per
cluster, so at ~1 token per cluster selection costs about as much as full attention's QK.
"""

from __future__ import annotations

import argparse

import numpy as np

from vrex_edge.bench.policies import make_filled
from vrex_edge.bench.streams import load_workload


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4000)
    ap.add_argument("--variants", nargs="+", default=["resv", "resv:hamming=8", "resv:hamming=12"])
    args = ap.parse_args()
    wl = load_workload("text")
    wl.prepare(args.size)
    print("| variant | clusters per layer x KV head (mean) | tokens per cluster |")
    print("|---|---|---|")
    for var in args.variants:
        built, _ = make_filled(wl, ["full", var], args.size)
        stores = [c.store for c in built[var]]  # type: ignore[attr-defined]
        nclu = np.array([s.nclu for s in stores])  # [layers, KVH]
        tokens = sum(int(s.counts.sum()) for s in stores)
        print(f"| `{var}` | {nclu.mean():,.0f} | {tokens / nclu.sum():.2f} |", flush=True)


if __name__ == "__main__":
    main()
