"""Write a demo stream: an mp4 and its ground truth (events with narrations, questions with answers).

python -m vrex_edge.world.sample --seed 1234 --seconds 75 --out samples/world_demo
    -> samples/world_demo.mp4, samples/world_demo.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vrex_edge.world.data import TRAIN_SEED_BASE
from vrex_edge.world.language import eval_questions, narrate
from vrex_edge.world.render import frames, write_mp4
from vrex_edge.world.sim import CANVAS, FPS, Stream, simulate


def ground_truth(stream: Stream, *, recall_min_age_s: float = 30.0) -> dict[str, object]:
    qs = eval_questions(stream, stream.seed, per_kind=2, recall_min_age_s=recall_min_age_s)
    return {
        "seed": stream.seed,
        "fps": FPS,
        "frames": stream.n_frames,
        "duration_s": stream.duration,
        "size": [CANVAS, CANVAS],
        "events": [{**e.to_dict(), "text": narrate(e)} for e in stream.events],
        "questions": [q.to_dict() for q in qs],
    }


def write_sample(out: str | Path, *, seed: int, seconds: float) -> tuple[Path, Path]:
    if seed >= TRAIN_SEED_BASE:
        raise ValueError(f"demo seeds must be < {TRAIN_SEED_BASE} (training uses the seeds above)")
    out = Path(out)
    stream = simulate(seed, seconds)
    mp4, js = out.with_suffix(".mp4"), out.with_suffix(".json")
    write_mp4(mp4, frames(stream))
    js.write_text(json.dumps(ground_truth(stream), indent=1) + "\n")
    return mp4, js


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--seconds", type=float, default=75.0)
    ap.add_argument("--out", type=Path, default=Path("samples/world_demo"))
    args = ap.parse_args(argv)
    for p in write_sample(args.out, seed=args.seed, seconds=args.seconds):
        print(p)


if __name__ == "__main__":
    main()
