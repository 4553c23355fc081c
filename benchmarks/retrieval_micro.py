"""Per-layer attention cost of retrieval policies on a synthetic video-like KV stream.

SmolLM2-135M dims by default (9 heads, 3 KV heads, head_dim 64), 10-token chunks (frames).
The stream has frame-to-frame redundancy: each frame shows one of `--scenes` scenes for
`--scene-frames` frames; a token is its scene's slot key plus small drift and noise. A frame's
queries resemble its own keys, so attention mass concentrates on tokens of the same scene.
For each cache size the cache is filled with `extend`, then `--frames` frames are attended and
timed, the variants round-robin on the same frames (so machine load hits all alike).
Prints a Markdown table: median ms per layer per frame, the median time split (ms), overhead =
(cluster + select + gather) / median total, and the output's relative L2 error vs full.
--clock cpu times with the thread's CPU clock (library timers included), so that other processes
on a shared machine do not show up as latency (the work is single-threaded with
OPENBLAS_NUM_THREADS=1).

    OPENBLAS_NUM_THREADS=1 python3 benchmarks/retrieval_micro.py --sizes 1000 10000 40000 --clock cpu
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from vrex_edge.bundle import RopeSpec, TextSpec
from vrex_edge.runtime.retrieval import FullKV, make_policy
from vrex_edge.runtime.rope import Rope


def smollm2_text(max_positions: int = 8192) -> TextSpec:
    hd = 64
    inv = tuple(float(x) for x in 1.0 / (100000.0 ** (np.arange(0, hd, 2) / hd)))
    return TextSpec(
        num_layers=30,
        hidden_size=576,
        num_heads=9,
        num_kv_heads=3,
        head_dim=hd,
        vocab_size=49152,
        max_positions=max_positions,
        rms_norm_eps=1e-5,
        rope=RopeSpec(theta=100000.0, inv_freq=inv),
    )


class VideoStream:
    """Un-rotated q/k/v frames with scene-level redundancy (see module docstring)."""

    def __init__(
        self,
        text: TextSpec,
        *,
        tokens: int = 10,
        scenes: int = 64,
        scene_frames: int = 20,
        seed: int = 0,
        spectrum: str = "low",
    ):
        self.rng = np.random.default_rng(seed)
        self.text, self.t, self.scene_frames = text, tokens, scene_frames
        half = text.head_dim // 2
        # "low": content mostly in the slowest-rotating RoPE pairs, as trained LMs do for long-range
        # matching (so post-RoPE attention stays content-driven); "flat": every pair alike.
        w = np.exp(-(half - 1 - np.arange(half)) / 4.0) if spectrum == "low" else np.ones(half)
        self.w = (np.concatenate([w, w]) * np.sqrt(text.head_dim / (2 * (w**2).sum()))).astype(np.float32)
        self.slots = self.rng.standard_normal((scenes, text.num_kv_heads, tokens, text.head_dim)).astype(np.float32)
        self.slots *= self.w
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
        k = k + 0.15 * self.w * self.rng.standard_normal(k.shape).astype(np.float32)
        v = self.rng.standard_normal(k.shape).astype(np.float32)
        g = self.text.num_heads // self.text.num_kv_heads
        q = np.repeat(k, g, axis=0) * 1.5 + 0.5 * self.w * self.rng.standard_normal((g * k.shape[0], *k.shape[1:]))
        return q.astype(np.float32), k, v


def fill(cache, k: np.ndarray, v: np.ndarray, chunk: int, rope: Rope) -> None:
    pos = np.arange(k.shape[1])
    if isinstance(cache, FullKV):
        cache.k.append(rope.apply(k, pos))
        cache.v.append(v)
    else:
        cache.extend(k, v, pos, chunk=chunk)


def parse_variant(var: str) -> tuple[str, dict]:
    name, _, rest = var.partition(":")
    opts: dict = {}
    for kv in filter(None, rest.split(",")):
        key, _, val = kv.partition("=")
        opts[key] = float(val) if "." in val else int(val) if val.isdigit() else val
    return name, opts


def bench(
    variants: list[str], n_tokens: int, frames: int, text: TextSpec, tau: float, spectrum: str = "low"
) -> dict[str, dict]:
    """Fill one cache per variant with the same stream, then time the same frames round-robin."""
    rope = Rope(text.rope)
    stream = VideoStream(text, spectrum=spectrum)
    _, k, v = stream.next(n_tokens // stream.t)
    caches = {}
    for var in variants:
        name, opts = parse_variant(var)
        if name == "resv":
            opts.setdefault("tau", tau)
        caches[var] = FullKV(text, rope) if name == "full" else make_policy(name, **opts)(0, text, rope)
        fill(caches[var], k, v, stream.t, rope)
    rows = {var: {"t": [], "split": {}, "kept": [], "err": []} for var in variants}
    for _ in range(frames):
        q, k, v = stream.next(1)
        ref = None
        for var, cache in caches.items():
            p = np.arange(cache.length, cache.length + k.shape[1])
            t0 = time.perf_counter()
            out = cache.attend(q, k, v, p, phase="prefill")
            r = rows[var]
            r["t"].append(time.perf_counter() - t0)
            ref = out if ref is None else ref  # the first variant is the reference (full)
            r["err"].append(float(np.linalg.norm(out - ref) / np.linalg.norm(ref)))
            st = cache.stats()
            for key, s in st.seconds.items():
                r["split"].setdefault(key, []).append(s)
            r["kept"].append(st.kept.mean() / max(st.history, 1))
            if hasattr(cache, "store"):
                r["clusters"] = float(cache.store.nclu.mean())
    out = {}
    for var, r in rows.items():
        row = {
            "ms": 1e3 * float(np.median(r["t"])),
            "kept": float(np.mean(r["kept"])),
            "err": float(np.mean(r["err"])),
            "clusters": r.get("clusters", 0.0),
        }
        for key, s in r["split"].items():
            row[key] = 1e3 * float(np.median(s))
        row["total"] = 1e3 * float(np.median(r["t"]))
        row.setdefault("attend", row["total"])  # full reports no split
        out[var] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 40000])
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--tau", type=float, default=0.9)
    ap.add_argument(
        "--spectrum", choices=("low", "flat"), default="low", help="where key content lives (see VideoStream)"
    )
    ap.add_argument(
        "--variants",
        nargs="+",
        default=["full", "resv:keys=pre", "resv:keys=post", "topk:k=0.2"],
        help="policy[:opt=val,...] (numbers are parsed)",
    )
    ap.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="cpu: thread CPU time everywhere (patches time.perf_counter for this process)",
    )
    args = ap.parse_args()
    if args.clock == "cpu":
        time.perf_counter = time.thread_time  # the library's stage timers read time.perf_counter at call time
    text = smollm2_text()
    print(
        "| cached | variant | ms/layer/frame (median) | vs full | history kept | cluster | select | gather | attend |"
        " overhead | clusters/head | rel. error vs full |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for n in args.sizes:
        rows = bench(
            ["full", *[v for v in args.variants if v != "full"]], n, args.frames, text, args.tau, args.spectrum
        )
        full_ms = rows["full"]["ms"]
        for var, row in rows.items():
            split = [row.get(k, 0.0) for k in ("cluster", "select", "gather", "attend")]
            over = sum(split[:3]) / row["total"]
            print(
                f"| {n} | {var} | {row['ms']:.2f} | {full_ms / row['ms']:.1f}x | {100 * row['kept']:.1f}% | "
                + " | ".join(f"{x:.2f}" for x in split)
                + f" | {100 * over:.0f}% | {row['clusters']:.0f} | {row['err']:.4f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
