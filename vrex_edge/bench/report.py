"""Markdown tables and PNG plots of benchmark results (matplotlib is imported only to plot)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vrex_edge.bench.policies import Result, parse_variant

HEADER = (
    "| cached | policy | frame ms (median) | p95 | speedup vs full | retrieval share | prefill kept "
    "| decode kept | top-1 | mean KL | decode top-1 | decode KL | identical greedy | attention K+V GB/s |"
)


def _pct(x: float) -> str:
    return "-" if np.isnan(x) else f"{100 * x:.1f}%"


def median_ms(r: Result) -> float:
    return float(np.median(r.prefill.ms)) if r.prefill.ms else float("nan")


def retrieval_share(r: Result) -> float:
    """(cluster + select + gather) seconds / frame seconds over the prefill frames."""
    s = r.prefill.seconds
    total = sum(r.prefill.ms) / 1e3
    return (s.get("cluster", 0) + s.get("select", 0) + s.get("gather", 0)) / total if total else float("nan")


def attention_rate(r: Result, read_gbs: float | None) -> str:
    """K+V bytes of the attended history / attention seconds over the prefill frames, and that as a share
    of the machine's measured read bandwidth (bench/bandwidth.py)."""
    if not r.prefill.attend_s:
        return "-"
    gbs = r.prefill.kv_bytes / r.prefill.attend_s / 1e9
    return f"{gbs:.1f}" + (f" ({100 * gbs / read_gbs:.0f}%)" if read_gbs else "")


def row(r: Result, full_ms: float, read_gbs: float | None = None) -> str:
    ms = np.asarray(r.prefill.ms)
    fid = r.fidelity and bool(r.top1)
    dfid = r.fidelity and bool(r.dtop1)
    cells = [
        f"{r.size:,}",
        f"`{r.variant}`",
        f"{np.median(ms):.1f}",
        f"{np.percentile(ms, 95):.1f}",
        f"{full_ms / np.median(ms):.2f}x",
        _pct(retrieval_share(r)),
        _pct(r.prefill.kept_fraction),
        _pct(r.decode.kept_fraction),
        f"{100 * np.mean(r.top1):.1f}%" if fid else "n/a",
        f"{np.mean(r.kl):.4f}" if fid else "n/a",
        f"{100 * np.mean(r.dtop1):.1f}%" if dfid else "n/a",
        f"{np.mean(r.dkl):.4f}" if dfid else "n/a",
        f"{sum(r.greedy)}/{len(r.greedy)}" if r.fidelity and r.greedy else "n/a",
        attention_rate(r, read_gbs),
    ]
    return "| " + " | ".join(cells) + " |"


def table(results: Sequence[Result], read_gbs: float | None = None) -> str:
    """One row per (size, variant); speedup against the same size's full; attention rates against
    `read_gbs` (the machine's read bandwidth) when given."""
    lines = [HEADER, "|" + "---|" * (HEADER.count("|") - 1)]
    full = {r.size: median_ms(r) for r in results if r.variant == "full"}
    lines += [row(r, full[r.size], read_gbs) for r in results]
    return "\n".join(lines)


def counts_note(results: Sequence[Result], chunk: int) -> str:
    r = results[0]
    n_pre, n_dec, probes = len(r.prefill.ms), len(r.decode.ms), len(r.greedy)
    lines = [
        f"Per size: {n_pre} measured frames of {chunk} tokens ({n_pre * chunk} predicted positions), "
        f"{n_dec} teacher-forced decode steps"
        + (
            f" in {probes} replies, each also decoded greedily by every policy from a copy of its caches"
            if probes
            else ""
        )
        + ".",
        "Retrieval share: (cluster + select + gather) time / frame time. Kept: cached tokens attended (sink + "
        "retrieved + recent window) / cached tokens before the chunk, summed over layers x KV heads and calls "
        "(prefill: the measured frames; decode: the reply tokens).",
    ]
    if any(not x.fidelity for x in results):
        lines.append(
            "n/a: fidelity vs full is not measured where the cache is filled with repeated KV or the "
            "stream passes the model's trained positions (full attention with absolute positions is "
            "meaningless there); those rows measure latency and kept fractions only."
        )
    return "\n".join(lines)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_latency(results: Sequence[Result], path: Path, title: str) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for var in dict.fromkeys(r.variant for r in results):
        rs = sorted((r for r in results if r.variant == var), key=lambda r: r.size)
        ax.plot([r.size for r in rs], [median_ms(r) for r in rs], marker="o", label=var)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("cached tokens")
    ax.set_ylabel("per-frame latency, median (ms)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_heatmap(r: Result, path: Path, title: str) -> Path:
    """Kept fraction per layer x KV head, prefill and decode side by side."""
    plt = _plt()
    data = [("prefill", r.prefill.per_head), ("decode", r.decode.per_head)]
    data = [(n, d) for n, d in data if np.asarray(d).sum() > 0]
    width = 2.2 + 1.6 * len(data) * max(1.0, r.prefill.kept.shape[1] / 3)
    fig, axes = plt.subplots(1, len(data), figsize=(width, 5.2), squeeze=False)
    for ax, (name, d) in zip(axes[0], data, strict=True):
        im = ax.imshow(d, aspect="auto", cmap="viridis", vmin=0, vmax=max(0.05, float(d.max())))
        ax.set_title(f"{name}: {100 * d.mean():.1f}% mean", fontsize=9)
        ax.set_xlabel("KV head")
        ax.set_ylabel("layer")
        ax.set_xticks(range(d.shape[1]))
        ax.set_yticks(range(0, d.shape[0], max(1, d.shape[0] // 15)))
        fig.colorbar(im, ax=ax, fraction=0.08, label="history kept")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def pareto_points(results: Sequence[Result]) -> dict[str, list[tuple[float, float, float, str]]]:
    """policy name -> [(prefill kept, mean KL, top-1, variant)] sorted by kept."""
    out: dict[str, list[tuple[float, float, float, str]]] = {}
    for r in results:
        name = parse_variant(r.variant)[0]
        if name == "full" or not r.top1:
            continue
        out.setdefault(name, []).append(
            (r.prefill.kept_fraction, float(np.mean(r.kl)), float(np.mean(r.top1)), r.variant)
        )
    return {k: sorted(v) for k, v in out.items()}


def plot_pareto(results: Sequence[Result], path: Path, title: str) -> Path:
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4.2))
    for name, pts in pareto_points(results).items():
        x = [100 * p[0] for p in pts]
        a.plot(x, [max(p[1], 1e-6) for p in pts], marker="o", label=name)
        b.plot(x, [100 * p[2] for p in pts], marker="o", label=name)
    a.set_yscale("log")
    a.set_ylabel("mean KL(full || policy)")
    b.set_ylabel("top-1 agreement with full (%)")
    for ax in (a, b):
        ax.set_xlabel("history kept in prefill (%)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
