"""One benchmark run: build the workload, run the variants, write the table and the plots."""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from vrex_edge.bench.bandwidth import read_bandwidth
from vrex_edge.bench.policies import Result, parse_variant, policy_defaults, run_bench
from vrex_edge.bench.report import counts_note, plot_heatmap, plot_latency, table
from vrex_edge.bench.streams import CACHE_DIR, Progress, load_workload
from vrex_edge.errors import ConfigError
from vrex_edge.runtime.engine import provider_name, uses_cuda
from vrex_edge.runtime.lanes import default_lanes

DEFAULT_POLICIES = ("full", "resv", "topk", "window")


@dataclass(frozen=True)
class BenchReport:
    markdown: str
    files: tuple[Path, ...]
    results: tuple[Result, ...]


def expand_variants(
    policies: Sequence[str], options: Mapping[str, object] | None = None, accels: Sequence[str] = ()
) -> list[str]:
    """Policy specs + shared options + backends -> variant specs.

    An option goes to every policy that knows it (unless the spec sets it); each resv variant is
    run once per backend in `accels` (the host reference when none is given)."""
    options = dict(options or {})
    known = set()
    out: list[str] = []
    for spec in policies:
        name, opts = parse_variant(spec)
        defaults = policy_defaults(name)
        known |= set(defaults)
        extra = {k: v for k, v in options.items() if k in defaults and k not in opts}
        backends = list(accels) if name == "resv" and accels and "accel" not in opts else [None]
        for b in backends:
            o = {**opts, **extra, **({"accel": b} if b and b != "host" else {})}
            out.append(name + (":" + ",".join(f"{k}={v}" for k, v in o.items()) if o else ""))
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"--opt {', '.join(unknown)}: no selected policy takes this option")
    return list(dict.fromkeys(out))


def run(
    *,
    workload: str = "text",
    sizes: Sequence[int] = (1000, 10000, 40000),
    policies: Sequence[str] = DEFAULT_POLICIES,
    options: Mapping[str, object] | None = None,
    accels: Sequence[str] = (),
    frames: int = 20,
    gen: int = 8,
    probes: int = 2,
    out: Path | None = None,
    bundle: Path | None = None,
    cache_dir: Path = CACHE_DIR,
    command: str = "",
    progress: Progress | None = None,
    providers: Sequence[str] = ("cpu",),
) -> BenchReport:
    """Run the benchmark; with `out`, write policies_<workload>.md and the PNG plots there."""
    if not sizes or min(sizes) < 1:
        raise ConfigError("--sizes must be positive token counts")
    if frames < 1 or gen < 0 or probes < 0:
        raise ConfigError("--frames must be >= 1, --gen and --probes >= 0")
    variants = expand_variants(policies, options, accels)
    wl = load_workload(workload, bundle, cache_dir=cache_dir, progress=progress, providers=providers)
    partial: list[Result] = []

    def write_partial(res: list[Result]) -> None:  # a long run keeps what it measured so far
        partial.extend(res)
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            (out / f"policies_{workload}.partial.md").write_text(table(partial) + "\n", encoding="utf-8")

    results = run_bench(
        wl,
        variants,
        sorted(sizes),
        frames=frames,
        gen=gen,
        probes=probes if gen else 0,
        progress=progress,
        on_size=write_partial,
    )
    if out is not None:
        (out / f"policies_{workload}.partial.md").unlink(missing_ok=True)
    lanes = default_lanes()
    on_gpu = uses_cuda([provider_name(p) for p in providers])  # the KV is then read from device memory
    read_gbs = None if on_gpu else read_bandwidth(lanes)
    head = [f"# vrex-edge bench: {workload}", ""]
    if command:
        head += ["```", command, "```", ""]
    head += [
        f"Workload: {wl.description}. Machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"{platform.python_implementation()} {platform.python_version()}; all policies in one run, in "
        f"lockstep on the same stream. Caches are filled with the model's real KV of the stream's first "
        f"{wl.real_tokens:,} tokens (repeated past that); model context: {wl.max_positions:,} positions.",
        "",
        counts_note(results, wl.chunk),
        "Attention K+V GB/s: float32 K and V bytes of the history each variant attended / its attention time "
        + (
            f"(the read bandwidth, measured after the run as float32 sums over 256 MiB on {lanes} thread(s), the "
            f"host attention's lanes: {read_gbs:.1f} GB/s)."
            if read_gbs is not None
            else "(the KV is on the GPU: no share of the host's read bandwidth is given)."
        ),
        "",
        table(results, read_gbs),
        "",
    ]
    md = "\n".join(head)
    files: list[Path] = []
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        files.append(out / f"policies_{workload}.md")
        files[-1].write_text(md, encoding="utf-8")
        files.append(
            plot_latency(
                results,
                out / f"latency_{workload}.png",
                f"{wl.model.manifest.name}, {workload}: per-frame latency ({wl.chunk} new tokens)",
            )
        )
        resv = [r for r in results if parse_variant(r.variant)[0] == "resv"]
        if resv:
            pick = max(resv, key=lambda r: (r.fidelity, r.size))  # the largest cache with real content
            files.append(
                plot_heatmap(
                    pick,
                    out / f"heatmap_{workload}.png",
                    f"{pick.variant} at {pick.size:,} cached tokens ({workload}): history kept per layer x KV head",
                )
            )
    return BenchReport(md, tuple(files), tuple(results))
