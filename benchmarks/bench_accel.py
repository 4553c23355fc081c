"""Per-frame retrieval cost: the float host backend vs the DRE emulator, and the DRE's cycle-model time.

SmolLM2-135M dims (30 layers, 3 KV heads, head_dim 64, 9 query heads), the video-like stream of
retrieval_micro.py, 10-token frames, the `resv` policy with its defaults. For each cache size,
one set of `--layers` layer caches per backend is filled with the same stream, then `--frames`
frames are attended, the backends taking turns frame by frame. Measured per frame (summed over
the layers, scaled to 30 when fewer are run): wall time inside backend calls (hash, assign,
score+select, layout), the resv policy's cluster+select time, and the DRE time the emulator's
cycle model reports for the same calls. The host run also feeds every score_select input to a
second emulator, so selection overlap is measured on identical cluster tables.

    python3 benchmarks/bench_accel.py --sizes 1000 10000 40000 --out benchmarks/results/accel.md
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np

try:
    from benchmarks.retrieval_micro import VideoStream, smollm2_text
except ImportError:  # run as a script from the benchmarks folder
    from retrieval_micro import VideoStream, smollm2_text

from vrex_edge.accel import DreEmuBackend, HostBackend, backend
from vrex_edge.runtime.retrieval import make_policy
from vrex_edge.runtime.rope import Rope

ROOT = Path(__file__).resolve().parent.parent
OPS = ("hash_codes", "cluster_assign", "score_select", "layout")


class Timed:
    """A backend wrapper that times its calls; with `compare`, it also runs the emulator on every
    score_select input and tallies the selection overlap (same clusters, same queries)."""

    def __init__(self, inner, compare: bool = False):
        self.inner, self.name = inner, inner.name
        self.seconds = 0.0
        self.twin_seconds = 0.0  # spent in the twin (inside the policy's timers: subtracted there)
        self.twin = DreEmuBackend() if compare else None
        self.both = self.host_only = self.emu_only = 0  # tokens (cluster sizes) kept by both / one side
        self.l1: list[float] = []

    def __getattr__(self, op):
        f = getattr(self.inner, op)

        def call(*a, **kw):
            t0 = time.perf_counter()
            out = f(*a, **kw)
            self.seconds += time.perf_counter() - t0
            if op == "score_select" and self.twin is not None:
                t1 = time.perf_counter()
                ke, me = self.twin.score_select(*a, **kw)
                self.twin_seconds += time.perf_counter() - t1
                kh, mh = out
                cnt = a[2]
                self.both += int(cnt[ke & kh].sum())
                self.host_only += int(cnt[kh & ~ke].sum())
                self.emu_only += int(cnt[ke & ~kh].sum())
                self.l1.append(float(np.abs(me - mh).sum(-1).mean()))
            return out

        return call


def run(n_tokens: int, layers: int, frames: int, tau: float, dense_below: int) -> dict[str, dict]:
    text = smollm2_text()
    rope = Rope(text.rope)
    stream = VideoStream(text)
    _, k, v = stream.next(n_tokens // stream.t)
    made: dict[str, list] = {"host": [], "dre-emu": []}
    caches = {}
    for name in made:

        def make(name=name):
            b = Timed(HostBackend(), compare=True) if name == "host" else Timed(DreEmuBackend())
            made[name].append(b)
            return b

        backend._BACKENDS[f"bench-{name}"] = make
        factory = make_policy("resv", accel=f"bench-{name}", tau=tau, dense_below=dense_below)
        made[name].clear()  # make_resv instantiates one backend to check the name
        caches[name] = [factory(layer, text, rope) for layer in range(layers)]
        for c in caches[name]:
            c.extend(k, v, np.arange(k.shape[1]), chunk=stream.t)
    rows = {name: {"backend": [], "policy": [], "dre": [], "kept": [], "cyc": {}} for name in caches}
    for b in made["host"]:  # count overlap over the measured frames only
        b.both = b.host_only = b.emu_only = 0
        b.l1.clear()
    scale = text.num_layers / layers
    for _ in range(frames):
        q, k, v = stream.next(1)
        for name, cs in caches.items():
            bs = made[name]
            t_back = sum(b.seconds for b in bs)
            t_twin = sum(b.twin_seconds for b in bs)
            emus = [b.inner if name == "dre-emu" else b.twin for b in bs]
            for e in emus:
                e.reset_stats()
            pol, kept = 0.0, 0.0
            for c in cs:
                c.attend(q, k, v, np.arange(c.length, c.length + k.shape[1]), phase="prefill")
                st = c.stats()
                pol += st.seconds.get("cluster", 0.0) + st.seconds.get("select", 0.0)
                kept += st.kept.mean() / max(st.history, 1) / len(cs)
            r = rows[name]
            r["backend"].append((sum(b.seconds for b in bs) - t_back) * scale)
            r["policy"].append((pol - (sum(b.twin_seconds for b in bs) - t_twin)) * scale)
            r["kept"].append(kept)
            if name == "dre-emu":  # the emulator's cycle model for this frame's calls
                r["dre"].append(sum(e.stats()["seconds"] for e in emus) * scale)
                for e in emus:
                    for unit, cyc in e.stats()["cycles"].items():
                        r["cyc"][unit] = r["cyc"].get(unit, 0) + cyc * scale / frames
    hb = made["host"]
    both, ho, eo = sum(b.both for b in hb), sum(b.host_only for b in hb), sum(b.emu_only for b in hb)
    rows["overlap"] = {
        "recall": both / max(both + ho, 1),
        "jaccard": both / max(both + ho + eo, 1),
        "l1": float(np.mean([x for b in hb for x in b.l1])),
        "clusters": float(np.mean([c.store.nclu.mean() for c in caches["host"]])),
    }
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 40000])
    ap.add_argument("--layers", type=int, default=30, help="layer caches per backend (times are scaled to 30)")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--tau", type=float, default=0.9)
    ap.add_argument(
        "--dense-below",
        type=int,
        default=0,
        help="resv option (default 0: score at every size, so the DRE's work is measured at 1K too)",
    )
    ap.add_argument("--out", type=Path, default=None, help="also write the Markdown table here")
    args = ap.parse_args()
    ml = DreEmuBackend().model
    lines = [
        f"`resv` (tau {args.tau}, dense_below {args.dense_below}) retrieval per frame, SmolLM2-135M dims (30 "
        "layers x 3 KV heads, hd 64), "
        f"10-token frames of the video-like stream, median of {args.frames} frames, {args.layers} layer caches "
        f"measured{' (scaled to 30)' if args.layers != 30 else ''}; {platform.node()}, "
        f"{platform.processor() or platform.machine()}, OPENBLAS_NUM_THREADS="
        f"{os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}.",
        f"DRE cycle model: {ml.clock_hz / 1e6:g} MHz, hash lanes {ml.hash_lanes}, compare lanes {ml.cmp_lanes}, "
        f"MAC lanes {ml.mac_lanes}, WiCSum lanes {ml.wic_lanes}, layout lanes {ml.layout_lanes}.",
        "",
        "| cached | clusters/head | host backend ms | dre-emu backend ms | emulator overhead ms | "
        "host cluster+select ms | dre-emu cluster+select ms | DRE (cycle model) ms | host / DRE | "
        "kept host | kept dre-emu | selection recall | Jaccard | mass L1 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    units = []
    for n in args.sizes:
        r = run(n, args.layers, args.frames, args.tau, args.dense_below)
        h, e, o = r["host"], r["dre-emu"], r["overlap"]
        hb, eb, dre = (1e3 * float(np.median(x)) for x in (h["backend"], e["backend"], e["dre"]))
        lines.append(
            f"| {n} | {o['clusters']:.0f} | {hb:.1f} | {eb:.1f} | {eb - hb:+.1f} | "
            f"{1e3 * np.median(h['policy']):.1f} | {1e3 * np.median(e['policy']):.1f} | {dre:.3f} | "
            f"{hb / dre:.0f}x | {100 * np.mean(h['kept']):.1f}% | {100 * np.mean(e['kept']):.1f}% | "
            f"{100 * o['recall']:.1f}% | {100 * o['jaccard']:.1f}% | {o['l1']:.4f} |"
        )
        units.append(f"| {n} | " + " | ".join(f"{c / 1e3:.1f}" for c in e["cyc"].values()) + " |")
        print(lines[-1], flush=True)
    lines += [
        "",
        "DRE kilocycles per frame by unit (30 layers):",
        "",
        "| cached | " + " | ".join(DreEmuBackend().stats()["cycles"]) + " |",
        "|---|---|---|---|---|---|",
        *units,
        "",
        "Selection recall: tokens of the host's selected clusters that the DRE also selects; Jaccard over "
        "tokens; mass L1: mean L1 distance between the two mass distributions per KV head.",
    ]
    print("\n".join(lines))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
