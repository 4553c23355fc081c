"""ReSV's per-layer history store: cluster tables and a cluster-contiguous KV arena per KV head.

Tokens leaving the recent window are hashed and assigned to clusters (through the retrieval
backend). A cluster is *open* while it can still grow (among the `horizon` newest clusters of
its head and below `max_size`); its tokens wait in a small open area. When it closes, its
tokens are written once into the sealed arena (the storage's `Arena`: memory, or the KV tiers'
cold log), contiguous, so a selected cluster is one slice and a run of selected neighbours one
bigger slice. Tables (codes, means, counts, offsets; running sums only while a cluster is open)
stay resident.

On an endless stream the representatives (hd floats per cluster and head) are what grows, so with
`fine` > 0 only the newest `fine` clusters of every head keep a resident representative; older
clusters are retired in blocks of `block` consecutive ids: a block keeps one coarse representative
(the mean of its tokens) and its token count, and its fine representatives go to the storage's
archive. Selection is then two-level: WiCSum at `tau_coarse` over the blocks, then the usual
WiCSum at tau over the fine clusters of the kept blocks and of the resident window
(docs/resv-spec.md, "Two-level tables").
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vrex_edge.accel.backend import RetrievalBackend
from vrex_edge.accel.host import popcount
from vrex_edge.runtime.arrays import grow
from vrex_edge.runtime.lanes import Lanes
from vrex_edge.runtime.retrieval.reps import Int8Reps
from vrex_edge.runtime.retrieval.storage import Arena, Rows, runs_to_index, take_rows
from vrex_edge.scratch import work

__all__ = ["ClusterStore", "fit_budget", "heaviest", "runs_to_index"]
LANES_FROM = 8192  # clusters per head from which int8 scoring splits the query rows over lanes
CANDIDATES = 2  # two-level selection scores the fine clusters of blocks holding at most this x the budget
TABLES = ("means_t", "codes", "counts", "start", "nclu", "lo", "nblk", "cmeans_t", "ccounts")


class ClusterStore:
    """Cluster tables of one layer (all KV heads) over the storage's open rows, arena and archive."""

    def __init__(
        self,
        kvh: int,
        hd: int,
        *,
        planes: np.ndarray,
        backend: RetrievalBackend,
        arena: Arena,
        open_rows: list[Rows],
        archive: Any,
        threshold: int,
        max_size: int,
        horizon: int,
        max_open: int = 0,
        capacity: int = 256,
        fine: int = 0,
        block: int = 16,
        tau_coarse: float = 0.99,
        groups: int = 1,
        score: str = "exact",
        score_queries: int = 2,
        prefilter: float = 0.5,
        reps: str = "f32",
        lanes: Lanes | None = None,
    ):
        self.kvh, self.hd = kvh, hd
        # how scoring reads the chunk's queries [KVH, groups * n, hd] (ReSVOptions.score; docs/resv-spec.md)
        self.groups, self.score_mode, self.score_queries, self.prefilter = groups, score, score_queries, prefilter
        self.planes = planes  # [KVH, bits, hd]
        self.backend = backend
        self.threshold, self.max_size, self.horizon = threshold, max_size, horizon
        self.max_open = max_open  # tokens per head in open clusters at most (0: horizon x max_size bounds it)
        words = -(-planes.shape[1] // 64)
        # the resident window of head h: cluster lo[h] + i is column i of means_t[h] and row i of codes[h]
        self.means_t = np.zeros((kvh, hd, capacity), np.float32)  # representatives, transposed for scoring
        self.codes = np.zeros((kvh, capacity, words), np.uint64)  # cluster codes (the founder's)
        self.counts = np.zeros((kvh, capacity), np.int64)  # TC
        self.start = np.full((kvh, capacity), -1, np.int64)  # offset in the sealed arena; -1 while open
        self.nclu = np.zeros(kvh, np.int64)
        self.open: list[np.ndarray] = [np.zeros(0, np.int64) for _ in range(kvh)]  # ids, oldest first
        # running f64 sums of the scoring keys, open clusters only ([len(open[h]), hd], aligned with open[h]):
        # a sealed cluster keeps just its f32 mean, so the tables cost ~280 bytes per cluster and head
        self.open_sums: list[np.ndarray] = [np.zeros((0, hd), np.float64) for _ in range(kvh)]
        self.arena = arena  # sealed clusters, written once at seal
        self.pending = open_rows  # per head, the open clusters' rows: owner -1 = moved out
        # two-level tables (fine > 0): ids < lo[h] of head h are retired, in nblk[h] blocks
        self.fine, self.block, self.tau_coarse = fine, block, tau_coarse
        self.lo = np.zeros(kvh, np.int64)
        self.nblk = np.zeros(kvh, np.int64)
        self.cmeans_t = np.zeros((kvh, hd, 0), np.float32)  # coarse representatives of the blocks
        self.ccounts = np.zeros((kvh, 0), np.int64)  # tokens per block
        self.archive = archive  # fine representatives of retired blocks
        # reps="int8" (one-level tables only, ReSVOptions): the representatives' int8 copies, scored by the
        # backend's score_select_q8
        self.q8 = Int8Reps(kvh, hd) if reps == "int8" else None
        self.lanes = lanes  # int8 scoring of many clusters: the query rows split over lanes (runtime/lanes.py)

    @property
    def means(self) -> np.ndarray:
        """Resident fine representatives [KVH, cap, hd] of clusters lo[h], lo[h] + 1, ...: a view of
        means_t (scores are then one plain GEMM per head)."""
        return self.means_t.swapaxes(1, 2)

    @property
    def tokens(self) -> np.ndarray:
        return self.counts.sum(-1)  # [KVH]

    def _grow(self, need: int, h: int) -> None:
        """Room for cluster ids < need of head h."""
        self._grow_window(need - int(self.lo[h]))
        # x1.25: a smaller transient than doubling (old and new coexist while copying)
        self.counts = grow(self.counts, need, axis=1, fill=0, factor=1.25, minimum=256)
        self.start = grow(self.start, need, axis=1, fill=-1, factor=1.25, minimum=256)

    def _grow_window(self, need: int) -> None:
        self.means_t = grow(self.means_t, need, axis=2, fill=0, factor=1.25, minimum=256)
        self.codes = grow(self.codes, need, axis=1, fill=0, factor=1.25, minimum=256)

    def push(self, k: np.ndarray, v: np.ndarray, pos: np.ndarray, kc: np.ndarray, ks: np.ndarray) -> None:
        """k, v [KVH, m, hd] (storage form), pos [m]; kc, ks [KVH, m, hd]: the keys hashed for
        clustering and the keys averaged into representatives for scoring; stream order."""
        codes = self.backend.hash_codes(kc, self.planes)  # [KVH, m, W]
        assign = self._assign(codes)  # [KVH] of [m] indices into open + newly opened
        for h in range(self.kvh):
            a, cand = assign[h], self.open[h]
            lo = int(self.lo[h])
            c = cand.size
            nnew = max(int(a.max()) + 1 - c, 0)
            first_id = int(self.nclu[h])
            self._grow(first_id + nnew, h)
            ext = np.concatenate([cand, np.arange(first_id, first_id + nnew, dtype=np.int64)])
            gid = ext[a]  # [m] cluster id per token
            if nnew:  # a new cluster's code is its founder's: the first token with that index (they open in order)
                founder = a >= c
                founder[1:] &= a[1:] > np.maximum.accumulate(a)[:-1]
                self.codes[h, first_id - lo : first_id - lo + nnew] = codes[h, founder]
                self.nclu[h] += nnew
            onehot = a[None, :] == np.arange(ext.size)[:, None]  # [ext, m]
            add = onehot.sum(1)  # [ext] tokens joining each cluster
            sums = np.zeros((ext.size, self.hd), np.float64)  # [ext, hd] running sums of ext's clusters
            sums[:c] = self.open_sums[h]
            sums += onehot.astype(np.float64) @ ks[h]
            t = np.flatnonzero(add)  # the clusters this batch touched
            ids = ext[t]
            self.counts[h, ids] += add[t]
            self.means[h, ids - lo] = sums[t] / self.counts[h, ids, None]
            if self.q8 is not None:
                self.q8.stale(h, ids - lo)
            self.pending[h].append(k[h], v[h], pos, gid)
            open_ok = self.counts[h, ext] < self.max_size
            rows = self.counts[h, ext]
            if open_ok.all() and ext.size <= self.horizon and (not self.max_open or rows.sum() <= self.max_open):
                self.open[h], self.open_sums[h] = ext, sums
                continue
            stay = np.flatnonzero(open_ok)
            stay = stay[-self.horizon :] if self.horizon > 0 else stay[:0]
            if self.max_open:  # the newest open clusters whose tokens fit; older ones seal early
                tail = np.cumsum(rows[stay][::-1])[::-1]  # tokens in stay[i:]
                stay = stay[tail <= self.max_open]
            self.open[h], self.open_sums[h] = ext[stay], sums[stay]
            gone = np.ones(ext.size, bool)
            gone[stay] = False
            self._seal(h, ext[gone])
        if self.fine:
            for h in range(self.kvh):
                self._retire(h)

    def _assign(self, codes: np.ndarray) -> list[np.ndarray] | np.ndarray:
        """codes [KVH, m, W] -> per head, each token's index into open[h] + the clusters it opens.

        One call for all heads when the backend has `cluster_assign_batch` (the host's), else per head."""
        kw = {"threshold": self.threshold, "max_size": self.max_size, "horizon": self.horizon}
        batch = getattr(self.backend, "cluster_assign_batch", None)
        if batch is None:
            return [
                self.backend.cluster_assign(
                    codes[h], self.codes[h, self.open[h] - self.lo[h]], self.counts[h, self.open[h]], **kw
                )
                for h in range(self.kvh)
            ]
        nc = np.array([o.size for o in self.open], np.int64)  # [KVH]
        c = int(nc.max())
        if (nc == c).all():  # the usual case: every head has `horizon` open clusters
            ids = np.stack(self.open) if c else np.zeros((self.kvh, 0), np.int64)  # [KVH, c]
            heads = np.arange(self.kvh)[:, None]
            cand, cnt = self.codes[heads, ids - self.lo[:, None]], self.counts[heads, ids]  # [KVH, c, W], [KVH, c]
        else:  # right-aligned, padded
            cand = np.zeros((self.kvh, c, codes.shape[2]), np.uint64)
            cnt = np.zeros((self.kvh, c), np.int64)
            for h, o in enumerate(self.open):
                if o.size:
                    cand[h, c - o.size :], cnt[h, c - o.size :] = self.codes[h, o - self.lo[h]], self.counts[h, o]
        return batch(codes, cand, cnt, nc, **kw)

    # ------------------------------------------------------------------ two-level tables

    def _retire(self, h: int) -> None:
        """Retire blocks of head h's oldest resident clusters while it has more than `fine` (and more
        than its open horizon) newer ones and the block is sealed (an open cluster still grows)."""
        b = self.block
        keep = max(self.fine, self.horizon)
        while (lo := int(self.lo[h])) + b <= int(self.nclu[h]) - keep and (self.start[h, lo : lo + b] >= 0).all():
            j = int(self.nblk[h])
            cnt = self.counts[h, lo : lo + b]  # [b]
            fine = self.means_t[h, :, :b]  # [hd, b]
            self.archive.put(h, j, fine.T)
            self.cmeans_t = grow(self.cmeans_t, j + 1, axis=2, fill=0, factor=1.25, minimum=64)
            self.ccounts = grow(self.ccounts, j + 1, axis=1, fill=0, factor=1.25, minimum=64)
            tot = int(cnt.sum())
            self.cmeans_t[h, :, j] = fine @ (cnt / max(tot, 1)).astype(np.float32)  # the mean of the block's tokens
            self.ccounts[h, j] = tot
            n = int(self.nclu[h]) - lo  # resident columns in use
            self.means_t[h, :, : n - b] = self.means_t[h, :, b:n]
            self.means_t[h, :, n - b : n] = 0
            self.codes[h, : n - b] = self.codes[h, b:n]
            self.lo[h], self.nblk[h] = lo + b, j + 1

    def forget(self, h: int, ids: np.ndarray) -> None:
        """Clusters `ids` of head h are gone (their tokens dropped): they weigh nothing from now on."""
        self.counts[h, ids] = 0
        b = self.block
        for j in np.unique(ids[ids < self.lo[h]] // b).tolist():
            self.ccounts[h, j] = self.counts[h, j * b : (j + 1) * b].sum()

    def score(
        self, q: np.ndarray, tau: float, *, backend: RetrievalBackend | None = None, budget: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        """q [KVH, R, hd] scoring queries -> (keep [KVH, C] bool, mass [KVH, C] f32) over cluster ids
        0..C-1 (C = the most clusters of any head); clusters that were not scored weigh 0.
        backend: another backend than the store's (the prefetcher predicts on the host).
        budget: the retrieved tokens per head the caller will keep at most (0: no bound). With
        two-level tables, only the heaviest kept blocks holding up to CANDIDATES x budget tokens have
        their fine clusters scored, so a frame's work stays bounded on an endless stream."""
        be = backend or self.backend
        c = int(self.nclu.max())
        q = self._queries(q)
        if not self.nblk.any():  # one level: every representative is resident
            if self.score_mode == "prefilter" and tau < 1.0:  # tau 1 keeps every cluster: nothing to filter
                return self._prefiltered(be, q, c, tau)
            if self.q8 is not None:
                vals, scale = self.q8.current(self.means_t, c)
                lanes = self.lanes if c >= LANES_FROM else None  # below it one run is faster
                return be.score_select_q8(q, vals, scale, self.counts[:, :c], tau=tau, lanes=lanes)
            return be.score_select(q, self.means[:, :c], self.counts[:, :c], tau=tau)
        nb = int(self.nblk.max())
        bk, bm = self._select(be, q, self.cmeans_t[:, :, :nb].swapaxes(1, 2), self.ccounts[:, :nb], self.tau_coarse)
        b = self.block
        blocks = [np.flatnonzero(bk[h]) for h in range(self.kvh)]
        if budget:  # the heaviest blocks by coarse mass, in id order (the archive reads them in order)
            cap = CANDIDATES * budget
            blocks = [np.sort(heaviest(x, bm[h], self.ccounts[h], cap)) for h, x in enumerate(blocks)]
        win = self.nclu - self.lo  # resident clusters per head
        r = int(max(x.size * b + int(w) for x, w in zip(blocks, win, strict=True)))
        # candidates: kept blocks' clusters, then the window (work arrays: ~1 MiB per head and call)
        reps = work("score.reps", (self.kvh, r, self.hd))
        ids = work("score.ids", (self.kvh, r), np.int64)
        for h, x in enumerate(blocks):
            m, w, lo = x.size * b, int(win[h]), int(self.lo[h])
            if m:  # read straight into the candidate rows (no transposed copy of what the archive holds)
                self.archive.get(h, x, out=reps[h, :m].reshape(x.size, b, self.hd))
                ids[h, :m] = (x[:, None] * b + np.arange(b)).ravel()
            reps[h, m : m + w] = self.means_t[h, :, :w].T
            ids[h, m : m + w] = np.arange(lo, lo + w)
            reps[h, m + w :] = 0
            ids[h, m + w :] = -1
        cnt = work("score.cnt", (self.kvh, r), self.counts.dtype)
        for h in range(self.kvh):  # counts of the candidates, 0 for the padding rows (ids -1)
            np.take(self.counts[h, :c], np.maximum(ids[h], 0), out=cnt[h], mode="clip")  # "raise" buffers out
        cnt[ids < 0] = 0
        k2, m2 = self._select(be, q, reps, cnt, tau)
        keep = np.zeros((self.kvh, c), bool)
        mass = np.zeros((self.kvh, c), np.float32)
        for h in range(self.kvh):
            ok = ids[h] >= 0
            keep[h, ids[h, ok]] = k2[h, ok]
            mass[h, ids[h, ok]] = m2[h, ok]
        return keep, mass

    def _queries(self, q: np.ndarray) -> np.ndarray:
        """The scoring queries the mode reads: q [KVH, G*n, hd] (row g*n + t: query head g, chunk token t)
        -> all of them (exact, prefilter), score_queries evenly spaced tokens per query head, the last
        included (subset), or each query head's mean over the chunk (mean)."""
        g = self.groups
        n = q.shape[1] // g
        if self.score_mode == "subset" and n > self.score_queries:
            t = np.unique(np.linspace(n - 1, 0, self.score_queries).round().astype(np.int64))
            return q.reshape(self.kvh, g, n, self.hd)[:, :, t].reshape(self.kvh, g * t.size, self.hd)
        if self.score_mode == "mean" and n > 1:
            return q.reshape(self.kvh, g, n, self.hd).mean(2, dtype=np.float32)
        return q

    def _prefiltered(self, be: RetrievalBackend, q: np.ndarray, c: int, tau: float) -> tuple[np.ndarray, np.ndarray]:
        """Exact masses over the fraction `prefilter` of each head's clusters whose codes are nearest
        (Hamming) to one of the chunk's query codes (hashed with the clusters' hyperplanes); the others
        weigh 0. Queries and codes must be of one key form (ReSVOptions checks keys == score_keys)."""
        counts = self.counts[:, :c]
        valid = counts > 0  # [KVH, C]
        qc = self.backend.hash_codes(q, self.planes)  # [KVH, R, W]
        xor = self.codes[:, None, :c, :] ^ qc[:, :, None, :]  # [KVH, R, C, W]
        d = popcount(xor).sum(-1, dtype=np.uint16).min(1).astype(np.int64)  # [KVH, C] nearest query code
        bits = self.planes.shape[1]
        d[~valid] = bits + 1  # farther than any code: never a candidate (need <= valid clusters)
        need = np.maximum(np.ceil(self.prefilter * valid.sum(1)).astype(np.int64), 1)  # [KVH]
        hist = np.cumsum(np.stack([np.bincount(row, minlength=bits + 2) for row in d]), 1)  # [KVH, bits + 2]
        cut = (hist < need[:, None]).sum(1)  # [KVH] the smallest distance whose count reaches `need`
        cand = d <= cut[:, None]  # [KVH, C] (ties at the cut included)
        ids = [np.flatnonzero(x) for x in cand]
        m = max(x.size for x in ids)
        reps = np.zeros((self.kvh, self.hd, m), np.float32)  # [KVH, hd, M] candidates, padded with count 0
        cnt = np.zeros((self.kvh, m), np.int64)
        for h, x in enumerate(ids):
            reps[h, :, : x.size], cnt[h, : x.size] = self.means_t[h, :, :c].take(x, axis=1), counts[h, x]
        k2, m2 = be.score_select(q, reps.swapaxes(1, 2), cnt, tau=tau)
        keep = np.zeros((self.kvh, c), bool)
        mass = np.zeros((self.kvh, c), np.float32)
        for h, x in enumerate(ids):
            keep[h, x], mass[h, x] = k2[h, : x.size], m2[h, : x.size]
        return keep & valid, mass

    def _select(
        self, be: RetrievalBackend, q: np.ndarray, reps: np.ndarray, counts: np.ndarray, tau: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """The backend's score_select over the heads that have a candidate (a head may have no
        retired block yet, or have had all its blocks dropped)."""
        some = (counts > 0).any(1)
        if some.all():
            return be.score_select(q, reps, counts, tau=tau)
        keep = np.zeros(counts.shape, bool)
        mass = np.zeros(counts.shape, np.float32)
        if some.any():
            keep[some], mass[some] = be.score_select(q[some], reps[some], counts[some], tau=tau)
        return keep, mass

    def _seal(self, h: int, ids: np.ndarray) -> None:
        """Move the tokens of clusters `ids` from the open area into the sealed arena, contiguous."""
        p = self.pending[h]
        slots = np.flatnonzero(_member(p.owner[: p.n], ids))
        slots = slots[np.argsort(p.owner[slots], kind="stable")]  # grouped by cluster, stream order inside
        o = p.owner[slots]
        base = self.arena.write(h, p.k[slots], p.v[slots], p.pos[slots], o)
        first = np.flatnonzero(np.concatenate([[True], o[1:] != o[:-1]]))  # o is sorted: where each cluster starts
        self.start[h, o[first]] = base + first
        p.release(slots)

    def gather(
        self,
        h: int,
        sel: np.ndarray,
        out_k: np.ndarray,
        out_v: np.ndarray,
        out_pos: np.ndarray | None,
        out_owner: np.ndarray | None = None,
    ) -> int:
        """Copy the tokens of clusters `sel` of head h into out_* [>= total, ...] -> tokens written.

        out_pos None skips positions (absolute mode needs none); out_owner gets each token's cluster id."""
        st = self.start[h, sel]
        sealed = sel[st >= 0]
        w = (
            self.arena.gather(h, sealed, self.start[h], self.counts[h], out_k, out_v, out_pos, out_owner)
            if sealed.size
            else 0
        )
        opened = sel[st < 0]
        p = self.pending[h]
        if opened.size and p.n:
            w = take_rows(p, np.flatnonzero(_member(p.owner[: p.n], opened)), out_k, out_v, out_pos, w, out_owner)
        return w

    def members(self, h: int) -> tuple[np.ndarray, np.ndarray]:
        """Every stored token of head h -> (positions [N], cluster id [N]) (for tests and tools)."""
        s, p = self.arena.rows(h), self.pending[h]
        live = p.owner[: p.n] >= 0
        pos = np.concatenate([s.pos[: s.n], p.pos[: p.n][live]])
        return pos, np.concatenate([s.owner[: s.n], p.owner[: p.n][live]])

    def table_nbytes(self) -> int:
        """Resident cluster tables: codes, means, counts, offsets, the open clusters' sums, the blocks'
        coarse tables (and a memory archive's fine representatives)."""
        return (
            self.codes.nbytes
            + self.means_t.nbytes
            + self.counts.nbytes
            + self.start.nbytes
            + sum(s.nbytes for s in self.open_sums)
            + self.cmeans_t.nbytes
            + self.ccounts.nbytes
            + self.archive.nbytes()
            + (0 if self.q8 is None else self.q8.nbytes())
        )

    def open_nbytes(self) -> int:
        """The open area's rows (all heads)."""
        return sum(r.nbytes() for r in self.pending)

    def nbytes(self) -> int:
        return self.table_nbytes() + self.open_nbytes() + self.arena.nbytes()

    # ------------------------------------------------------------------ declared state

    def state(self) -> dict[str, Any]:
        """Everything a resumed stream needs (the arena and archive save their own state)."""
        return {
            **{k: getattr(self, k) for k in TABLES},
            "open": list(self.open),
            "open_sums": list(self.open_sums),
            "pending": [r.state() for r in self.pending],
        }

    def restore(self, s: dict[str, Any]) -> None:
        for k in TABLES:
            cur, new = getattr(self, k), s[k]
            if new.dtype != cur.dtype or new.ndim != cur.ndim or new.shape[:1] != cur.shape[:1]:
                raise ValueError(f"cluster table {k} has the wrong type or shape")
            setattr(self, k, new.copy())
        if self.q8 is not None:
            self.q8.invalidate()
        self.open = [np.asarray(x, np.int64) for x in s["open"]]
        self.open_sums = [np.asarray(x, np.float64) for x in s["open_sums"]]
        for r, x in zip(self.pending, s["pending"], strict=True):
            r.restore(x)


def heaviest(sel: np.ndarray, mass: np.ndarray, counts: np.ndarray, budget: int) -> np.ndarray:
    """The heaviest clusters (or blocks) of `sel` whose tokens (counts) fit in `budget`; ids past
    mass [C] (opened after the scoring) weigh 0."""
    w = np.where(sel < mass.size, mass[np.minimum(sel, mass.size - 1)], 0.0)
    c = counts[sel]
    # at most k = budget // min(c) clusters fit, and all of them weigh at least the k-th largest weight:
    # only those are sorted (stably, in sel's order as a sort of all of them, so the prefix is the same)
    smallest = int(c.min()) if c.size else 0
    k = budget // smallest if smallest > 0 else sel.size
    if 0 < k < sel.size // 2:
        cand = np.flatnonzero(w >= np.partition(w, w.size - k)[w.size - k])
        sel, w, c = sel[cand], w[cand], c[cand]
    keep = np.argsort(-w, kind="stable")
    order, tok = sel[keep], np.cumsum(c[keep])
    return order[: int(np.searchsorted(tok, budget, side="right"))]


def fit_budget(sels: list[np.ndarray], mass: np.ndarray | None, counts: np.ndarray, budget: int) -> list[np.ndarray]:
    """Each head's selection sels[h], cut to its heaviest clusters (mass [KVH, C]) whose tokens (counts
    [KVH, *]) fit `budget` where they do not fit already (compact positions, max_kept, a KV budget)."""
    return [
        s if int(counts[h, s].sum()) <= budget else heaviest(s, mass[h], counts[h], budget)  # type: ignore[index]
        for h, s in enumerate(sels)
    ]


def _member(owner: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """owner [n] cluster ids (-1: none), ids [k] distinct -> [n] bool, owner in ids (a mark table over
    ids' range, not over every cluster of the head)."""
    if ids.size == 0:
        return np.zeros(owner.shape, bool)
    lo = int(ids.min())
    mark = np.zeros(int(ids.max()) - lo + 2, bool)  # the extra last entry answers ids out of range
    mark[ids - lo] = True
    rel = owner - lo
    return mark[np.where((rel >= 0) & (rel < mark.size - 1), rel, mark.size - 1)]
