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
    """Fine representatives of retired blocks, in memory: block j of head h -> [block, hd] f32."""

    def __init__(self, kvh: int, block: int, hd: int):
        self.data = [np.zeros((0, block, hd), np.float32) for _ in range(kvh)]

    def put(self, h: int, j: int, fine: np.ndarray) -> None:
        d = self.data[h]
        if j >= d.shape[0]:
            grown = np.zeros((max(j + 1, 2 * d.shape[0], 16), *d.shape[1:]), np.float32)
            grown[: d.shape[0]] = d
            self.data[h] = d = grown
        d[j] = fine

    def get(self, h: int, blocks: np.ndarray) -> np.ndarray:
        """-> [len(blocks), block, hd] fine representatives of head h."""
        return self.data[h][blocks]

    def nbytes(self) -> int:
        return sum(d.nbytes for d in self.data)


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
        self.sealed = [_Rows(hd, 1024) for _ in range(kvh)]
        self.pending = [_Rows(hd, 256) for _ in range(kvh)]  # open area: owner -1 = moved out
        # two-level tables (fine > 0): ids < lo[h] of head h are retired, in nblk[h] blocks
        self.fine, self.block, self.tau_coarse = fine, block, tau_coarse
        self.lo = np.zeros(kvh, np.int64)
        self.nblk = np.zeros(kvh, np.int64)
        self.cmeans_t = np.zeros((kvh, hd, 0), np.float32)  # coarse representatives of the blocks
        self.ccounts = np.zeros((kvh, 0), np.int64)  # tokens per block
        self.archive = MemoryArchive(kvh, block, hd)  # fine representatives of retired blocks

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
        cap = self.counts.shape[1]
        if need <= cap:
            return
        cap = max(need, cap + cap // 4, 256)  # x1.25: a smaller transient than doubling (old + new coexist)
        for name, fill in (("counts", 0), ("start", -1)):
            a = getattr(self, name)
            b = np.full((self.kvh, cap, *a.shape[2:]), fill, a.dtype)
            b[:, : a.shape[1]] = a
            setattr(self, name, b)

    def _grow_window(self, need: int) -> None:
        cap = self.means_t.shape[2]
        if need <= cap:
            return
        new = max(need, cap + cap // 4, 256)
        mt = np.zeros((self.kvh, self.hd, new), np.float32)
        mt[:, :, :cap] = self.means_t
        cd = np.zeros((self.kvh, new, self.codes.shape[2]), np.uint64)
        cd[:, :cap] = self.codes
        self.means_t, self.codes = mt, cd

    def push(self, k: np.ndarray, v: np.ndarray, pos: np.ndarray, kc: np.ndarray, ks: np.ndarray) -> None:
        """k, v [KVH, m, hd] (storage form), pos [m]; kc, ks [KVH, m, hd]: the keys hashed for
        clustering and the keys averaged into representatives for scoring; stream order."""
        codes = self.backend.hash_codes(kc, self.planes)  # [KVH, m, W]
        for h in range(self.kvh):
            cand = self.open[h]
            lo = int(self.lo[h])
            a = self.backend.cluster_assign(codes[h], self.codes[h, cand - lo], self.counts[h, cand],
                                            threshold=self.threshold, max_size=self.max_size, horizon=self.horizon)
            c = cand.size
            nnew = max(int(a.max()) + 1 - c, 0)
            first_id = int(self.nclu[h])
            self._grow(first_id + nnew, h)
            ext = np.concatenate([cand, np.arange(first_id, first_id + nnew, dtype=np.int64)])
            gid = ext[a]  # [m] cluster id per token
            u, first, inv = np.unique(a, return_index=True, return_inverse=True)
            if nnew:
                new = u >= c
                self.codes[h, ext[u[new]] - lo] = codes[h, first[new]]
                self.nclu[h] += nnew
            ids = ext[u]  # the clusters this batch touched
            onehot = (inv[None, :] == np.arange(u.size)[:, None])  # [u, m]
            sums = np.zeros((ext.size, self.hd), np.float64)  # [ext, hd] running sums of ext's clusters
            sums[:c] = self.open_sums[h]
            sums[u] += onehot.astype(np.float64) @ ks[h]
            self.counts[h, ids] += onehot.sum(1)
            self.means[h, ids - lo] = sums[u] / self.counts[h, ids, None]
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
            for h in range(self.kvh):
                self._retire(h)

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
            if j >= self.ccounts.shape[1]:
                cap = max(j + 1, self.ccounts.shape[1] * 5 // 4, 64)
                cm = np.zeros((self.kvh, self.hd, cap), np.float32)
                cm[:, :, : self.cmeans_t.shape[2]] = self.cmeans_t
                cc = np.zeros((self.kvh, cap), np.int64)
                cc[:, : self.ccounts.shape[1]] = self.ccounts
                self.cmeans_t, self.ccounts = cm, cc
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

    def score(self, q: np.ndarray, tau: float) -> tuple[np.ndarray, np.ndarray]:
        """q [KVH, R, hd] scoring queries -> (keep [KVH, C] bool, mass [KVH, C] f32) over cluster ids
        0..C-1 (C = the most clusters of any head); clusters that were not scored weigh 0."""
        c = int(self.nclu.max())
        if not self.nblk.any():  # one level: every representative is resident
            return self.backend.score_select(q, self.means[:, :c], self.counts[:, :c], tau=tau)
        nb = int(self.nblk.max())
        bk, _ = self._select(q, self.cmeans_t[:, :, :nb].swapaxes(1, 2), self.ccounts[:, :nb], self.tau_coarse)
        b = self.block
        blocks = [np.flatnonzero(bk[h]) for h in range(self.kvh)]
        win = self.nclu - self.lo  # resident clusters per head
        r = int(max(x.size * b + int(w) for x, w in zip(blocks, win, strict=True)))
        reps = np.zeros((self.kvh, self.hd, r), np.float32)  # candidates: kept blocks' clusters, then the window
        ids = np.full((self.kvh, r), -1, np.int64)
        for h, x in enumerate(blocks):
            m, w, lo = x.size * b, int(win[h]), int(self.lo[h])
            if m:
                reps[h, :, :m] = self.archive.get(h, x).reshape(m, self.hd).T
                ids[h, :m] = (x[:, None] * b + np.arange(b)).ravel()
            reps[h, :, m : m + w] = self.means_t[h, :, :w]
            ids[h, m : m + w] = np.arange(lo, lo + w)
        cnt = np.where(ids >= 0, np.take_along_axis(self.counts[:, :c], np.maximum(ids, 0), 1), 0)
        k2, m2 = self._select(q, reps.swapaxes(1, 2), cnt, tau)
        keep = np.zeros((self.kvh, c), bool)
        mass = np.zeros((self.kvh, c), np.float32)
        for h in range(self.kvh):
            ok = ids[h] >= 0
            keep[h, ids[h, ok]] = k2[h, ok]
            mass[h, ids[h, ok]] = m2[h, ok]
        return keep, mass

    def _select(self, q: np.ndarray, reps: np.ndarray, counts: np.ndarray, tau: float) -> tuple[np.ndarray, np.ndarray]:
        """The backend's score_select over the heads that have a candidate (a head may have no
        retired block yet, or have had all its blocks dropped)."""
        some = (counts > 0).any(1)
        if some.all():
            return self.backend.score_select(q, reps, counts, tau=tau)
        keep = np.zeros(counts.shape, bool)
        mass = np.zeros(counts.shape, np.float32)
        if some.any():
            keep[some], mass[some] = self.backend.score_select(q[some], reps[some], counts[some], tau=tau)
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
