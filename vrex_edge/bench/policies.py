"""All retrieval policies side by side in one run on the same stream, at one cache size.

Every variant (policy + options) gets its own caches, filled with the same real KV (bulk
`extend`, no per-chunk prefill), then all variants are fed the same frames in lockstep, so
machine load hits them alike. Per frame: latency (forward + head of the last row), history kept
per layer x KV head, and the next-token distribution of every position compared with `full`'s.
At `probes` points the stream is interrupted by a reply: `gen` decode steps of full's greedy
tokens fed to every variant (decode latency, kept, top-1, KL), and, where fidelity is
meaningful, each variant's own greedy continuation from a copy of its caches (identical to full's?).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from vrex_edge.bench.streams import Progress, Workload
from vrex_edge.errors import ConfigError
from vrex_edge.runtime.kvcache import GrowingArray, LayerCache, Phase
from vrex_edge.runtime.retrieval import FullKV, Policy, get_spec, make_policy
from vrex_edge.runtime.retrieval.options import parse_pairs

SPLIT = ("cluster", "select", "gather", "attend")


def parse_variant(spec: str) -> tuple[str, dict[str, str]]:
    """'resv:tau=0.95,keys=pre' -> ('resv', {'tau': '0.95', 'keys': 'pre'}) (typed by the policy)."""
    name, _, rest = spec.partition(":")
    opts = parse_pairs(filter(None, rest.split(",")), where=f"policy options in {spec!r}")
    return name.strip(), opts


def policy_defaults(name: str) -> dict[str, object]:
    """The option names (and defaults) a policy accepts."""
    return get_spec(name).options.parse({}).resolved()


def factory(name: str, opts: dict[str, str], device: str = "cpu") -> Policy:
    return make_policy(name, opts, device=device)


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


@dataclass
class PhaseTally:
    kept: np.ndarray  # [L, KVH] history tokens attended, summed over calls
    history: np.ndarray  # [L] history tokens before the chunk, summed over calls
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(SPLIT, 0.0))
    ms: list[float] = field(default_factory=list)  # per call: forward + head of the last row
    attend_s: float = 0.0  # attention seconds (the caches' attend timers, else the forward's attention)
    kv_bytes: float = 0.0  # K + V bytes of the history the calls attended (float32)

    @property
    def kept_fraction(self) -> float:
        h = float(self.history.sum()) * self.kept.shape[1]
        return float(self.kept.sum()) / h if h else float("nan")

    @property
    def per_head(self) -> np.ndarray:
        """[L, KVH] kept fraction per layer and KV head."""
        return self.kept / np.maximum(self.history, 1)[:, None]


@dataclass
class Result:
    """One variant at one cache size."""

    variant: str
    size: int
    prefill: PhaseTally
    decode: PhaseTally
    top1: list[bool] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)
    dtop1: list[bool] = field(default_factory=list)
    dkl: list[float] = field(default_factory=list)
    greedy: list[bool] = field(default_factory=list)  # per probe: continuation identical to full's
    fidelity: bool = True  # False where the comparison with full is meaningless (past the context)
    fill_s: float = 0.0


class Runner:
    """One variant's caches over the shared model."""

    def __init__(self, wl: Workload, variant: str, caches: list[LayerCache], size: int):
        self.wl, self.variant, self.caches = wl, variant, caches
        L, kvh = wl.model.text.num_layers, wl.model.text.num_kv_heads
        self.res = Result(
            variant, size, PhaseTally(np.zeros((L, kvh)), np.zeros(L)), PhaseTally(np.zeros((L, kvh)), np.zeros(L))
        )
        self.pos = size
        self.last: np.ndarray | None = None  # [V] logits after the last fed token

    def feed(
        self,
        emb: np.ndarray,
        phase: Phase,
        *,
        rows: bool = False,
        caches: list[LayerCache] | None = None,
        pos: int | None = None,
    ) -> np.ndarray:
        """emb [n, D] -> logits [n, V] (rows) or [1, V]; measured into the tally unless caches is given."""
        m = self.wl.model
        own = caches is None
        caches = self.caches if own else caches
        p0 = self.pos if pos is None else pos
        t0 = time.perf_counter()
        h = m.forward(emb, np.arange(p0, p0 + emb.shape[0]), caches, phase)  # [n, D]
        last = m.head(h[-1:])  # [1, V]
        dt = time.perf_counter() - t0
        stage = m.timer.reset()
        if not own:
            return last
        self.pos += emb.shape[0]
        tally = self.res.prefill if phase == "prefill" else self.res.decode
        tally.ms.append(1e3 * dt)
        attend = 0.0
        for i, c in enumerate(self.caches):
            st = c.stats()
            tally.kept[i] += st.kept
            tally.history[i] += st.history
            tally.kv_bytes += 2 * 4 * m.text.head_dim * float(np.sum(st.kept))
            attend += st.seconds.get("attend", 0.0)
            for k, v in st.seconds.items():
                tally.seconds[k] = tally.seconds.get(k, 0.0) + v
        tally.attend_s += attend or stage.get("attention", 0.0)  # full's caches time no stages
        self.last = last[0]
        return np.concatenate([m.head(h[:-1]), last]) if rows else last


def _fill(wl: Workload, caches: list[LayerCache], n: int, extra: int) -> None:
    """Bulk-append the first n stream tokens' real KV: the prefix as one chunk, then frames of wl.chunk.
    `extra`: tokens still to come (full's buffers are sized for them, not doubled at 40K)."""
    rope = wl.model.rope
    p = min(wl.prefix_embeds.shape[0], n)
    for layer, c in enumerate(caches):
        k, v = wl.kv(layer, n)  # [KVH, n, hd] un-rotated
        pos = np.arange(n)
        if isinstance(c, FullKV):
            c.k, c.v = GrowingArray(c.kvh, c.hd, n + extra), GrowingArray(c.kvh, c.hd, n + extra)
            c.k.append(rope.apply(k, pos))
            c.v.append(v)
            continue
        if p:
            c.extend(k[:, :p], v[:, :p], pos[:p], chunk=p)  # type: ignore[attr-defined]
        c.extend(k[:, p:], v[:, p:], pos[p:], chunk=wl.chunk)  # type: ignore[attr-defined]


def make_filled(
    wl: Workload, variants: list[str], size: int, extra: int = 0, progress: Progress | None = None
) -> tuple[dict[str, list[LayerCache]], dict[str, float]]:
    """Caches per variant, filled to `size`. Variants of one policy that differ only in tau share
    one fill (a deep copy with tau set: tau does not change what is stored)."""
    out: dict[str, list[LayerCache]] = {}
    secs: dict[str, float] = {}
    filled: dict[tuple, list[LayerCache]] = {}
    for var in variants:
        name, opts = parse_variant(var)
        make = factory(name, opts, wl.device)  # validates the options
        key = (name, tuple(sorted((k, str(v)) for k, v in opts.items() if k != "tau")))
        t0 = time.perf_counter()
        base = filled.get(key)
        tau = getattr(make.options, "tau", None)  # resv and oracle: the same fill serves every tau
        if base is not None and tau is not None:
            caches = clone(wl, var, base)
            for c in caches:
                c.set_tau(tau)  # type: ignore[attr-defined]
        else:
            if progress:
                progress(f"filling {var} to {size:,} tokens")
            caches = wl.model.make_caches(make)
            _fill(wl, caches, size, extra)
            filled[key] = caches
        out[var] = caches
        secs[var] = time.perf_counter() - t0
    return out, secs


def run_size(
    wl: Workload,
    variants: list[str],
    size: int,
    *,
    frames: int,
    gen: int,
    probes: int,
    progress: Progress | None = None,
) -> list[Result]:
    """Measure every variant at one cache size (variants[0] must be 'full'). See the module docstring."""
    if not variants or variants[0] != "full":
        raise ConfigError("the variant list must start with 'full' (the reference)")
    fill_n = min(size, wl.real_tokens)
    end = size + frames * wl.chunk + probes * gen
    fidelity = size <= wl.real_tokens and end <= wl.max_positions
    built, fill_s = make_filled(wl, variants, size, end - size, progress)
    runners = [Runner(wl, v, built[v], size) for v in variants]
    for r in runners:
        r.res.fidelity, r.res.fill_s = fidelity, fill_s[r.variant]
    src = fill_n  # stream index of the next frame's content (after the real prefix)
    every = max(1, frames // max(probes, 1)) if probes else frames + 1
    for f in range(frames):
        emb = wl.stream_embeds(src, src + wl.chunk)
        src += wl.chunk
        logits = [r.feed(emb, "prefill", rows=fidelity) for r in runners]
        if fidelity:
            _compare(runners, logits, "top1", "kl")
        if progress and (f + 1) % 5 == 0:
            progress(f"{wl.name} {size:,}: frame {f + 1}/{frames}")
        if probes and (f + 1) % every == 0 and (f + 1) // every <= probes:
            _probe(wl, runners, gen, fidelity)
    return [r.res for r in runners]


def clone(wl: Workload, variant: str, caches: list[LayerCache]) -> list[LayerCache]:
    """A copy of filled caches: a deep copy on the host; caches on a device (their arenas are device
    OrtValues) are built anew for the variant and restored from the originals' declared state."""
    if wl.device == "cpu":
        return copy.deepcopy(caches)
    new = wl.model.make_caches(factory(*parse_variant(variant), wl.device))
    for src, dst in zip(caches, new, strict=True):
        dst.restore(src.state())  # type: ignore[attr-defined]
    return new


def _compare(runners: list[Runner], logits: list[np.ndarray], top: str, kl: str) -> None:
    ref = log_softmax(logits[0])  # [n, V]
    for r, lg in zip(runners, logits, strict=True):
        lp = log_softmax(lg)
        getattr(r.res, top).extend((lp.argmax(-1) == ref.argmax(-1)).tolist())
        getattr(r.res, kl).extend((np.exp(ref) * (ref - lp)).sum(-1).tolist())


def _probe(wl: Workload, runners: list[Runner], gen: int, fidelity: bool) -> None:
    """A reply of `gen` tokens: free-running greedy per variant on a copy (fidelity only), then
    full's greedy tokens fed to every variant (teacher-forced decode, measured)."""
    m = wl.model
    if fidelity:
        seqs = []
        for r in runners:
            caches, pos, tok, seq = clone(wl, r.variant, r.caches), r.pos, int(r.last.argmax()), []  # type: ignore[union-attr]
            for _ in range(gen):
                seq.append(tok)
                tok = int(r.feed(m.embed([tok]), "decode", caches=caches, pos=pos)[-1].argmax())
                pos += 1
            seqs.append(seq)
        for r, seq in zip(runners, seqs, strict=True):
            r.res.greedy.append(seq == seqs[0])
    tok = int(runners[0].last.argmax())  # type: ignore[union-attr]
    for _ in range(gen):
        emb = m.embed([tok])
        logits = [r.feed(emb, "decode") for r in runners]
        if fidelity:
            _compare(runners, logits, "dtop1", "dkl")
        tok = int(logits[0][-1].argmax())


def run_bench(
    wl: Workload,
    variants: list[str],
    sizes: list[int],
    *,
    frames: int,
    gen: int,
    probes: int,
    progress: Progress | None = None,
    on_size: Callable[[list[Result]], None] | None = None,
) -> list[Result]:
    """run_size for each size after computing the real KV once (up to the largest size it can cover)."""
    variants = ["full", *[v for v in variants if v != "full"]]
    for v in variants:  # validate every variant before any heavy work
        factory(*parse_variant(v))
    # as much real KV as the cap allows; sizes past it repeat it
    tail = (frames + 1) * wl.chunk + probes * gen
    real = max(min(max(sizes), real_cap(wl) - tail), wl.chunk)
    wl.prepare(real + tail, progress)
    out: list[Result] = []
    for s in sizes:
        res = run_size(wl, variants, s, frames=frames, gen=gen, probes=probes, progress=progress)
        out.extend(res)
        if on_size:
            on_size(res)
    return out


def real_cap(wl: Workload) -> int:
    """Largest cache filled with real (not repeated) KV: the trained context for text (computing
    it is the slow part), any size the positions allow for the cheap video models."""
    return wl.max_positions if wl.name == "video" else min(wl.max_positions, 8192)
