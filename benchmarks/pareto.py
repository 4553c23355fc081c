"""Pareto curves on real text within the context: history kept vs KL and vs top-1, for resv
(tau sweep), topk (k sweep) and the oracle (exact per-token attention mass, tau sweep).

One run, all variants in lockstep on the same stream (vrex_edge.bench). Writes pareto_text.md
and pareto_text.png to --out.

    python3 benchmarks/pareto.py --size 4000 --frames 30 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from vrex_edge.bench.policies import run_bench
from vrex_edge.bench.report import counts_note, pareto_points, plot_pareto
from vrex_edge.bench.streams import load_workload


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4000, help="cached tokens (inside the trained context)")
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--taus", type=float, nargs="+", default=[0.7, 0.8, 0.9, 0.95, 0.98, 0.99])
    ap.add_argument("--ks", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.3, 0.5])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args()
    variants = [
        "full",
        *[f"resv:tau={t}" for t in args.taus],
        *[f"topk:k={k}" for k in args.ks],
        *[f"oracle:tau={t}" for t in args.taus],
    ]
    wl = load_workload("text", progress=lambda m: print(m, file=sys.stderr))
    res = run_bench(
        wl, variants, [args.size], frames=args.frames, gen=0, probes=0, progress=lambda m: print(m, file=sys.stderr)
    )
    lines = [
        "# Pareto: history kept vs fidelity (real text, prefill)",
        "",
        "```",
        "python3 " + shlex.join(sys.argv),
        "```",
        "",
        f"Workload: {wl.description}; {args.size:,}-token cache of real text (inside the "
        f"{wl.max_positions:,} trained positions, absolute positions).",
        "",
        counts_note(res, wl.chunk).splitlines()[0],
        "Kept: cached tokens attended (sink + retrieved + recent window) / "
        "cached tokens before the chunk. The oracle scores every token: a fidelity reference, not a fast policy.",
        "",
        "| policy | variant | prefill kept | top-1 | mean KL |",
        "|---|---|---|---|---|",
    ]
    for name, pts in pareto_points(res).items():
        lines += [f"| {name} | `{v}` | {100 * kept:.1f}% | {100 * top1:.1f}% | {kl:.4f} |" for kept, kl, top1, v in pts]
    md = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pareto_text.md").write_text(md, encoding="utf-8")
    plot_pareto(
        res,
        args.out / "pareto_text.png",
        f"{wl.model.manifest.name}, real text, {args.size:,}-token cache, {len(res[0].prefill.ms)} frames x "
        f"{wl.chunk} tokens",
    )
    print(md)


if __name__ == "__main__":
    main()
