"""Per-layer attention cost of retrieval policies on a synthetic video-like KV stream.

SmolLM2-135M dims by default (9 heads, 3 KV heads, head_dim 64), 10-token chunks (frames).
The stream has frame-to-frame redundancy: each frame shows one of `--scenes` scenes for
`--scene-frames` frames; a token is its scene's slot key plus small drift and noise. A frame's
queries resemble its own keys, so attention mass concentrates on tokens of the same scene.
For each cache size the cache is filled with `extend`, then `--frames` frames are attended and
timed. Prints a Markdown table (median ms per layer per frame and the policy's time split).

    python3 benchmarks/retrieval_micro.py --sizes 1000 10000 40000
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from vrex_edge.bundle import RopeSpec, TextSpec
from vrex_edge.runtime.kvcache import FullKV, make_policy
from vrex_edge.runtime.rope import Rope


def smollm2_text(max_positions: int = 8192) -> TextSpec:
    hd = 64
    inv = tuple(float(x) for x in 1.0 / (100000.0 ** (np.arange(0, hd, 2) / hd)))
    return TextSpec(num_layers=30, hidden_size=576, num_heads=9, num_kv_heads=3, head_dim=hd, vocab_size=49152,
                    max_positions=max_positions, rms_norm_eps=1e-5, rope=RopeSpec(theta=100000.0, inv_freq=inv))


class VideoStream:
    """Un-rotated q/k/v frames with scene-level redundancy (see module docstring)."""

    def __init__(self, text: TextSpec, *, tokens: int = 10, scenes: int = 64, scene_frames: int = 20, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.text, self.t, self.scene_frames = text, tokens, scene_frames
        self.slots = self.rng.standard_normal((scenes, text.num_kv_heads, tokens, text.head_dim)).astype(np.float32)
        self.frame = 0
        self.scene = 0

    def next(self, frames: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """-> q [H, n, hd], k, v [KVH, n, hd] for `frames` frames (n = frames * tokens)."""
        ks = []
        for _ in range(frames):
            if self.frame % self.scene_frames == 0:
                self.scene = int(self.rng.integers(0, self.slots.shape[0]))
            ks.append(self.slots[self.scene])
            self.frame += 1
        k = np.concatenate(ks, axis=1)  # [KVH, n, hd]
        k = k + 0.15 * self.rng.standard_normal(k.shape).astype(np.float32)
        v = self.rng.standard_normal(k.shape).astype(np.float32)
        g = self.text.num_heads // self.text.num_kv_heads
        q = np.repeat(k, g, axis=0) * 1.5 + 0.5 * self.rng.standard_normal((g * k.shape[0], *k.shape[1:]))
        return q.astype(np.float32), k, v


def fill(cache, stream: VideoStream, n_tokens: int, rope: Rope) -> None:
    _, k, v = stream.next(n_tokens // stream.t)
    pos = np.arange(k.shape[1])
    if isinstance(cache, FullKV):
        cache.k.append(rope.apply(k, pos))
        cache.v.append(v)
    else:
        cache.extend(k, v, pos, chunk=stream.t)


def bench(name: str, options: dict, n_tokens: int, frames: int, text: TextSpec) -> dict:
    rope = Rope(text.rope)
    cache = FullKV(text, rope) if name == "full" else make_policy(name, **options)(0, text, rope)
    stream = VideoStream(text)
    fill(cache, stream, n_tokens, rope)
    times, split, kept = [], {}, []
    for _ in range(frames):
        q, k, v = stream.next(1)
        p = np.arange(cache.length, cache.length + k.shape[1])
        t0 = time.perf_counter()
        cache.attend(q, k, v, p, phase="prefill")
        times.append(time.perf_counter() - t0)
        st = cache.stats()
        for key, s in st.seconds.items():
            split.setdefault(key, []).append(s)
        kept.append(st.kept.mean() / max(st.history, 1))
    row = {"ms": 1e3 * float(np.median(times)), "kept": float(np.mean(kept))}
    for key, s in split.items():
        row[key] = 1e3 * float(np.median(s))
    if hasattr(cache, "store"):
        row["clusters"] = float(cache.store.nclu.mean())
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 40000])
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--tau", type=float, default=0.9)
    ap.add_argument("--variants", nargs="+", default=["full", "resv:keys=pre", "resv:keys=post", "topk:k=0.2"],
                    help="policy[:opt=val,...] (numbers are parsed)")
    args = ap.parse_args()
    text = smollm2_text()
    print("| cached | variant | ms/layer/frame | vs full | kept | cluster | select | gather | attend | overhead | clusters |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for n in args.sizes:
        full_ms = None
        for var in args.variants:
            name, _, rest = var.partition(":")
            opts: dict = {}
            for kv in filter(None, rest.split(",")):
                key, _, val = kv.partition("=")
                opts[key] = float(val) if "." in val else int(val) if val.isdigit() else val
            if name == "resv":
                opts.setdefault("tau", args.tau)
            row = bench(name, opts, n, args.frames, text)
            full_ms = row["ms"] if name == "full" else full_ms
            over = sum(row.get(k, 0.0) for k in ("cluster", "select", "gather"))
            tot = over + row.get("attend", row["ms"])
            print(f"| {n} | {var} | {row['ms']:.2f} | {full_ms / row['ms'] if full_ms else float('nan'):.1f}x"
                  f" | {100 * row['kept']:.1f}% | " + " | ".join(f"{row.get(k, 0.0):.2f}" for k in
                                                          ("cluster", "select", "gather", "attend"))
                  + f" | {100 * over / tot:.0f}% | {row.get('clusters', 0):.0f} |", flush=True)


if __name__ == "__main__":
    main()
