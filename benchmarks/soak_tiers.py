"""KV tiers (issue 7): an hour-long soak under a resident budget, and cold-vs-resident latency at 40K.

soak: a stream of `--frames` frames (7,200 = 1 hour at 2 fps) of synthetic frame embeddings
(scenes of a few seconds, small noise; the vision stage is skipped) through the embedded model
(models/vrex-tiny, else a tiny random vrex_videollm exported on the fly), resv with compact
positions (the stream is far longer than the model's context) and tiers under `--budget`.
Every `--every` frames: process RSS, resident KV by part, tables, cold bytes, frame latency.

latency: SmolLM2-135M (30 layers, 3 KV heads, head_dim 64). Two caches hold the same 40K tokens
of synthetic video-like KV (benchmarks/retrieval_micro.VideoStream, one stream per layer): one
all resident, one on tiers under `--budget` with prefetch on, the store's pages dropped from the
OS cache after the fill so cold reads hit the device. Then `--frames` frames of 10 tokens run
through the real model on both, interleaved (machine load hits both alike); medians compared.

    python3 benchmarks/soak_tiers.py soak --frames 7200 --budget 8M --out benchmarks/results/tiers_soak.json
    python3 benchmarks/soak_tiers.py latency --tokens 40000 --budget 512M --frames 20 --out benchmarks/results/tiers_latency.json
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


def tiny_bundle(work: Path) -> Path:
    embedded = ROOT / "models" / "vrex-tiny"
    if (embedded / "manifest.json").is_file():
        return embedded
    from vrex_edge.export import export_bundle
    from vrex_edge.export.families.videollm import make_tiny_checkpoint

    return export_bundle(make_tiny_checkpoint(work / "ckpt", seed=0), work / "bundle").out


def soak(args: argparse.Namespace) -> dict:
    from vrex_edge.runtime.engine import load_model
    from vrex_edge.runtime.kvstore import TierConfig, parse_bytes
    from vrex_edge.runtime.session import StreamSession

    work = Path(tempfile.mkdtemp(prefix="vrex-soak-"))
    bundle = tiny_bundle(work)
    model = load_model(bundle, threads=1)
    budget = parse_bytes(args.budget)
    opts = dict(positions="compact", keys="pre", hamming=6, horizon=32, sink=16, recent=40, tau=0.6, reselect=2)
    # speak_threshold 0: the random model never captions (decoding is not what this measures); a
    # question every 15 minutes of stream does decode through the tiers
    s = StreamSession(model, policy="resv", policy_options=opts, max_reply_tokens=8, speak_threshold=0.0,
                      kv=TierConfig(budget=budget, root=work / "kv", prefetch=True))
    rng = np.random.default_rng(0)
    d = model.text.hidden_size
    scenes = rng.standard_normal((64, 10, d)).astype(np.float32)
    rows, lat, peak_kv = [], [], 0
    t0 = time.perf_counter()
    for i in range(args.frames):
        e = scenes[(i // 10) % 64] + 0.2 * rng.standard_normal((10, d)).astype(np.float32)  # 5 s scenes
        for ev in s.push_frame_embeds(e, t=i / 2):
            if hasattr(ev, "timings_ms"):
                lat.append(ev.timings_ms["total"])
        if (i + 1) % 1800 == 0:
            answers = [a.text for a in s.ask("what happened at the start ?", t=i / 2)]
            assert answers
        r = s.tiers.resident()
        peak_kv = max(peak_kv, r["kv"])
        assert r["kv"] <= budget, (i, r)
        if (i + 1) % args.every == 0 or i == 0:
            rep = s.tiers.report()
            rows.append({"frame": i + 1, "stream_min": (i + 1) / 120, "tokens": s.position, "rss": rss_bytes(),
                         "kv": r["kv"], "hot": r["hot"], "workspace": r["workspace"], "open": r["open"],
                         "tables": r["tables"], "cold": rep["cold_bytes"], "evicted": rep["evicted"],
                         "frame_ms_median": statistics.median(lat[-args.every :]), "wall_s": time.perf_counter() - t0})
            print(json.dumps(rows[-1]), flush=True)
    rep = s.stats().retrieval["tiers"]
    s.close()
    return {"budget": budget, "peak_kv": peak_kv, "peak_reported": rep["peak"], "rows": rows,
            "bundle": str(bundle), "dims": model.text.__dict__ | {"rope": None}, "prefetch": rep.get("prefetch"),
            "fetched": rep["fetched"], "selected": rep["selected"], "missed": rep["missed"]}


def latency(args: argparse.Namespace) -> dict:
    from benchmarks.retrieval_micro import VideoStream
    from vrex_edge.runtime.engine import load_model
    from vrex_edge.runtime.kvcache import make_policy
    from vrex_edge.runtime.kvstore import TierConfig, attach_tiers, parse_bytes
    from vrex_edge.runtime.kvstore.cold import ColdLog

    model = load_model(args.bundle, threads=1)
    text = model.text
    opts = dict(tau=0.9, cluster_batch=1)
    res = model.make_caches(make_policy("resv", **opts))
    tier = model.make_caches(make_policy("resv", **opts))
    budget = parse_bytes(args.budget)

    class Holder:  # what attach_tiers needs from a session
        pass

    h = Holder()
    h.model, h.caches, h.policy = model, tier, "resv"
    mgr = attach_tiers(h, TierConfig(budget=budget, root=Path(args.store), prefetch=not args.no_prefetch))
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
            model.lookahead = mgr.prefetcher if name == "tiers" else None
            model.forward(emb, p, caches, "prefill")
            if f >= 2:  # two warm-up frames
                times[name].append((time.perf_counter() - t1) * 1e3)
    model.lookahead = None
    rep = mgr.report()
    out = {"tokens": args.tokens, "budget": budget, "fill_s": fill_s, "ms": times,
           "median_ms": {k: statistics.median(v) for k, v in times.items()},
           "resident_bytes_all_resident": sum(c.nbytes() for c in res), "tiers": rep}
    out["ratio"] = out["median_ms"]["tiers"] / out["median_ms"]["resident"]
    mgr.close(h)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("soak")
    a.add_argument("--frames", type=int, default=7200)
    a.add_argument("--budget", default="8M")
    a.add_argument("--every", type=int, default=300)
    a.add_argument("--out", type=Path)
    b = sub.add_parser("latency")
    b.add_argument("--bundle", type=Path, default=ROOT / ".cache" / "bundles" / "smollm2-135m")
    b.add_argument("--tokens", type=int, default=40000)
    b.add_argument("--budget", default="512M")
    b.add_argument("--frames", type=int, default=20)
    b.add_argument("--store", default=str(ROOT / ".cache" / "kv-bench"))
    b.add_argument("--no-prefetch", action="store_true")
    b.add_argument("--out", type=Path)
    args = ap.parse_args()
    result = soak(args) if args.cmd == "soak" else latency(args)
    text = json.dumps(result, indent=1, default=str)
    if args.out:
        args.out.write_text(text)
    print(json.dumps({k: v for k, v in result.items() if k not in ("rows", "ms")}, default=str)[:3000])


if __name__ == "__main__":
    main()
