"""KV tiers: an hour-long soak under a resident budget, and cold-vs-resident latency at 40K.

soak: a stream of `--frames` frames (7,200 = 1 hour at 2 fps) of the procedural world
(vrex_edge.world, rendered frame by frame through the vision stage) on the embedded model
(models/vrex-tiny, else a tiny random vrex_videollm exported on the fly), narrating as trained.
One world lets 40 objects enter (about 15 minutes of events) and then goes empty, so the stream
is a new world every `--segment-s` seconds over the first one's background. resv with compact
positions (the stream is far longer than the model's context), tau 0.9 and at most `--max-kept`
retrieved tokens per head (WiCSum keeps a fraction of an ever-growing history; the cap bounds a
frame's work), tiers under `--budget` (`none`: all resident, the reference: tiers are exact, so
its answers must be the same). Recall questions about the stream's first two objects (asked
>= 1 minute after they entered) every `--ask-every` frames and at the end, scored against the
world's ground truth and printed as they come. Every `--every` frames: process RSS, resident KV
by part, tables, cold bytes, frame latency.

latency: SmolLM2-135M (30 layers, 3 KV heads, head_dim 64). Two caches hold the same 40K tokens
of synthetic video-like KV (benchmarks/retrieval_micro.VideoStream, one stream per layer): one
all resident, one on tiers under `--budget` with prefetch on, the store's pages dropped from the
OS cache after the fill so cold reads hit the device. Then `--frames` frames of 10 tokens run
through the real model on both, interleaved (machine load hits both alike); medians compared.

    python3 benchmarks/soak_tiers.py soak --frames 7200 --budget 64M --out benchmarks/results/tiers_soak.json
    python3 benchmarks/soak_tiers.py soak --frames 7200 --budget none --out benchmarks/results/tiers_soak_resident.json
    python3 benchmarks/soak_tiers.py latency --tokens 40000 --budget 512M --frames 20 \
        --out benchmarks/results/tiers_latency.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def rss_parts() -> dict[str, int]:
    """/proc/self/status: anonymous memory (heap, arrays) vs file pages (code, libraries, the model's
    mapped weights)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key = line.split(":")[0]
        if key in ("RssAnon", "RssFile"):
            out[key.lower().replace("rss", "rss_")] = int(line.split()[1]) * 1024
    return out


def malloc_stats() -> dict[str, int]:
    """glibc mallinfo2: bytes in use in malloc's arenas, free bytes they still hold, bytes in
    separate mappings (big arrays). RSS minus these is code, libraries and onnxruntime."""
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [
            (n, ctypes.c_size_t)
            for n in (
                "arena",
                "ordblks",
                "smblks",
                "hblks",
                "hblkhd",
                "usmblks",
                "fsmblks",
                "uordblks",
                "fordblks",
                "keepcost",
            )
        ]

    try:
        f = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return {}
    f.restype = MallInfo2
    m = f()
    return {"heap_used": m.uordblks, "heap_free": m.fordblks, "mmapped": m.hblkhd}


def tiny_bundle(work: Path) -> Path:
    embedded = ROOT / "models" / "vrex-tiny"
    if (embedded / "manifest.json").is_file():
        return embedded
    from vrex_edge.export import export_bundle
    from vrex_edge.testing.tiny import make_tiny_checkpoint

    return export_bundle(make_tiny_checkpoint(work / "ckpt", seed=0), work / "bundle").out


def soak(args: argparse.Namespace) -> dict:
    from vrex_edge.runtime.engine import load_model
    from vrex_edge.runtime.events import Answer, Caption, FrameProcessed
    from vrex_edge.runtime.kvstore import TierConfig, parse_bytes
    from vrex_edge.runtime.session import StreamSession
    from vrex_edge.world import render
    from vrex_edge.world.language import questions_at

    work = Path(tempfile.mkdtemp(prefix="vrex-soak-"))
    bundle = tiny_bundle(work)
    model = load_model(bundle, threads=1)
    sha = _bundle_sha(bundle)  # now: the embedded model may be replaced while the soak runs
    budget = None if args.budget == "none" else parse_bytes(args.budget)
    # readme: the README's endless-stream settings (resv defaults + these); soak: the first soaks' settings
    tuned = (
        dict(decode_reselect=4)
        if args.preset == "readme"
        else dict(keys="pre", hamming=6, horizon=32, sink=16, recent=40, reselect=2)
    )
    tau = args.tau if args.tau is not None else (None if args.preset == "readme" else 0.9)
    opts = dict(
        positions="compact",
        **tuned,
        **({} if tau is None else {"tau": tau}),
        max_kept=args.max_kept,
        fine=args.fine,
        block=args.block,
        tau_coarse=args.tau_coarse,
    )
    if args.clock == "cpu":  # the stage timers read time.perf_counter at call time: process CPU time instead
        time.perf_counter = time.process_time
    kv = None if budget is None else TierConfig(budget=budget, root=work / "kv", prefetch=True)
    s = StreamSession(model, policy="resv", policy_options=opts, kv=kv)  # the model narrates as trained
    segs = world_segments(args.seed, args.frames, args.segment_s)
    first = segs[0]  # recall questions ask about the stream's first objects, in the first segment
    asks = {
        f: questions_at(first, min(f, first.n_frames - 1), "recall", min_age=120)
        for f in [*range(args.ask_every - 1, args.frames, args.ask_every), args.frames - 1]
    }
    rows: list[dict] = []
    lat: list[float] = []
    stages: list[dict[str, float]] = []  # each frame's ms per stage (cluster, select, gather, attend, ...)
    answers: list[dict] = []
    peak_kv, captions, peak_rss = 0, 0, 0
    t0 = time.perf_counter()
    frames = (img for seg in segs for img in render.frames(seg))  # rendered frame by frame
    for i, frame in enumerate(frames):
        for ev in s.push_frame(frame, t=i / 2):
            if isinstance(ev, FrameProcessed):
                lat.append(ev.timings_ms["total"])
                stages.append(ev.timings_ms)
            elif isinstance(ev, Caption):
                captions += 1
        for q in asks.get(i, []):
            got = [a.text for a in s.ask(q.text, t=i / 2) if isinstance(a, Answer)]
            answers.append(
                {
                    "frame": i + 1,
                    "question": q.text,
                    "answer": q.answer,
                    "got": got[0],
                    "correct": got[0].strip() == q.answer,
                }
            )
            print(json.dumps({"answer": answers[-1]}), flush=True)  # as they come: a crash keeps them
        if s.tiers is not None:
            r = s.tiers.resident()
            peak_kv = max(peak_kv, r["kv"])
            assert r["kv"] <= budget, (i, r)  # the budget holds at every frame
        else:
            r = {
                "kv": s.cache_bytes,
                "hot": 0,
                "workspace": 0,
                "open": 0,
                "tables": sum(c.store.table_nbytes() for c in s.caches),
            }
        rss = rss_bytes()
        peak_rss = max(peak_rss, rss)
        if (i + 1) % args.every == 0 or i == 0:
            rep = s.tiers.report() if s.tiers is not None else {}
            rows.append(
                {
                    "frame": i + 1,
                    "stream_min": (i + 1) / 120,
                    "tokens": s.position,
                    "rss": rss,
                    "kv": r["kv"],
                    "hot": r["hot"],
                    "workspace": r["workspace"],
                    "open": r["open"],
                    "tables": r["tables"],
                    **rss_parts(),
                    **malloc_stats(),
                    "cold": rep.get("cold_bytes", 0),
                    "evicted": rep.get("evicted", 0),
                    "fetched": rep.get("fetched", 0),
                    "retired": rep.get("retired"),
                    "captions": captions,
                    "frame_ms_median": statistics.median(lat[-args.every :]),
                    "stage_ms_mean": stage_means(stages[-args.every :]),
                    "wall_s": time.perf_counter() - t0,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    stats = s.stats()
    rep = stats.retrieval.get("tiers") or {}
    s.close()
    correct = sum(a["correct"] for a in answers)
    return {
        "budget": budget,
        "peak_kv": peak_kv,
        "peak_reported": rep.get("peak"),
        "peak_rss": peak_rss,
        "rows": rows,
        "answers": answers,
        "accuracy": correct / len(answers) if answers else None,
        "captions": captions,
        "options": {**opts, "tau": s.retrieval.options.tau},  # the tau that ran (readme: resv's default)
        "clock": args.clock,  # cpu: frame_ms_median and wall_s are process CPU time
        "seed": args.seed,
        "bundle": str(bundle),
        "bundle_sha": sha,
        "prefetch": rep.get("prefetch"),
        "fetched": rep.get("fetched"),
        "selected": rep.get("selected"),
        "missed": rep.get("missed"),
        "kept_fraction": {k: v for k, v in stats.retrieval.items() if k.endswith("kept_fraction")},
    }


def stage_means(frames: list[dict[str, float]]) -> dict[str, float]:
    """Mean ms per stage over `frames` (a stage a frame did not run counts 0 there: cluster runs in batches)."""
    keys = sorted({k for f in frames for k in f})
    return {k: round(sum(f.get(k, 0.0) for f in frames) / max(len(frames), 1), 3) for k in keys}


def world_segments(seed: int, frames: int, segment_s: float) -> list:
    """The soak's stream: consecutive worlds of `segment_s` seconds over one background (a world
    lets 40 objects enter, about 15 minutes of events, then goes empty) -> Streams, `frames` in all."""
    import dataclasses

    from vrex_edge.world.sim import FPS, simulate

    per = int(segment_s * FPS)
    segs = [simulate(seed + k, min(per, frames - s) / FPS) for k, s in enumerate(range(0, frames, per))]
    return [dataclasses.replace(g, background=segs[0].background) for g in segs]


def _bundle_sha(bundle: Path) -> str | None:
    """The bundle's identity (its manifest's sha256): the embedded model may be retrained."""
    import hashlib

    m = Path(bundle) / "manifest.json"
    return hashlib.sha256(m.read_bytes()).hexdigest()[:16] if m.is_file() else None


def latency(args: argparse.Namespace) -> dict:
    from benchmarks.retrieval_micro import VideoStream
    from vrex_edge.runtime.engine import load_model
    from vrex_edge.runtime.kvstore import TierConfig, TierManager, parse_bytes
    from vrex_edge.runtime.kvstore.cold import ColdLog
    from vrex_edge.runtime.retrieval import make_policy

    model = load_model(args.bundle, threads=1)
    text = model.text
    opts = dict(tau=0.9, cluster_batch=1, max_kept=args.max_kept)
    res = model.make_caches(make_policy("resv", **opts))
    budget = parse_bytes(args.budget)
    mgr = TierManager(
        TierConfig(budget=budget, root=Path(args.store), prefetch=not args.no_prefetch),
        layers=text.num_layers,
        kvh=text.num_kv_heads,
        hd=text.head_dim,
    )
    tier = model.make_caches(make_policy("resv", **opts), mgr.storage)
    mgr.bind(tier, model)
    t0 = time.perf_counter()
    for layer in range(text.num_layers):
        vs = VideoStream(text, seed=layer)
        _, k, v = vs.next(args.tokens // 10)
        pos = np.arange(k.shape[1])
        res[layer].extend(k, v, pos, chunk=64)
        tier[layer].extend(k, v, pos, chunk=64)
    fill_s = time.perf_counter() - t0
    for log in mgr.logs:
        ColdLog.drop_page_cache(log)
    rng = np.random.default_rng(1)
    times: dict[str, list[float]] = {"resident": [], "tiers": []}
    position = args.tokens
    scene = rng.integers(100, 40000, size=10)
    for f in range(args.frames + 2):
        if f % 10 == 0:  # a new scene every 5 s; frames of a scene share most tokens
            scene = rng.integers(100, 40000, size=10)
        ids = scene.copy()
        ids[rng.integers(0, 10, size=2)] = rng.integers(100, 40000, size=2)
        emb = model.embed(ids)
        p = np.arange(position, position + 10)
        position += 10
        for name, caches in (("resident", res), ("tiers", tier)):
            t1 = time.perf_counter()
            model.forward(emb, p, caches, "prefill", lookahead=mgr.prefetcher if name == "tiers" else None)
            if f >= 2:  # two warm-up frames
                times[name].append((time.perf_counter() - t1) * 1e3)
    rep = mgr.report()
    out = {
        "tokens": args.tokens,
        "budget": budget,
        "options": opts,
        "fill_s": fill_s,
        "ms": times,
        "median_ms": {k: statistics.median(v) for k, v in times.items()},
        "resident_bytes_all_resident": sum(c.nbytes() for c in res),
        "tiers": rep,
    }
    out["ratio"] = out["median_ms"]["tiers"] / out["median_ms"]["resident"]
    mgr.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("soak")
    a.add_argument("--frames", type=int, default=7200)
    a.add_argument("--budget", default="64M", help="resident KV budget, or 'none' (all resident: the reference)")
    a.add_argument(
        "--tau", type=float, default=None, help="resv tau (default: 0.9 for --preset soak, resv's own for readme)"
    )
    a.add_argument(
        "--max-kept", type=int, default=4096, help="resv max_kept: retrieved tokens per KV head at most (0: no cap)"
    )
    a.add_argument(
        "--fine",
        type=int,
        default=2048,
        help="resv fine: clusters per KV head with a resident representative; older ones retire in "
        "blocks with one coarse representative (0: all resident, the tables grow with the stream)",
    )
    a.add_argument("--block", type=int, default=16, help="resv block: clusters per retired block")
    a.add_argument("--tau-coarse", type=float, default=0.99, help="resv tau_coarse: WiCSum over the blocks")
    a.add_argument("--seed", type=int, default=1234, help="seed of the procedural world (segment k: seed + k)")
    a.add_argument(
        "--segment-s",
        type=float,
        default=600.0,
        help="a new world (same background) every this many seconds: one world's events end after ~15 min",
    )
    a.add_argument(
        "--ask-every", type=int, default=1800, help="recall questions every this many frames, and at the end"
    )
    a.add_argument("--every", type=int, default=300)
    a.add_argument(
        "--preset", choices=("soak", "readme"), default="soak", help="resv settings: the first soaks' or the README's"
    )
    a.add_argument(
        "--clock", choices=("wall", "cpu"), default="wall", help="cpu: frame times in process CPU time (a shared box)"
    )
    a.add_argument("--out", type=Path)
    b = sub.add_parser("latency")
    b.add_argument("--bundle", type=Path, default=ROOT / ".cache" / "bundles" / "smollm2-135m")
    b.add_argument("--tokens", type=int, default=40000)
    b.add_argument("--budget", default="512M")
    b.add_argument("--frames", type=int, default=20)
    b.add_argument("--store", default=str(ROOT / ".cache" / "kv-bench"))
    b.add_argument("--no-prefetch", action="store_true")
    b.add_argument("--max-kept", type=int, default=0, help="resv max_kept for both caches (0: no cap)")
    b.add_argument("--out", type=Path)
    args = ap.parse_args()
    result = soak(args) if args.cmd == "soak" else latency(args)
    text = json.dumps(result, indent=1, default=str)
    if args.out:
        args.out.write_text(text)
    print(json.dumps({k: v for k, v in result.items() if k not in ("rows", "ms")}, default=str)[:3000])


if __name__ == "__main__":
    main()
