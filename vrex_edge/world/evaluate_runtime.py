"""Evaluate a bundle through the real runtime (StreamSession, ONNX), per retrieval policy.

    python -m vrex_edge.world.evaluate_runtime --bundle models/vrex-tiny --policy full resv window \
        --n 50 --procs 15 --out eval_runtime.json

The same held-out streams and questions as evaluate.py (seeds [seed_base, seed_base + n),
durations uniform in [min_s, max_s]), rendered, written as mp4 and read back by the runtime's
video source; questions are asked with StreamSession.run at their times (after the frame they
follow). Scoring is evaluate.report (score.py). One report per policy, keyed by policy name.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from vrex_edge.runtime.retrieval.options import parse_pairs
from vrex_edge.world.evaluate import held_out, report, run_jobs
from vrex_edge.world.render import frames as render_frames
from vrex_edge.world.render import write_mp4
from vrex_edge.world.sim import FPS


def run_stream(session_factory, seed: int, min_s: float, max_s: float) -> dict:
    """One held-out stream through a fresh session -> evaluate._worker's record format."""
    from vrex_edge.runtime.capture import open_video
    from vrex_edge.runtime.events import Answer, Caption

    stream, qs = held_out(seed, min_s, max_s)
    by_key = {(q.time, q.text): q for q in qs}
    captions, answers = [], []
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "s.mp4"
        write_mp4(path, render_frames(stream))
        session = session_factory()
        t = time.time()
        for ev in session.run(open_video(path, fps=FPS), [(q.time, q.text) for q in qs]):
            if isinstance(ev, Caption):
                captions.append((ev.t, ev.text))
            elif isinstance(ev, Answer):
                answers.append((by_key[(ev.t, ev.question)].to_dict(), ev.text))
        wall = time.time() - t
        session.close()
    return {
        "seed": seed,
        "duration": stream.duration,
        "wall_s": wall,
        "events": len(stream.events),
        "captions": captions,
        "answers": answers,
    }


def _worker(job: tuple[str, str, dict, list[int], dict]) -> list[dict]:
    bundle, policy, options, seeds, opt = job
    from vrex_edge.runtime.engine import load_model
    from vrex_edge.runtime.session import StreamSession

    model = load_model(bundle, threads=opt["threads"])

    def factory() -> StreamSession:
        return StreamSession(model, policy=policy, policy_options=options, speak_threshold=opt["threshold"])

    return [run_stream(factory, s, opt["min_s"], opt["max_s"]) for s in seeds]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", default="models/vrex-tiny")
    ap.add_argument("--policy", nargs="+", default=["full", "resv", "window"])
    ap.add_argument(
        "--opt",
        action="append",
        default=[],
        metavar="POLICY:KEY=VALUE",
        help="policy option, e.g. resv:tau=0.95 or window:recent=2048 (repeatable)",
    )
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--seed-base", type=int, default=0)
    ap.add_argument("--min-s", type=float, default=120.0)
    ap.add_argument("--max-s", type=float, default=600.0)
    ap.add_argument("--threshold", type=float, default=None, help="speak threshold (default: the bundle's)")
    ap.add_argument("--procs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime threads per process")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    seeds = list(range(args.seed_base, args.seed_base + args.n))
    opt = {"threads": args.threads, "threshold": args.threshold, "min_s": args.min_s, "max_s": args.max_s}
    per_policy: dict[str, dict] = {}
    for p in args.policy:
        pairs = [o.split(":", 1)[1] for o in args.opt if o.split(":", 1)[0] == p]
        per_policy[p] = parse_pairs(pairs, where="--opt")
    out: dict[str, dict] = {}
    streams: dict[str, list[dict]] = {}
    for policy, options in per_policy.items():
        jobs = [(args.bundle, policy, options, seeds[i :: args.procs], opt) for i in range(args.procs)]
        t0 = time.time()
        results = run_jobs(_worker, jobs)
        rep = report(results, args.min_s, args.max_s)
        frames = sum(r["duration"] for r in results) * FPS
        rep["wall_s"] = round(time.time() - t0, 1)
        rep["runtime_fps_per_process"] = round(frames / max(1e-9, sum(r["wall_s"] for r in results)), 1)
        rep["settings"] = {k: v for k, v in vars(args).items() if k not in ("out", "policy", "opt")} | {
            "policy": policy,
            "options": options,
        }
        out[policy] = rep
        streams[policy] = results
        print(
            json.dumps(
                {
                    policy: {
                        k: rep[k]
                        for k in (
                            "narration_f1",
                            "narration_timing_f1",
                            "question_accuracy",
                            "wall_s",
                            "runtime_fps_per_process",
                        )
                    }
                }
            ),
            flush=True,
        )
    text = json.dumps(out, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
        args.out.with_suffix(".streams.json").write_text(json.dumps(streams) + "\n")
    print(text)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
