"""The demo's captions per policy setting, against full attention and the demo's ground truth.

Runs samples/world_demo.mp4 (75 s, 22 events) through StreamSession once per setting, as
`vrex-edge caption` does, and reports: captions identical (time and text) to full's, captions
matching a ground-truth event (exact sentence within +-1 s, as the narration F1), process CPU
seconds (vision, stage graphs, retrieval and decoding; other processes on the machine do not
count), the retrieval split and the history kept.

    python3 benchmarks/demo_captions.py --policy resv resv:tau=0.98 resv:score=subset
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def captions(bundle: Path, video: Path, spec: str, threads: int) -> dict:
    from vrex_edge.runtime.capture import open_video
    from vrex_edge.runtime.engine import load_model
    from vrex_edge.runtime.events import Caption
    from vrex_edge.runtime.retrieval.options import parse_pairs
    from vrex_edge.runtime.session import StreamSession

    policy, _, opts = spec.partition(":")
    options = parse_pairs(opts.split(",") if opts else [], where="--policy")
    model = load_model(bundle, threads=threads, providers=["cpu"])
    session = StreamSession(model, policy=policy, policy_options=options)
    t0 = time.process_time()
    out = [(ev.t, ev.text) for ev in session.run(open_video(video, fps=2.0), []) if isinstance(ev, Caption)]
    cpu = time.process_time() - t0
    ret = session.stats().retrieval
    session.close()
    return {"captions": out, "cpu_s": cpu, "retrieval": ret}


def truth_matches(caps: list[tuple[float, str]], events: list[dict]) -> int:
    """Captions that match a distinct ground-truth event: the same sentence within +-1 s."""
    used: set[int] = set()
    hits = 0
    for t, text in caps:
        for i, e in enumerate(events):
            if i not in used and e["text"] == text and abs(e["time"] - t) <= 1.0:
                used.add(i)
                hits += 1
                break
    return hits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", nargs="+", default=["resv"], help="settings besides full (policy:key=value,...)")
    ap.add_argument("--bundle", type=Path, default=ROOT / "models" / "vrex-tiny")
    ap.add_argument("--video", type=Path, default=ROOT / "samples" / "world_demo.mp4")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None, help="also write every caption here")
    args = ap.parse_args()
    events = json.loads(args.video.with_suffix(".json").read_text(encoding="utf-8"))["events"]
    ref = captions(args.bundle, args.video, "full", args.threads)
    print(f"ground truth: {len(events)} events; full: {len(ref['captions'])} captions")
    print("| setting | captions | identical to full | match ground truth | CPU s | prefill / decode kept |")
    print("|---|---|---|---|---|---|")
    rows = {"full": ref}
    for spec in ["full", *args.policy]:
        r = ref if spec == "full" else captions(args.bundle, args.video, spec, args.threads)
        rows[spec] = r
        same = len(set(r["captions"]) & set(ref["captions"]))
        ret = r["retrieval"]
        kept = " / ".join(f"{100 * ret[k]:.0f}%" for k in ("prefill_kept_fraction", "decode_kept_fraction") if k in ret)
        print(
            f"| `{spec}` | {len(r['captions'])} | {same} | {truth_matches(r['captions'], events)} | "
            f"{r['cpu_s']:.2f} | {kept or '-'} |",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
