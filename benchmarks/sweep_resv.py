"""One-at-a-time sweep of resv's options around its DEFAULTS on real text within the context.

Hash bits, Hamming threshold, candidate horizon, max cluster size, sink / recent, pre- vs
post-RoPE keys and the scoring mode (tau: benchmarks/pareto.py); every variant in one run, in
lockstep on the same stream, against full. Writes resv_sweep.md (the table; the conclusion is
added by hand under it). The sweep against every task: benchmarks/results/resv_defaults.md.

    python3 benchmarks/sweep_resv.py --size 4000 --frames 30 --out benchmarks/results/resv_sweep.md
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from vrex_edge.bench.policies import run_bench
from vrex_edge.bench.report import counts_note, table
from vrex_edge.bench.streams import load_workload
from vrex_edge.runtime.retrieval.resv import ReSVOptions

DEFAULTS = ReSVOptions().resolved()

# option -> values tried (the default is the plain `resv` row); tau is swept by benchmarks/pareto.py
SWEEP: dict[str, list[object]] = {
    "bits": [16, 64],
    "hamming": [1, 4],
    "horizon": [32, 512],
    "max_cluster": [16, 64],
    "sink": [4],
    "recent": [64, 128, 256, 512],
    "keys": ["pre"],
    "score": ["subset", "prefilter"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4000)
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--gen", type=int, default=8)
    ap.add_argument("--probes", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/resv_sweep.md"))
    args = ap.parse_args()
    variants = ["full", "resv"] + [f"resv:{k}={v}" for k, vals in SWEEP.items() for v in vals if v != DEFAULTS[k]]
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    wl = load_workload("text", progress=log)
    res = run_bench(wl, variants, [args.size], frames=args.frames, gen=args.gen, probes=args.probes, progress=log)
    defaults = ", ".join(
        f"{k}={v}" for k, v in DEFAULTS.items() if k in SWEEP or k in ("tau", "positions", "cluster_batch")
    )
    md = "\n".join(
        [
            "# resv defaults sweep (one option at a time)",
            "",
            "```",
            "python3 " + shlex.join(sys.argv),
            "```",
            "",
            f"Workload: {wl.description}; {args.size:,}-token cache of real text, absolute positions. "
            f"Defaults at the time of the run: {defaults}.",
            "",
            counts_note(res, wl.chunk),
            "",
            table(res),
            "",
        ]
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(md, encoding="utf-8")
    print(md)


if __name__ == "__main__":
    main()
