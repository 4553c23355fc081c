"""Frames per second of the embedded model (models/vrex-tiny) through the runtime at a given cache size.

A held-out world stream (seed below data.TRAIN_SEED_BASE) is rendered up front, then streamed
through StreamSession frame by frame (vision, prefill, speak decision, captions when it speaks).
Reported over the frames whose cache is within +-window tokens of --cache: the frame stage
alone (mean FrameProcessed total) and the wall-clock rate including the captions spoken there.

    python benchmarks/bench_embedded.py --cache 6000 --policy full resv window
    python benchmarks/bench_embedded.py --cache 6000 --policy resv resv:tau=0.98
    python benchmarks/bench_embedded.py --cache 6000 --policy full resv window --provider cuda
    python benchmarks/bench_embedded.py --cache 6000 --policy full resv --provider cuda --engine host

--engine says where the caches keep their KV: `auto` as a session does (on CUDA, full and resv keep it
on the GPU: kernels/ort_cuda.py, retrieval/device.py), `host` in host memory whatever the provider (the
path before the device caches), `ort-cuda` on the device engine (with the CPU provider it runs on
onnxruntime's CPU provider: the same graphs, to check the path on a machine without a GPU). The "kv"
column names the cache class that ran.

A policy may carry options after a colon (resv:tau=0.98,hamming=6). "kept" is the fraction of
the history the policy attended to over the whole run (prefill / decode), from session.stats().
"retrieval" is the share of the measured frames' time spent in the policy's cluster + select + gather
(the rest of its time is attention). --clock cpu times with the process's CPU clock (every stage
timer included), so other processes on a shared machine do not show up as latency; use it with
--threads 1, OPENBLAS_NUM_THREADS=1 and VREX_ATTENTION_LANES=1 (idle onnxruntime and OpenBLAS worker
threads spin and would count: a NumPy matmul on two BLAS threads showed twice its CPU time in one
measurement; the attention's lanes are CPU time on other cores).

    VREX_ATTENTION_LANES=1 OPENBLAS_NUM_THREADS=1 python benchmarks/bench_embedded.py --cache 6000 \
        --policy full resv window --threads 1 --clock cpu
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def make_policy(spec: str, engine: str, cuda: bool, threads: int | None):
    """The Policy of `spec` ("name:key=value,...") with its KV where --engine says (module docstring)."""
    from vrex_edge.runtime.retrieval.options import parse_pairs
    from vrex_edge.runtime.retrieval.policy import Policy
    from vrex_edge.runtime.retrieval.registry import get_spec

    name, _, opts = spec.partition(":")
    ps = get_spec(name)
    options = ps.options.parse(parse_pairs(opts.split(",") if opts else [], where="--policy"))
    if engine == "host" or (engine == "auto" and not cuda):
        return Policy(ps, options, device="cpu")
    if engine == "auto":
        return Policy(ps, options, device="cuda")
    from vrex_edge.runtime.kernels.ort_cuda import OrtDeviceEngine

    dev = OrtDeviceEngine(device="cuda" if cuda else "cpu", threads=threads or 1)
    return Policy(ps, options, device="cuda", device_engine=dev)


def bench(
    bundle: Path,
    spec: str,
    frames: np.ndarray,
    cache: int,
    window: int,
    threads: int | None,
    providers: list[str],
    engine: str = "auto",
) -> dict:
    from vrex_edge.runtime.engine import load_model, uses_cuda
    from vrex_edge.runtime.events import Caption, FrameProcessed
    from vrex_edge.runtime.session import StreamSession
    from vrex_edge.world.sim import FPS

    model = load_model(bundle, threads=threads, providers=providers or ["cpu"])
    session = StreamSession(model, policy=make_policy(spec, engine, uses_cuda(model.providers), threads))
    lo, hi = cache - window, cache + window
    frame_ms: list[float] = []
    split = dict.fromkeys(("cluster", "select", "gather", "attend"), 0.0)  # policy seconds of the measured frames
    t_in = None  # wall clock at the first frame inside the window
    captions, t_last = 0, 0.0
    for i, img in enumerate(frames):  # img [H, W, 3] uint8 BGR
        inside = False
        before = dict(session.stats().retrieval["seconds"])
        for ev in session.push_frame(img, i / FPS):
            if isinstance(ev, FrameProcessed):
                inside = lo <= ev.cache_tokens <= hi
                if inside:
                    for k, v in session.stats().retrieval["seconds"].items():
                        split[k] = split.get(k, 0.0) + v - before.get(k, 0.0)
                    if t_in is None:
                        t_in = time.perf_counter() - ev.timings_ms["total"] / 1e3
                    frame_ms.append(ev.timings_ms["total"])
            elif isinstance(ev, Caption) and inside:
                captions += 1
        if inside:
            t_last = time.perf_counter()
        elif frame_ms:
            break
    if not frame_ms:
        raise SystemExit(f"the stream never reached a {cache}-token cache: use more --seconds")
    wall = t_last - t_in
    n_in = len(frame_ms)
    ret = session.stats().retrieval
    kept = "/".join(f"{100 * ret[k]:.0f}%" for k in ("prefill_kept_fraction", "decode_kept_fraction") if k in ret)
    share = (split["cluster"] + split["select"] + split["gather"]) * 1e3 / float(np.sum(frame_ms))
    return {
        "policy": spec,
        "kv": type(session.caches[0]).__name__,
        "kept": kept or "-",
        "retrieval": share,
        "split_ms": {k: v * 1e3 / n_in for k, v in split.items()},
        "frames": n_in,
        "captions": captions,
        "frame_ms": float(np.mean(frame_ms)),
        "frame_fps": 1e3 / float(np.mean(frame_ms)),
        "wall_fps": n_in / wall,
    }


def main(argv: list[str] | None = None) -> None:
    from vrex_edge.world.render import render
    from vrex_edge.world.sim import simulate

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=ROOT / "models" / "vrex-tiny")
    ap.add_argument("--policy", nargs="+", default=["full"])
    ap.add_argument("--cache", type=int, default=6000, help="cache size (tokens) to measure at")
    ap.add_argument("--window", type=int, default=500, help="measure frames with cache within +- this")
    ap.add_argument("--seconds", type=float, default=360.0, help="stream length (must reach --cache)")
    ap.add_argument("--seed", type=int, default=4242)
    ap.add_argument("--threads", type=int, default=None, help="onnxruntime threads (default: the runtime's)")
    ap.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="cpu: process CPU time for every timer (patches time.perf_counter for this process)",
    )
    ap.add_argument(
        "--provider", action="append", default=[], help="execution provider (cpu, cuda, tensorrt; repeatable)"
    )
    ap.add_argument(
        "--engine", choices=("auto", "host", "ort-cuda"), default="auto", help="where the KV lives (see above)"
    )
    args = ap.parse_args(argv)
    if args.clock == "cpu":
        time.perf_counter = time.process_time  # the runtime's stage timers read time.perf_counter at call time
    frames = render(simulate(args.seed, args.seconds))  # [N, H, W, 3] BGR
    print(
        "| policy | kv | cache tokens | frames measured | captions | kept | ms / frame | frames/s (frame stage) |"
        " frames/s (wall, incl. captions) | retrieval share | cluster / select / gather / attend ms per frame |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for p in args.policy:
        r = bench(args.bundle, p, frames, args.cache, args.window, args.threads, args.provider, args.engine)
        print(
            f"| {p} | {r['kv']} | {args.cache} +- {args.window} | {r['frames']} | {r['captions']} | {r['kept']} | "
            f"{r['frame_ms']:.1f} | "
            f"{r['frame_fps']:.1f} | {r['wall_fps']:.1f} | {100 * r['retrieval']:.0f}% | "
            + " / ".join(f"{r['split_ms'][k]:.1f}" for k in ("cluster", "select", "gather", "attend"))
            + " |",
            flush=True,
        )


if __name__ == "__main__":
    main()
