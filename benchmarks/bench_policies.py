"""Retrieval policies side by side on SmolLM2-135M over real text: fidelity vs full and latency.

The stream is real English text (benchmarks/corpus.py) tokenised. The first --cache tokens are
prefilled in chunks of --chunk tokens (iterative prefill; 10 = one frame of VideoLLM-online),
then --frames chunks are measured: at every position each policy's next-token distribution is
compared with full's (top-1 agreement, KL(full || policy)). Then full decodes --gen tokens
greedily and the same tokens are fed to every policy (decode-phase agreement and KL), and
finally every policy continues greedily on its own (tokens matching full's continuation before
the first difference). All variants run in lockstep on the same tokens.

    python3 benchmarks/bench_policies.py --cache 4000 --frames 100 \
        --variants full resv resv:tau=0.95 resv:keys=pre topk:k=0.15 window:recent=512
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

try:
    from benchmarks.bench_cache_scaling import smollm2_bundle
    from benchmarks.corpus import reference_text
    from benchmarks.retrieval_micro import parse_variant
except ImportError:  # run as a script from the benchmarks folder
    from bench_cache_scaling import smollm2_bundle
    from corpus import reference_text
    from retrieval_micro import parse_variant

ROOT = Path(__file__).resolve().parent.parent


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


class Runner:
    """One policy's caches over the model, with its kept-token and timing tallies."""

    def __init__(self, model, var: str):
        from vrex_edge.runtime.kvcache import make_policy

        name, opts = parse_variant(var)
        self.model, self.var = model, var
        self.caches = model.make_caches(make_policy(name, **opts))
        self.pos = 0
        self.kept = {"prefill": [0, 0], "decode": [0, 0]}  # [kept, history] summed over layers x KV heads
        self.frame_s: list[float] = []
        self.attn_s: list[float] = []

    def feed(self, ids: list[int], phase: str, *, measure: bool = False) -> np.ndarray:
        """Feed ids -> logits [n, V] (only the last row unless measure)."""
        m = self.model
        emb = m.embed(ids)
        m.timer.reset()
        t0 = time.perf_counter()
        pos = np.arange(self.pos, self.pos + len(ids))
        h = m.forward(emb, pos, self.caches, phase)
        logits = m.head(h if measure else h[-1:])
        dt = time.perf_counter() - t0
        attn = m.timer.reset().get("attention", 0.0)
        self.pos += len(ids)
        if measure:
            self.frame_s.append(dt)
            self.attn_s.append(attn)
            acc = self.kept[phase]
            for c in self.caches:
                st = c.stats()
                acc[0] += int(np.sum(st.kept))
                acc[1] += st.history * len(st.kept)
        return logits

    def kept_fraction(self, phase: str) -> float:
        k, h = self.kept[phase]
        return k / h if h else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=None, help="a SmolLM2 bundle (default: export into .cache)")
    ap.add_argument("--cache", type=int, default=4000, help="tokens prefilled before measuring")
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--chunk", type=int, default=10)
    ap.add_argument("--gen", type=int, default=32)
    ap.add_argument("--variants", nargs="+", default=["full", "resv", "resv:tau=0.95", "resv:keys=pre",
                                                     "topk:k=0.15", "window:recent=512"])
    ap.add_argument("--out", type=Path, default=None, help="also write the Markdown table here")
    args = ap.parse_args()
    from vrex_edge.runtime.engine import load_model

    bundle = args.bundle or smollm2_bundle(ROOT / ".cache")[1]
    model = load_model(bundle)
    ids = model.tokenizer.encode(reference_text())
    need = args.cache + args.frames * args.chunk
    assert len(ids) >= need, f"corpus has {len(ids)} tokens, need {need}"
    variants = ["full", *[v for v in args.variants if v != "full"]]
    runners = [Runner(model, v) for v in variants]
    for s in range(0, args.cache, args.chunk):  # warm-up: iterative prefill
        for r in runners:
            r.feed(ids[s : min(s + args.chunk, args.cache)], "prefill")
    fid = {v: {"top1": [], "kl": [], "dtop1": [], "dkl": []} for v in variants}

    def compare(logits: list[np.ndarray], top: str, kl: str) -> None:
        ref = log_softmax(logits[0])
        for r, lg in zip(runners, logits, strict=True):
            lp = log_softmax(lg)
            fid[r.var][top].extend((lp.argmax(-1) == ref.argmax(-1)).tolist())
            fid[r.var][kl].extend((np.exp(ref) * (ref - lp)).sum(-1).tolist())

    for f in range(args.frames):
        s = args.cache + f * args.chunk
        compare([r.feed(ids[s : s + args.chunk], "prefill", measure=True) for r in runners], "top1", "kl")
    last = [r.feed(ids[need : need + 1], "decode", measure=True) for r in runners]  # teacher-forced decode
    for _ in range(args.gen):
        compare(last, "dtop1", "dkl")
        tok = int(last[0][-1].argmax())
        last = [r.feed([tok], "decode", measure=True) for r in runners]
    conts = []
    for r, lg in zip(runners, last, strict=True):  # free-running greedy continuation per policy
        seq, t = [], int(lg[-1].argmax())
        for _ in range(args.gen):
            seq.append(t)
            t = int(r.feed([t], "decode")[-1].argmax())
        conts.append(seq)
    lines = [f"SmolLM2-135M, {args.cache}-token cache of real text, {args.chunk}-token chunks, {args.frames} frames "
             f"({args.frames * args.chunk} predicted positions), {args.gen} decode steps.", "",
             "| variant | frame ms (median) | p95 | attention ms | speedup | prefill kept | decode kept | top-1 | mean KL "
             "| decode top-1 | decode KL | greedy match |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    full_ms = None
    for r, seq in zip(runners, conts, strict=True):
        n_pre = args.frames
        fs = np.array(r.frame_s[:n_pre]) * 1e3
        at = np.array(r.attn_s[:n_pre]) * 1e3
        full_ms = full_ms or float(np.median(fs))
        same = next((i for i, (a, b) in enumerate(zip(seq, conts[0], strict=True)) if a != b), len(seq))
        d = fid[r.var]
        lines.append(f"| {r.var} | {np.median(fs):.1f} | {np.percentile(fs, 95):.1f} | {np.median(at):.1f} | "
                     f"{full_ms / np.median(fs):.2f}x | {100 * r.kept_fraction('prefill'):.1f}% | "
                     f"{100 * r.kept_fraction('decode'):.1f}% | {100 * np.mean(d['top1']):.1f}% | {np.mean(d['kl']):.4f} | "
                     f"{100 * np.mean(d['dtop1']):.1f}% | {np.mean(d['dkl']):.4f} | {same}/{args.gen} |")
    print("\n".join(lines))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
