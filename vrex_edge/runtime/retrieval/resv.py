"""`resv`: hash-bit clustered KV with WiCSum selection per layer and KV head (resv.md section 3).

The chunk attends exactly to sink + the tokens of the selected clusters + recent + itself.
Selection runs per (layer, KV head) on the averaged, softmax-consistent cluster masses of the
chunk's queries and the KV head's GQA query heads, so kept counts differ per head and frame.

Options (defaults in DEFAULTS): tau (WiCSum fraction), bits (hash bits), hamming (threshold),
horizon (candidate clusters: the newest open ones), max_cluster, sink, recent, keys (hash
post- or pre-RoPE keys), score_keys (representatives; default = keys), positions
(absolute | compact), accel (retrieval backend), seed (hyperplanes), cluster_batch (tokens
leave the window in groups of at least this many), reselect (reuse a selection for this many
calls of a phase, adding clusters opened since), dense_below (while fewer history tokens are
cached, attend to all of them and skip scoring: exact at small caches; 0 = off, the default,
because it measured no faster than selecting, see results/retrieval_micro.md), incremental (absolute positions: keep the sealed clusters gathered for the
last call in the attention buffer and copy only the difference; 0 = gather everything each call),
max_kept (at most this many retrieved tokens per KV head, heaviest clusters first; 0 = no cap:
WiCSum keeps a fraction of a history that never stops growing, so on an endless stream the cap
is what bounds a frame's work and the attention buffers), fine (0 = every cluster keeps a resident
representative; else only the newest `fine` of each head do, older ones are retired in blocks of
`block` clusters with one coarse representative each, their fine ones archived, and selection is
two-level: WiCSum at tau_coarse over the blocks, then at tau over the kept blocks' clusters and the
resident ones. On an endless stream this is what keeps the resident tables bounded, issue 7).
keys=post, tau=0.9 measured best on real text (benchmarks/bench_policies.py); cluster_batch/
reselect > 1 trade fidelity for time; dense_below and incremental change no output.
"""

from __future__ import annotations

import time

import numpy as np

from vrex_edge.accel import get_backend, hyperplanes
from vrex_edge.bundle import TextSpec
from vrex_edge.errors import ConfigError
from vrex_edge.runtime.kvcache import CacheFactory, register_policy
from vrex_edge.runtime.retrieval.base import RopeTable, WindowedCache
from vrex_edge.runtime.retrieval.clusters import ClusterStore
from vrex_edge.runtime.retrieval.gather import BufferedGather
from vrex_edge.runtime.retrieval.options import check_options, table_cache
from vrex_edge.runtime.rope import Rope

KEY_MODES = ("post", "pre")
DENSE_BELOW = 0  # off: measured never cheaper than selecting (per-frame clustering dominates small caches; results/retrieval_micro.md)
DEFAULTS = dict(tau=0.9, bits=64, hamming=2, horizon=128, max_cluster=32, sink=32, recent=128,
                keys="post", score_keys=None, positions="absolute", accel="host", seed=0,
                cluster_batch=1, reselect=1, dense_below=DENSE_BELOW, incremental=1, max_kept=0,
                fine=0, block=16, tau_coarse=0.99)


class ReSVCache(WindowedCache):
    def __init__(self, layer: int, text: TextSpec, rope: Rope, *, table: RopeTable | None, tau: float, bits: int,
                 hamming: int, horizon: int, max_cluster: int, sink: int, recent: int, keys: str,
                 score_keys: str, positions: str, accel: str, seed: int, cluster_batch: int, reselect: int,
                 dense_below: int = DENSE_BELOW, incremental: bool = True, max_kept: int = 0,
                 fine: int = 0, block: int = 16, tau_coarse: float = 0.99):
        self.post = keys == "post"  # hash codes from rotated (absolute positions) or un-rotated keys
        self.score_post = score_keys == "post"  # representatives (and queries) rotated or not
        compact = positions == "compact"  # storage form: un-rotated when compact, rotated when absolute
        super().__init__(text, rope, sink=sink, recent=recent, positions=positions, table=table,
                         aux=(self.post == compact) or (self.score_post == compact), absorb_batch=cluster_batch)
        self.reselect = reselect  # reuse a selection for this many calls of the same phase
        self.tau = tau
        self.backend = get_backend(accel)
        planes = hyperplanes(layer, self.kvh, bits, self.hd, seed=seed)
        self.store = ClusterStore(self.kvh, self.hd, planes=planes, backend=self.backend, threshold=hamming,
                                  max_size=max_cluster, horizon=horizon, fine=fine, block=block,
                                  tau_coarse=tau_coarse)
        self.last_mass: np.ndarray | None = None  # [KVH, C] of the last selection (tools, tests)
        self.last_nsel = np.zeros(self.kvh, np.int64)
        self.last_sel: list[np.ndarray] = []
        self._reuse: tuple[str, int, np.ndarray] | None = None  # (phase, calls left, nclu at selection)
        self.dense_below = dense_below
        self.max_kept = max_kept  # at most this many retrieved tokens per head (0: no cap)
        self.gatherer = BufferedGather(self) if incremental and not self.compact else None

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

    def retrieve_budget(self, n: int) -> int:
        budget = super().retrieve_budget(n)
        return min(budget, self.max_kept) if self.max_kept else budget

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
        elif self._reuse is not None and self._reuse[0] == self.phase and self._reuse[1] > 0:
            _, left, then = self._reuse  # the last selection plus every cluster opened since
            sels = [np.concatenate([s, np.arange(then[h], st.nclu[h])]) for h, s in enumerate(self.last_sel)]
            self._reuse = (self.phase, left - 1, then)
        else:
            n = q.shape[1]
            qs = (q_abs if self.score_post else q).reshape(self.kvh, self.g * n, self.hd)  # [KVH, G*n, hd]
            keep, mass = st.score(qs, tau=self.tau)
            sels = [np.flatnonzero(keep[h]) for h in range(self.kvh)]
            self.last_mass, self.last_sel = mass, sels
            self.last_nsel = np.array([s.size for s in sels])
            self._reuse = (self.phase, self.reselect - 1, st.nclu.copy())
        for h in range(self.kvh):
            r[h] = st.counts[h, sels[h]].sum()
            if r[h] > budget:  # compact positions or max_kept: keep the heaviest clusters that fit
                sels[h] = heaviest(sels[h], self.last_mass[h], st.counts[h], budget)
                r[h] = st.counts[h, sels[h]].sum()
        t1 = time.perf_counter()
        sec["select"] += t1 - t0
        self.reserve(int(r.max()))
        s = self.sink_n
        if self.gatherer is not None:
            self.gatherer.gather(sels)
        else:
            for h in range(self.kvh):
                st.gather(h, sels[h], self.buf_k[h, s:], self.buf_v[h, s:],
                          self.buf_pos[h, s:] if self.compact else None)
        sec["gather"] += time.perf_counter() - t1
        return r


def heaviest(sel: np.ndarray, mass: np.ndarray, counts: np.ndarray, budget: int) -> np.ndarray:
    """The heaviest clusters of `sel` whose tokens (counts) fit in `budget`; clusters opened after
    the scoring (ids past mass [C]) weigh 0."""
    w = np.where(sel < mass.size, mass[np.minimum(sel, mass.size - 1)], 0.0)
    order = sel[np.argsort(-w, kind="stable")]
    tok = np.cumsum(counts[order])
    return order[: int(np.searchsorted(tok, budget, side="right"))]


def make_resv(**options: object) -> CacheFactory:
    o = check_options("resv", DEFAULTS, options)
    for name in ("tau", "tau_coarse"):
        if not 0.0 < float(o[name]) <= 1.0:
            raise ConfigError(f"resv: {name} must be in (0, 1] (got {o[name]})")
    if o["score_keys"] is None:
        o["score_keys"] = o["keys"]
    for name in ("keys", "score_keys"):
        if o[name] not in KEY_MODES:
            raise ConfigError(f"resv: {name} must be one of {', '.join(KEY_MODES)} (got '{o[name]}')")
    for name in ("dense_below", "incremental", "max_kept", "fine"):
        if int(o[name]) < 0:
            raise ConfigError(f"resv: {name} must be >= 0 (got {o[name]})")
    for name in ("bits", "max_cluster", "horizon", "cluster_batch", "reselect", "block"):
        if int(o[name]) < 1:
            raise ConfigError(f"resv: {name} must be >= 1 (got {o[name]})")
    get_backend(str(o["accel"]))  # fail early with the list of backends
    tables = table_cache()

    def factory(layer: int, text: TextSpec, rope: Rope) -> ReSVCache:
        table = tables(rope, text) if o["positions"] == "compact" else None
        return ReSVCache(layer, text, rope, table=table, tau=float(o["tau"]), bits=int(o["bits"]),
                         hamming=int(o["hamming"]), horizon=int(o["horizon"]), max_cluster=int(o["max_cluster"]),
                         sink=int(o["sink"]), recent=int(o["recent"]), keys=str(o["keys"]),
                         score_keys=str(o["score_keys"]), positions=str(o["positions"]), accel=str(o["accel"]), seed=int(o["seed"]),
                         cluster_batch=int(o["cluster_batch"]), reselect=int(o["reselect"]),
                         dense_below=int(o["dense_below"]), incremental=bool(int(o["incremental"])),
                         max_kept=int(o["max_kept"]), fine=int(o["fine"]), block=int(o["block"]),
                         tau_coarse=float(o["tau_coarse"]))

    return factory


register_policy("resv", make_resv)
