"""Narration F1 of caption files against the ground truth of a world sample (vrex_edge.world.score).

A caption file is what `vrex-edge caption -o` writes (`[hh:mm:ss.mmm] text` per line); the sample's
JSON is what `python3 -m vrex_edge.world.sample --out X.mp4` writes beside X.mp4. F1 counts a caption
that is the event's exact sentence within +-1 s; timing F1 counts any caption within +-1 s of an event.

    python3 benchmarks/caption_f1.py w10.json out.txt out_other.txt
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from types import SimpleNamespace

LINE = re.compile(r"\[(\d+):(\d+):(\d+(?:\.\d+)?)\] (.*)")


def read_captions(path: Path) -> list[tuple[float, str]]:
    """[(seconds, text)] of a caption file (other lines skipped)."""
    out = []
    for line in path.read_text().splitlines():
        if m := LINE.match(line.strip()):
            out.append((int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3]), m[4]))
    return out


def main() -> None:
    from vrex_edge.world.score import score_narration

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sample", type=Path, help="the world sample's JSON (its events)")
    ap.add_argument("captions", type=Path, nargs="+", help="caption files")
    args = ap.parse_args()
    events = [SimpleNamespace(**e) for e in json.loads(args.sample.read_text())["events"]]
    for path in args.captions:
        caps = read_captions(path)
        s = score_narration(caps, events)
        print(f"{path}: {len(caps)} captions, {len(events)} events, F1 {s.f1:.4f}, timing F1 {s.timing_f1:.4f}")


if __name__ == "__main__":
    main()
