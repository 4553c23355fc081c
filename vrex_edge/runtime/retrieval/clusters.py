"""ReSV's per-layer history store: cluster tables and a cluster-contiguous KV arena per KV head.

Tokens leaving the recent window are hashed and assigned to clusters (through the retrieval
backend). A cluster is *open* while it can still grow (among the `horizon` newest clusters of
its head and below `max_size`); its tokens wait in a small open area. When it closes, its
tokens are copied once into the sealed arena, contiguous, so a selected cluster is one slice
(and a run of selected neighbours one bigger slice). The sealed arena is exactly what a cold
tier writes out (issue 7); tables (codes, means, counts, offsets; running sums only while a cluster
is open) stay resident.

On an endless stream the representatives (hd floats per cluster and head) are what grows, so with
`fine` > 0 only the newest `fine` clusters of every head keep a resident representative; older
clusters are retired in blocks of `block` consecutive ids: a block keeps one coarse representative
(the mean of its tokens) and its token count, and its fine representatives go to an archive (memory,
or a file of the cold tier). Selection is then two-level: WiCSum at `tau_coarse` over the blocks,
then the usual WiCSum at tau over the fine clusters of the kept blocks and of the resident window.
"""

from __future__ import annotations

import numpy as np

from vrex_edge.accel.backend import RetrievalBackend


def runs_to_index(runs: np.ndarray) -> np.ndarray:
    """runs [r, 2] (start, stop) -> the token indices they cover, in order."""
    lens = runs[:, 1] - runs[:, 0]
    offs = np.cumsum(lens) - lens  # where each run starts in the output
    return np.arange(int(lens.sum()), dtype=np.int64) + np.repeat(runs[:, 0] - offs, lens)


class _Rows:
    """Growable k, v [cap, hd] f32 and pos, owner [cap] i64 rows for one KV head."""

    def __init__(self, hd: int, cap: int):
        self.k = np.empty((cap, hd), np.float32)
        self.v = np.empty((cap, hd), np.float32)
        self.pos = np.empty(cap, np.int64)
        self.owner = np.empty(cap, np.int64)
        self.n = 0
        self.dead = 0  # rows whose owner is -1 (open area only)

    def reserve(self, need: int) -> None:
        cap = self.k.shape[0]
        if need <= cap:
            return
        cap = max(need, 2 * cap)
        for name in ("k", "v", "pos", "owner"):
            a = getattr(self, name)
            b = np.empty((cap, *a.shape[1:]), a.dtype)
            b[: self.n] = a[: self.n]
            setattr(self, name, b)

    def append(self, k: np.ndarray, v: np.ndarray, pos: np.ndarray, owner: np.ndarray) -> int:
        m = k.shape[0]
        self.reserve(self.n + m)
        s = self.n
        self.k[s : s + m], self.v[s : s + m], self.pos[s : s + m], self.owner[s : s + m] = k, v, pos, owner
        self.n += m
        return s

    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes + self.pos.nbytes + self.owner.nbytes


class MemoryArchive:
    """Fine representatives of retired blocks, in memory: block j -> [KVH, block, hd] f32."""

    def __init__(self, kvh: int, block: int, hd: int):
        self.data = np.zeros((0, kvh, block, hd), np.float32)
        self.n = 0

    def put(self, j: int, fine: np.ndarray) -> None:
        if j >= self.data.shape[0]:
            grown = np.zeros((max(j + 1, 2 * self.data.shape[0], 16), *self.data.shape[1:]), np.float32)
            grown[: self.n] = self.data[: self.n]
            self.data = grown
        self.data[j] = fine
        self.n = max(self.n, j + 1)

    def get(self, h: int, blocks: np.ndarray) -> np.ndarray:
        """-> [len(blocks), block, hd] fine representatives of head h."""
        return self.data[blocks, h]

    def nbytes(self) -> int:
        return self.data.nbytes


class ClusterStore:
    tier = None  # kvstore.tiers.LayerTier when the sealed arena lives on tiers (issue 7)

    def __init__(self, kvh: int, hd: int, *, planes: np.ndarray, backend: RetrievalBackend,
                 threshold: int, max_size: int, horizon: int, capacity: int = 256,
                 fine: int = 0, block: int = 16, tau_coarse: float = 0.99):
        self.kvh, self.hd = kvh, hd
        self.planes = planes  # [KVH, bits, hd]
        self.backend = backend
        self.threshold, self.max_size, self.horizon = threshold, max_size, horizon
        words = -(-planes.shape[1] // 64)
        self.codes = np.zeros((kvh, capacity, words), np.uint64)  # cluster codes (the founder's)
        self.means_t = np.zeros((kvh, hd, capacity), np.float32)  # representatives, transposed for scoring
        self.counts = np.zeros((kvh, capacity), np.int64)  # TC
        self.start = np.full((kvh, capacity), -1, np.int64)  # offset in the sealed arena; -1 while open
        self.nclu = np.zeros(kvh, np.int64)
        self.open: list[np.ndarray] = [np.zeros(0, np.int64) for _ in range(kvh)]  # ids, oldest first
        # running f64 sums of the scoring keys, open clusters only ([len(open[h]), hd], aligned with open[h]):
        # a sealed cluster keeps just its f32 mean, so the tables cost ~280 bytes per cluster and head
        self.open_sums: list[np.ndarray] = [np.zeros((0, hd), np.float64) for _ in range(kvh)]
        self.sealed = [_Rows(hd, 1024) for _ in range(kvh)]
        self.pending = [_Rows(hd, 256) for _ in range(kvh)]  # open area: owner -1 = moved out
        # two-level tables (fine > 0): ids < lo are retired in blocks; means_t column i is cluster lo + i
        self.fine, self.block, self.tau_coarse = fine, block, tau_coarse
        self.lo = 0
        self.nblk = 0
        self.cmeans_t = np.zeros((kvh, hd, 0), np.float32)  # coarse representatives of the blocks
        self.ccounts = np.zeros((kvh, 0), np.int64)  # tokens per block
        self.archive = MemoryArchive(kvh, block, hd)  # fine representatives of retired blocks

    @property
    def means(self) -> np.ndarray:
        """Resident fine representatives [KVH, cap, hd] of clusters lo, lo + 1, ...: a view of means_t
        (scores are then one plain GEMM per head)."""
        return self.means_t.swapaxes(1, 2)

    @property
    def tokens(self) -> np.ndarray:
        return self.counts.sum(-1)  # [KVH]

    def _grow(self, need: int) -> None:
        self._grow_window(need - self.lo)
        cap = self.counts.shape[1]
        if need <= cap:
            return
        cap = max(need, cap + cap // 4, 256)  # x1.25: a smaller transient than doubling (old + new coexist)
        for name, fill in (("codes", 0), ("counts", 0), ("start", -1)):
            a = getattr(self, name)
            b = np.full((self.kvh, cap, *a.shape[2:]), fill, a.dtype)
            b[:, : a.shape[1]] = a
            setattr(self, name, b)

    def _grow_window(self, need: int) -> None:
        cap = self.means_t.shape[2]
        if need <= cap:
            return
        mt = np.zeros((self.kvh, self.hd, max(need, cap + cap // 4, 256)), np.float32)
        mt[:, :, :cap] = self.means_t
        self.means_t = mt

    def push(self, k: np.ndarray, v: np.ndarray, pos: np.ndarray, kc: np.ndarray, ks: np.ndarray) -> None:
        """k, v [KVH, m, hd] (storage form), pos [m]; kc, ks [KVH, m, hd]: the keys hashed for
        clustering and the keys averaged into representatives for scoring; stream order."""
        codes = self.backend.hash_codes(kc, self.planes)  # [KVH, m, W]
        for h in range(self.kvh):
            cand = self.open[h]
            a = self.backend.cluster_assign(codes[h], self.codes[h, cand], self.counts[h, cand],
                                            threshold=self.threshold, max_size=self.max_size, horizon=self.horizon)
            c = cand.size
            nnew = max(int(a.max()) + 1 - c, 0)
            first_id = int(self.nclu[h])
            self._grow(first_id + nnew)
            ext = np.concatenate([cand, np.arange(first_id, first_id + nnew, dtype=np.int64)])
            gid = ext[a]  # [m] cluster id per token
            u, first, inv = np.unique(a, return_index=True, return_inverse=True)
            if nnew:
                new = u >= c
                self.codes[h, ext[u[new]]] = codes[h, first[new]]
                self.nclu[h] += nnew
            ids = ext[u]  # the clusters this batch touched
            onehot = (inv[None, :] == np.arange(u.size)[:, None])  # [u, m]
            sums = np.zeros((ext.size, self.hd), np.float64)  # [ext, hd] running sums of ext's clusters
            sums[:c] = self.open_sums[h]
            sums[u] += onehot.astype(np.float64) @ ks[h]
            self.counts[h, ids] += onehot.sum(1)
            self.means[h, ids - self.lo] = sums[u] / self.counts[h, ids, None]
            self.pending[h].append(k[h], v[h], pos, gid)
            open_ok = self.counts[h, ext] < self.max_size
            if open_ok.all() and ext.size <= self.horizon:
                self.open[h], self.open_sums[h] = ext, sums
                continue
            stay = np.flatnonzero(open_ok)
            stay = stay[-self.horizon :] if self.horizon > 0 else stay[:0]
            keep = ext[stay]
            self.open[h], self.open_sums[h] = keep, sums[stay]
            mark = np.ones(int(self.nclu[h]), bool)
            mark[keep] = False
            self._seal(h, ext[mark[ext]])
        if self.fine:
            self._retire()

    # ------------------------------------------------------------------ two-level tables

    def _retire(self) -> None:
        """Retire blocks of the oldest resident clusters while every head has more than `fine` (and
        more than its open horizon) newer ones and the block is sealed (an open cluster still grows)."""
        b = self.block
        keep = max(self.fine, self.horizon)
        while self.lo + b <= int(self.nclu.min()) - keep and (self.start[:, self.lo : self.lo + b] >= 0).all():
            lo, j = self.lo, self.nblk
            cnt = self.counts[:, lo : lo + b]  # [KVH, b]
            fine = self.means_t[:, :, :b]  # [KVH, hd, b]
            self.archive.put(j, fine.swapaxes(1, 2))
            tot = cnt.sum(1)
            if j >= self.ccounts.shape[1]:
                cap = max(j + 1, self.ccounts.shape[1] * 5 // 4, 64)
                cm = np.zeros((self.kvh, self.hd, cap), np.float32)
                cm[:, :, :j] = self.cmeans_t[:, :, :j]
                cc = np.zeros((self.kvh, cap), np.int64)
                cc[:, :j] = self.ccounts[:, :j]
                self.cmeans_t, self.ccounts = cm, cc
            w = cnt / np.maximum(tot, 1)[:, None]  # token-weighted: the mean of the block's tokens
            self.cmeans_t[:, :, j] = np.matmul(fine, w[:, :, None].astype(np.float32))[:, :, 0]
            self.ccounts[:, j] = tot
            n = int(self.nclu.max()) - lo  # resident columns in use
            self.means_t[:, :, : n - b] = self.means_t[:, :, b:n]
            self.means_t[:, :, n - b : n] = 0
            self.lo, self.nblk = lo + b, j + 1

    def forget(self, h: int, ids: np.ndarray) -> None:
        """Clusters `ids` of head h are gone (their tokens dropped): they weigh nothing from now on."""
        self.counts[h, ids] = 0
        old = np.unique(ids[ids < self.lo] // self.block)
        for j in old.tolist():
            self.ccounts[h, j] = self.counts[h, j * self.block : (j + 1) * self.block].sum()

    def score(self, q: np.ndarray, tau: float) -> tuple[np.ndarray, np.ndarray]:
        """q [KVH, R, hd] scoring queries -> (keep [KVH, C] bool, mass [KVH, C] f32) over cluster ids
        0..C-1 (C = the most clusters of any head); clusters that were not scored weigh 0."""
        c = int(self.nclu.max())
        lo = self.lo
        if self.nblk == 0:
            return self.backend.score_select(q, self.means[:, : c - lo], self.counts[:, lo:c], tau=tau)
        bk, _ = self.backend.score_select(q, self.cmeans_t[:, :, : self.nblk].swapaxes(1, 2),
                                          self.ccounts[:, : self.nblk], tau=self.tau_coarse)
        b, w = self.block, c - lo
        blocks = [np.flatnonzero(bk[h]) for h in range(self.kvh)]
        r = max(x.size for x in blocks) * b + w
        reps = np.zeros((self.kvh, self.hd, r), np.float32)  # candidates: kept blocks' clusters, then the window
        ids = np.zeros((self.kvh, r), np.int64)
        for h, x in enumerate(blocks):
            m = x.size * b
            if m:
                reps[h, :, :m] = self.archive.get(h, x).reshape(m, self.hd).T
                ids[h, :m] = (x[:, None] * b + np.arange(b)).ravel()
            reps[h, :, m : m + w] = self.means_t[h, :, :w]
            ids[h, m : m + w] = np.arange(lo, c)
            ids[h, m + w :] = -1
        cnt = np.where(ids >= 0, np.take_along_axis(self.counts[:, :c], np.maximum(ids, 0), 1), 0)
        k2, m2 = self.backend.score_select(q, reps.swapaxes(1, 2), cnt, tau=tau)
        keep = np.zeros((self.kvh, c), bool)
        mass = np.zeros((self.kvh, c), np.float32)
        for h in range(self.kvh):
            ok = ids[h] >= 0
            keep[h, ids[h, ok]] = k2[h, ok]
            mass[h, ids[h, ok]] = m2[h, ok]
        return keep, mass

    def _seal(self, h: int, ids: np.ndarray) -> None:
        """Move the tokens of clusters `ids` from the open area into the sealed arena, contiguous."""
        p, s = self.pending[h], self.sealed[h]
        owner = p.owner[: p.n]
        mark = np.zeros(int(self.nclu[h]) + 1, bool)  # the extra last entry answers owner -1
        mark[ids] = True
        slots = np.flatnonzero(mark[owner])
        slots = slots[np.argsort(owner[slots], kind="stable")]  # grouped by cluster, stream order inside
        o = owner[slots]
        if self.tier is not None:  # cold tier (kvstore): written once, cluster-contiguous, not kept here
            base = self.tier.write(h, p.k[slots], p.v[slots], p.pos[slots], o)
        else:
            base = s.append(p.k[slots], p.v[slots], p.pos[slots], o)
        uniq, first = np.unique(o, return_index=True)
        self.start[h, uniq] = base + first
        p.owner[slots] = -1
        p.dead += slots.size
        if p.dead * 2 >= p.n:  # compact the open area once half of it is dead
            live = np.flatnonzero(p.owner[: p.n] >= 0)
            m = live.size
            p.dead = 0
            p.k[:m], p.v[:m], p.pos[:m], p.owner[:m] = p.k[live], p.v[live], p.pos[live], p.owner[live]
            p.n = m

    def gather(self, h: int, sel: np.ndarray, out_k: np.ndarray, out_v: np.ndarray,
               out_pos: np.ndarray | None, out_owner: np.ndarray | None = None) -> int:
        """Copy the tokens of clusters `sel` of head h into out_* [>= total, ...] -> tokens written.

        out_pos None skips positions (absolute mode needs none); out_owner gets each token's cluster id."""
        st = self.start[h, sel]
        sealed = sel[st >= 0]
        s, p = self.sealed[h], self.pending[h]
        w = 0
        if sealed.size and self.tier is not None:  # through the hot cache / cold log (kvstore)
            w = self.tier.gather(h, sealed, self.start[h], self.counts[h], out_k, out_v, out_pos, out_owner)
        elif sealed.size:
            runs = self.backend.layout(sealed, self.start[h], self.counts[h])  # [r, 2]
            if runs.shape[0] <= 4:
                for a, b in runs.tolist():
                    m = b - a
                    out_k[w : w + m], out_v[w : w + m] = s.k[a:b], s.v[a:b]
                    if out_pos is not None:
                        out_pos[w : w + m] = s.pos[a:b]
                    if out_owner is not None:
                        out_owner[w : w + m] = s.owner[a:b]
                    w += m
            else:
                w = self._take(s, runs_to_index(runs), out_k, out_v, out_pos, 0, out_owner)
        opened = sel[st < 0]
        if opened.size and p.n:
            mark = np.zeros(int(self.nclu[h]) + 1, bool)  # the extra last entry answers owner -1
            mark[opened] = True
            w = self._take(p, np.flatnonzero(mark[p.owner[: p.n]]), out_k, out_v, out_pos, w, out_owner)
        return w

    @staticmethod
    def _take(rows: _Rows, idx: np.ndarray, out_k, out_v, out_pos, w: int, out_owner=None) -> int:
        m = idx.size
        # mode="clip" lets numpy write straight into `out` (indices are valid by construction)
        np.take(rows.k, idx, axis=0, out=out_k[w : w + m], mode="clip")
        np.take(rows.v, idx, axis=0, out=out_v[w : w + m], mode="clip")
        if out_pos is not None:
            np.take(rows.pos, idx, out=out_pos[w : w + m], mode="clip")
        if out_owner is not None:
            np.take(rows.owner, idx, out=out_owner[w : w + m], mode="clip")
        return w + m

    def members(self, h: int) -> tuple[np.ndarray, np.ndarray]:
        """Every stored token of head h -> (positions [N], cluster id [N]) (for tests and tools)."""
        s, p = self.sealed[h], self.pending[h]
        live = p.owner[: p.n] >= 0
        pos = np.concatenate([s.pos[: s.n], p.pos[: p.n][live]])
        return pos, np.concatenate([s.owner[: s.n], p.owner[: p.n][live]])

    def table_nbytes(self) -> int:
        """Resident cluster tables: codes, means, counts, offsets, the open clusters' sums, the blocks'
        coarse tables (and a memory archive's fine representatives)."""
        return (self.codes.nbytes + self.means_t.nbytes + self.counts.nbytes + self.start.nbytes
                + sum(s.nbytes for s in self.open_sums) + self.cmeans_t.nbytes + self.ccounts.nbytes
                + self.archive.nbytes())

    def nbytes(self) -> int:
        tables = self.table_nbytes()
        return tables + sum(r.nbytes() for r in self.sealed + self.pending)
