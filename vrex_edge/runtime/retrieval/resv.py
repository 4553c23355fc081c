"""`resv`: hash-bit clustered KV with WiCSum selection per layer and KV head (docs/resv-spec.md).

The chunk attends exactly to sink + the tokens of the selected clusters + recent + itself.
Selection runs per (layer, KV head) on the averaged, softmax-consistent cluster masses of the
chunk's queries and the KV head's GQA query heads, so kept counts differ per head and frame.
Why the defaults are what they are: docs/policies.md and benchmarks/results/.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from vrex_edge.accel import backend_names, hyperplanes
from vrex_edge.bundle import TextSpec
from vrex_edge.errors import AccelError, ConfigError
from vrex_edge.runtime.retrieval.base import POSITION_MODES, WindowedCache
from vrex_edge.runtime.retrieval.clusters import ClusterStore, fit_budget
from vrex_edge.runtime.retrieval.gather import BufferedGather
from vrex_edge.runtime.retrieval.options import WindowedOptions, opt
from vrex_edge.runtime.retrieval.policy import Policy, PolicySpec
from vrex_edge.runtime.retrieval.storage import KVStorage
from vrex_edge.runtime.rope import Rope

KEY_MODES = ("post", "pre")
SCORE_MODES = ("exact", "subset", "mean", "prefilter")
REP_MODES = ("auto", "f32", "int8")


@dataclass(frozen=True)
class ReSVOptions(WindowedOptions):
    """ReSV's options (docs/policies.md describes each and how the defaults were chosen)."""

    policy = "resv"
    recent: int = opt(256, lo=0, help="last tokens always attended")
    tau: float = opt(0.98, lo=0, hi=1, lo_open=True, help="WiCSum fraction of the cluster mass kept")
    bits: int = opt(64, lo=1, help="hash bits per key")
    hamming: int = opt(2, lo=0, help="Hamming threshold for joining a cluster")
    horizon: int = opt(128, lo=1, help="open clusters a token may join (the newest ones)")
    max_cluster: int = opt(32, lo=1, help="tokens per cluster at most")
    open_rows: int = opt(
        256, lo=1, help="tokens per KV head waiting in open clusters at most (past it the oldest seal early)"
    )
    keys: str = opt("post", choices=KEY_MODES, help="hash post- or pre-RoPE keys")
    score_keys: str | None = opt(None, choices=KEY_MODES, help="representatives' key form (default: keys)")
    positions: str = opt("absolute", choices=POSITION_MODES, help="absolute stream positions or compact 0..L-1")
    accel: str = opt("host", help="retrieval backend (vrex-edge accel list)")
    seed: int = opt(0, lo=0, help="seed of the hash hyperplanes")
    cluster_batch: int = opt(64, lo=1, help="tokens leave the window in groups of at least this many")
    reselect: int = opt(1, lo=1, help="reuse a selection for this many calls of a phase")
    decode_reselect: int = opt(
        0, lo=0, help="decode: reuse a selection for this many calls (a reply's tokens; 0: as reselect)"
    )
    dense_below: int = opt(0, lo=0, help="attend to all history while it is shorter (0: off)")
    incremental: bool = opt(True, affects=False, help="absolute positions: copy only newly selected clusters")
    max_kept: int = opt(
        0, lo=0, help="retrieved tokens per KV head at most, heaviest clusters first (0: no cap but --kv-budget's)"
    )
    fine: int = opt(0, lo=0, help="resident fine representatives per head (0: all; else two-level tables)")
    block: int = opt(16, lo=1, help="clusters per retired block (two-level tables)")
    tau_coarse: float = opt(0.99, lo=0, hi=1, lo_open=True, help="WiCSum fraction over retired blocks")
    score: str = opt(
        "exact",
        choices=SCORE_MODES,
        help="cluster masses from all the chunk's queries (exact), score_queries of them per query head (subset), "
        "each query head's mean query (mean), or the exact masses of the prefilter fraction of clusters nearest "
        "in Hamming distance to the queries' codes (prefilter; one-level tables, keys = score_keys)",
    )
    score_queries: int = opt(2, lo=1, help="score=subset: chunk tokens scored per query head (evenly spaced)")
    prefilter: float = opt(0.5, lo=0, hi=1, lo_open=True, help="score=prefilter: fraction of clusters scored")
    reps: str = opt(
        "auto",
        choices=REP_MODES,
        absent="f32",
        help="representatives scored as int8 (one scale per cluster, the chunk's queries 7-bit per row; the masses "
        "after the product are float32) or float32; auto: int8 with accel=host, fine=0 and score other than "
        "prefilter, else float32",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.score_keys is None:
            object.__setattr__(self, "score_keys", self.keys)
        if self.score == "prefilter" and self.score_keys != self.keys:
            raise ConfigError("resv: score=prefilter needs score_keys equal to keys (query and cluster codes)")
        why_f32 = self._float32_only()
        if self.reps == "auto":
            object.__setattr__(self, "reps", "f32" if why_f32 else "int8")
        if self.reps == "int8" and why_f32:
            raise ConfigError(f"resv: reps=int8 needs one-level tables on the host backend ({why_f32})")
        if self.accel not in backend_names():
            raise AccelError(f"unknown retrieval backend '{self.accel}' (available: {', '.join(backend_names())})")

    def _float32_only(self) -> str | None:
        """Why these settings score float32 representatives whatever `reps` says (None: int8 can apply)."""
        if self.accel != "host":
            return f"accel={self.accel} scores in its own arithmetic"
        if self.fine:
            return "two-level tables (fine > 0) score float32 candidates"
        if self.score == "prefilter":
            return "score=prefilter scores float32 candidates"
        return None


class ReSVCache(WindowedCache):
    def __init__(self, layer: int, text: TextSpec, rope: Rope, o: ReSVOptions, *, policy: Policy, storage: KVStorage):
        """One layer's ReSV cache: options `o`, the session's backend and RoPE table from `policy`,
        its arrays from `storage`."""
        self.post = o.keys == "post"  # hash codes from rotated (absolute positions) or un-rotated keys
        self.score_post = o.score_keys == "post"  # representatives (and queries) rotated or not
        compact = o.positions == "compact"  # storage form: un-rotated when compact, rotated when absolute
        kvh, hd = text.num_kv_heads, text.head_dim
        incremental = o.incremental and not compact
        super().__init__(
            text,
            rope,
            sink=o.sink,
            recent=o.recent,
            positions=o.positions,
            table=policy.rope_table(rope, text) if compact else None,
            buffer=storage.buffer(
                layer, kvh, hd, keeps_rows=incremental, max_rows=text.max_positions if compact else None
            ),
            aux=(self.post == compact) or (self.score_post == compact),
            absorb_batch=o.cluster_batch,
            engine=policy.engine,
        )
        # reuse a selection for this many calls of the same phase
        self.reselect = {"prefill": o.reselect, "decode": o.decode_reselect or o.reselect}
        self.tau = o.tau
        self.backend = policy.backend
        planes = hyperplanes(layer, kvh, o.bits, hd, seed=o.seed)
        self.store = ClusterStore(
            kvh,
            hd,
            planes=planes,
            backend=self.backend,
            arena=storage.arena(layer, kvh, hd, self.backend.layout),
            open_rows=storage.open_rows(layer, kvh, hd),
            archive=storage.archive(layer, kvh, o.block, hd),
            threshold=o.hamming,
            max_size=o.max_cluster,
            horizon=o.horizon,
            max_open=o.open_rows,
            fine=o.fine,
            block=o.block,
            tau_coarse=o.tau_coarse,
            groups=self.g,
            score=o.score,
            score_queries=o.score_queries,
            prefilter=o.prefilter,
            reps=o.reps,
            lanes=getattr(self.engine, "lanes", None),  # the attention engine's threads (runtime/lanes.py)
        )
        self.last_mass: np.ndarray | None = None  # [KVH, C] of the last selection (tools, tests)
        self.last_nsel = np.zeros(self.kvh, np.int64)
        self.last_sel: list[np.ndarray] = []
        self._reuse: tuple[str, int, np.ndarray] | None = None  # (phase, calls left, nclu at selection)
        self.dense_below = o.dense_below
        self.max_kept = o.max_kept  # at most this many retrieved tokens per head (0: no cap)
        self.gatherer = BufferedGather(self) if incremental else None

    def set_tau(self, tau: float) -> None:
        """Select with another WiCSum fraction from the next call on (benchmarks sweep it over one fill)."""
        self.tau = tau

    def _aux(self, k: np.ndarray, k_abs: np.ndarray) -> np.ndarray | None:
        """The key form that is not the storage form, when clustering or scoring needs it."""
        if self.ring.aux is None:
            return None
        return k_abs if self.compact else k

    def _absorb(self, k, v, aux, pos, tag) -> None:
        def form(post: bool) -> np.ndarray:
            return k if post != self.compact else aux  # storage is rotated unless compact

        self.store.push(k, v, pos, form(self.post), form(self.score_post))

    def _clusters(self) -> np.ndarray:
        return self.store.nclu.copy()

    def _history_nbytes(self) -> int:
        return self.store.nbytes()

    def _history_state(self) -> dict[str, Any]:
        reuse = (
            None if self._reuse is None else {"phase": self._reuse[0], "left": self._reuse[1], "then": self._reuse[2]}
        )
        return {
            "store": self.store.state(),
            "last_mass": self.last_mass,
            "last_sel": list(self.last_sel),
            "last_nsel": self.last_nsel,
            "reuse": reuse,
        }

    def _restore_history(self, s: dict[str, Any]) -> None:
        self.store.restore(s["store"])
        self.last_mass, self.last_nsel = s["last_mass"], np.asarray(s["last_nsel"], np.int64)
        self.last_sel = [np.asarray(x, np.int64) for x in s["last_sel"]]
        r = s["reuse"]
        self._reuse = None if r is None else (str(r["phase"]), int(r["left"]), np.asarray(r["then"], np.int64))

    def reused_selection(self, phase: str) -> list[np.ndarray] | None:
        """The clusters per head that the next call of `phase` reuses (the last selection plus every
        cluster opened since), or None when that call selects anew (reselect, decode_reselect)."""
        if self._reuse is None or self._reuse[0] != phase or self._reuse[1] <= 0:
            return None
        then = self._reuse[2]
        return [np.concatenate([s, np.arange(then[h], self.store.nclu[h])]) for h, s in enumerate(self.last_sel)]

    def _take_reused(self) -> list[np.ndarray] | None:
        """This call's reused selection (one call of the reuse counted), or None: it selects anew."""
        sels = self.reused_selection(self.phase)
        if sels is not None:
            assert self._reuse is not None
            phase, left, then = self._reuse
            self._reuse = (phase, left - 1, then)
        return sels

    def retrieve_budget(self, n: int) -> int:
        budget = super().retrieve_budget(n)
        cap = self.max_kept
        tiers = getattr(self.buffer, "retrieved_cap", None)  # KV tiers: what the budget leaves (0: no cap)
        if tiers is not None and (room := tiers()):
            cap = min(cap, room) if cap else room
        return min(budget, cap) if cap else budget

    def _retrieve(self, q: np.ndarray, q_abs: np.ndarray, budget: int, sec: dict[str, float]) -> np.ndarray:
        st = self.store
        c = int(st.nclu.max())
        r = np.zeros(self.kvh, np.int64)
        if c == 0:
            return r
        t0 = time.perf_counter()
        hist = self.seen - self.sink_n - self.ring.n  # tokens in the clusters
        if hist < self.dense_below and hist <= budget:  # small history: attend to all of it, no scoring
            sels = [np.arange(int(m)) for m in st.nclu]
            self._reuse = None
        elif (reused := self._take_reused()) is not None:  # the last selection plus the clusters opened since
            sels = reused
        else:
            n = q.shape[1]
            qs = (q_abs if self.score_post else q).reshape(self.kvh, self.g * n, self.hd)  # [KVH, G*n, hd]
            keep, mass = st.score(qs, tau=self.tau, budget=budget)
            sels = [np.flatnonzero(keep[h]) for h in range(self.kvh)]
            self.last_mass, self.last_sel = mass, sels
            self.last_nsel = np.array([s.size for s in sels])
            self._reuse = (self.phase, self.reselect[self.phase] - 1, st.nclu.copy())
        sels = fit_budget(sels, self.last_mass, st.counts, budget)  # compact positions or max_kept
        for h in range(self.kvh):
            r[h] = st.counts[h, sels[h]].sum()
        t1 = time.perf_counter()
        sec["select"] += t1 - t0
        self.reserve(int(r.max()))
        s = self.sink_n
        if self.gatherer is not None and self.buffer.keeps_rows:
            self.gatherer.gather(sels)
        else:
            for h in range(self.kvh):
                st.gather(
                    h, sels[h], self.buf_k[h, s:], self.buf_v[h, s:], self.buf_pos[h, s:] if self.compact else None
                )
        sec["gather"] += time.perf_counter() - t1
        return r


def _build(policy: Policy, layer: int, text: TextSpec, rope: Rope, storage: KVStorage) -> ReSVCache:
    assert isinstance(policy.options, ReSVOptions)
    if policy.device == "cuda":  # KV, representatives, scoring and attention on the GPU (retrieval/device_resv.py)
        from vrex_edge.runtime.retrieval.device_resv import DeviceReSVKV, unsupported
        from vrex_edge.runtime.retrieval.device_tiers import BudgetReSVKV, device_budget
        from vrex_edge.runtime.retrieval.storage import RESIDENT

        budget = device_budget(storage, text.num_layers)  # --kv-budget alone: the tiers on the GPU
        if unsupported(policy.options, RESIDENT if budget is not None else storage) is not None:
            return ReSVCache(layer, text, rope, policy.options, policy=policy, storage=storage)  # graphs still on CUDA
        if budget is not None:
            return BudgetReSVKV(
                layer, text, rope, policy.options, policy=policy, engine=policy.device_engine, budget=budget
            )
        return DeviceReSVKV(
            layer, text, rope, policy.options, policy=policy, engine=policy.device_engine, storage=storage
        )
    return ReSVCache(layer, text, rope, policy.options, policy=policy, storage=storage)


SPEC = PolicySpec(
    "resv", ReSVOptions, _build, "hash-bit clusters of keys, WiCSum selection per layer and head", tiers=True
)
