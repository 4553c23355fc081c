"""Retrieval policies side by side (thin script over vrex_edge.bench, the code behind `vrex-edge bench`).

All variants run in one process, in lockstep on the same stream: per-frame latency (median, p95),
speedup vs full, history kept in prefill and in generation, and fidelity vs full (top-1, KL,
identical greedy replies). Writes policies_<workload>.md, latency_<workload>.png and
heatmap_<workload>.png to --out.

    python3 benchmarks/bench_policies.py --workload text --sizes 1000 4000 10000 40000 \
        --policies full resv resv:tau=0.95 topk window --out benchmarks/results
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from vrex_edge.bench import run
from vrex_edge.runtime.retrieval.options import parse_pairs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", choices=("text", "video"), default="text")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 40000])
    ap.add_argument("--policies", nargs="+", default=["full", "resv", "topk", "window"], help="policy[:key=val,...]")
    ap.add_argument("--opt", nargs="*", default=[], help="key=value for every policy that takes it")
    ap.add_argument("--accel", nargs="*", default=[], help="retrieval backends for the resv rows")
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--gen", type=int, default=8)
    ap.add_argument("--probes", type=int, default=2)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    report = run(
        workload=args.workload,
        sizes=args.sizes,
        policies=args.policies,
        options=parse_pairs(args.opt),
        accels=args.accel,
        frames=args.frames,
        gen=args.gen,
        probes=args.probes,
        out=args.out,
        bundle=args.model,
        command="python3 " + shlex.join(sys.argv),
        progress=lambda m: print(m, file=sys.stderr),
    )
    print(report.markdown)


if __name__ == "__main__":
    main()
