"""The NumPy host reference of the retrieval backend (float32; the oracle for other backends)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from vrex_edge.accel.q8 import Int8Masses, log_counts
from vrex_edge.runtime.lanes import even_cuts
from vrex_edge.scratch import work

if TYPE_CHECKING:
    from vrex_edge.runtime.lanes import Lanes

if hasattr(np, "bitwise_count"):

    def popcount(x: np.ndarray) -> np.ndarray:
        """Set bits per uint64 element (same shape, uint8)."""
        return np.bitwise_count(x)
else:  # numpy < 2.0
    _POP8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)

    def popcount(x: np.ndarray) -> np.ndarray:
        b = np.ascontiguousarray(x).view(np.uint8).reshape(*x.shape, 8)
        return _POP8[b].sum(-1, dtype=np.uint8)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a [m, W], b [c, W] uint64 codes -> [m, c] int64 Hamming distances."""
    return popcount(a[:, None, :] ^ b[None, :, :]).sum(-1, dtype=np.int64)


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """bits [..., B] bool -> [..., ceil(B/64)] uint64, bit b in word b // 64 at bit b % 64."""
    nb = bits.shape[-1]
    words = -(-nb // 64)
    if nb != words * 64:
        pad = np.zeros((*bits.shape[:-1], words * 64 - nb), dtype=bool)
        bits = np.concatenate([bits, pad], axis=-1)
    packed = np.packbits(bits, axis=-1, bitorder="little")  # [..., words*8] uint8
    return np.ascontiguousarray(packed).view("<u8").astype(np.uint64, copy=False)


_FAR = 1 << 40  # a Hamming distance no threshold reaches
_BUCKETS = 128  # half-octave mass buckets: bucket b holds masses in (2^-(b+1)/2, 2^-b/2]


def wicsum(mass: np.ndarray, tau: float) -> np.ndarray:
    """mass [KVH, C] (>= 0) -> keep [KVH, C] bool: the heaviest clusters whose mass first reaches tau * total.

    A bucket sort by exponent: buckets above the crossing bucket are kept whole, only the crossing
    bucket is sorted. Same set as sorting everything (ties at the boundary aside)."""
    kvh, c = mass.shape
    t = work("wicsum.t", mass.shape, mass.dtype)  # work arrays: these are [KVH, C] on every call
    with np.errstate(divide="ignore"):
        np.log2(mass, out=t)
    np.minimum(np.multiply(t, -2.0, out=t), _BUCKETS - 1, out=t)
    b = work("wicsum.b", mass.shape, np.int64)  # [KVH, C], 0 = heaviest
    np.copyto(b, t, casting="unsafe")  # as astype(np.int64)
    flat = np.add(b, _BUCKETS * np.arange(kvh)[:, None], out=work("wicsum.flat", mass.shape, np.int64))
    hist = np.bincount(flat.ravel(), weights=mass.ravel(), minlength=kvh * _BUCKETS).reshape(kvh, _BUCKETS)
    cum = np.cumsum(hist, axis=1)  # [KVH, B]
    goal = tau * cum[:, -1]
    cross = np.minimum((cum < goal[:, None]).sum(1), _BUCKETS - 1)  # [KVH]
    keep = b < cross[:, None]
    for h in range(kvh):  # finish inside the crossing bucket
        idx = np.flatnonzero(b[h] == cross[h])
        need = goal[h] - (cum[h, cross[h] - 1] if cross[h] else 0.0)
        idx = idx[np.argsort(-mass[h, idx], kind="stable")]
        take = int((np.cumsum(mass[h, idx], dtype=np.float64) < need).sum()) + 1
        keep[h, idx[:take]] = True
    return keep


def cluster_assign_loop(
    codes: np.ndarray,
    cand_codes: np.ndarray,
    cand_counts: np.ndarray,
    *,
    threshold: int,
    max_size: int,
    horizon: int,
) -> np.ndarray:
    """The per-token reference of RetrievalBackend.cluster_assign (one head; the tests' oracle for assign_batch)."""
    m, c = codes.shape[0], cand_codes.shape[0]
    d_old = hamming(codes, cand_codes)  # [m, c]
    lo = max(0, c - horizon)
    if c:  # fast path: every token fits an old candidate and no capacity is exceeded
        d = d_old[:, lo:] + np.where(cand_counts[lo:] >= max_size, _FAR, 0)  # [m, c-lo]
        best = d.shape[1] - 1 - np.argmin(d[:, ::-1], axis=1)  # ties -> newest
        if (d[np.arange(m), best] <= threshold).all():
            add = np.bincount(best, minlength=d.shape[1])
            if (cand_counts[lo:] + add <= max_size).all():
                return best + lo
    d_all = np.concatenate([d_old, hamming(codes, codes)], axis=1)  # [m, c+m]
    col = np.empty(c + m, dtype=np.int64)  # list entry -> column of d_all
    col[:c] = np.arange(c)
    cnt = np.zeros(c + m, dtype=np.int64)
    cnt[:c] = cand_counts
    far = np.where(cnt >= max_size, _FAR, 0)  # ineligible (full) entries
    total = c
    out = np.empty(m, dtype=np.int64)
    for i in range(m):  # sequential by definition; m is a frame's worth of tokens
        lo = max(0, total - horizon)
        d = d_all[i, col[lo:total]] + far[lo:total]
        j = total - 1 - int(np.argmin(d[::-1])) if total > lo else total
        if j == total or d[j - lo] > threshold:
            j = total
            col[j] = c + i
            total += 1
        cnt[j] += 1
        if cnt[j] >= max_size:
            far[j] = _FAR
        out[i] = j
    return out


def _hamming_b(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a [B, m, W], b [B, c, W] uint64 -> [B, m, c] int64 Hamming distances."""
    return popcount(a[:, :, None, :] ^ b[:, None, :, :]).sum(-1, dtype=np.int64)


def assign_batch(
    codes: np.ndarray,
    cand_codes: np.ndarray,
    cand_counts: np.ndarray,
    ncand: np.ndarray,
    *,
    threshold: int,
    max_size: int,
    horizon: int,
    rounds: int = 8,
) -> np.ndarray:
    """RetrievalBackend.cluster_assign for B independent heads, without a loop over tokens.

    codes [B, m, W]; cand_codes [B, c, W], cand_counts [B, c]: head b's open clusters are its last ncand[b]
    rows (right-aligned). Returns assign [B, m] int64 list indices, exactly as the sequential definition.
    Fixed-point iteration: given a guess of every token's choice, each token's choice is recomputed from
    the guesses of the tokens before it; the first token never depends on a guess, and a correct prefix
    stays correct, so a fixed point is the sequential answer. The first guess (every token founds a cluster,
    the usual case with small clusters) is often already the fixed point; heads
    not settled after `rounds` fall back to the per-token reference."""
    nb, m, _ = codes.shape
    c = cand_codes.shape[1]
    if m == 0:
        return np.zeros((nb, 0), np.int64)
    ncand = np.asarray(ncand, np.int64)
    pad = c - ncand  # [B] padding rows before each head's candidates
    ne = c + m  # entries: c candidate rows, then one per token (the cluster it would found)
    tok = np.arange(m)
    dist = np.concatenate([_hamming_b(codes, cand_codes), _hamming_b(codes, codes)], axis=2)  # [B, m, E]
    dist[:, :, c:][:, tok[:, None] <= tok[None, :]] = _FAR  # token i never joins a cluster founded at or after i
    cnt0 = np.zeros((nb, 1, ne), np.int32)  # [B, 1, E] tokens held before this batch
    cnt0[:, 0, :c] = np.where(np.arange(c) < pad[:, None], max_size, cand_counts)  # padding never takes a token
    lidx = np.empty((nb, 1, ne), np.int64)  # [B, 1, E] list index of each entry (founders: set per guess)
    lidx[:, 0, :c] = np.arange(c) - pad[:, None]
    e = np.arange(ne, dtype=np.int64)
    room = cnt0 < max_size  # [B, 1, E] may take a token (all the batch long unless one can fill up)
    fills = m >= max_size or int(cnt0[room].max(initial=0)) + m >= max_size  # can any cluster fill up here?
    a = np.broadcast_to(c + tok, (nb, m))  # the guess, as entries: every token founds a cluster
    for _ in range(rounds):
        opened = a == c + tok  # [B, m] token j founded its cluster
        before = np.cumsum(opened, 1, dtype=np.int64) - opened  # [B, m] clusters founded before token i
        lidx[:, 0, c:] = np.where(opened, ncand[:, None] + before, -_FAR)  # unfounded: never in the window
        lo = (ncand[:, None] + before - horizon)[:, :, None]  # [B, m, 1] oldest list index token i may join
        if fills:  # some cluster may fill up within the batch: count what each holds when token i arrives
            onehot = a[:, :, None] == e  # [B, m, E]
            room = cnt0 + np.cumsum(onehot, 1, dtype=np.int32) - onehot < max_size  # [B, m, E]
        d = np.where(room & (lidx >= lo), dist, _FAR)  # [B, m, E]
        rev = d[:, :, ::-1]
        best = ne - 1 - rev.argmin(2)  # [B, m] ties -> newest
        new = np.where(rev.min(2) <= threshold, best, c + tok)  # [B, m]
        if np.array_equal(new, a):
            break
        a = new
    else:  # a long chain of dependent choices (rare): the per-token reference
        return np.stack(
            [
                cluster_assign_loop(
                    codes[b],
                    cand_codes[b, p:],
                    cand_counts[b, p:],
                    threshold=threshold,
                    max_size=max_size,
                    horizon=horizon,
                )
                for b, p in enumerate(pad.tolist())
            ]
        )
    opened = a == c + tok
    founded = ncand[:, None] + np.cumsum(opened, 1) - opened  # [B, m] list index of the cluster token j founds
    return np.where(a < c, a - pad[:, None], np.take_along_axis(founded, np.maximum(a - c, 0), 1))  # [B, m]


def _nothing(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """No cluster yet: empty keep and mass [KVH, 0]."""
    return np.zeros((counts.shape[0], 0), bool), np.zeros((counts.shape[0], 0), np.float32)


def _select(mass: np.ndarray, counts: np.ndarray, tau: float) -> tuple[np.ndarray, np.ndarray]:
    """mass [KVH, C] -> (keep [KVH, C]: WiCSum's clusters among those with tokens, mass)."""
    valid = counts > 0
    if tau >= 1.0:
        return valid, mass
    return wicsum(mass, tau) & valid, mass


class HostBackend:
    """Float32 NumPy reference: exact softmax-consistent masses and a full sort for WiCSum; also
    scores int8 representatives (score_select_q8, accel/q8.py)."""

    name = "host"

    def __init__(self) -> None:
        self._q8 = Int8Masses()

    def hash_codes(self, keys: np.ndarray, planes: np.ndarray) -> np.ndarray:
        proj = np.matmul(keys, np.swapaxes(planes, -1, -2))  # [..., m, bits]
        return pack_bits(proj > 0)

    def cluster_assign(
        self,
        codes: np.ndarray,
        cand_codes: np.ndarray,
        cand_counts: np.ndarray,
        *,
        threshold: int,
        max_size: int,
        horizon: int,
    ) -> np.ndarray:
        c = cand_codes.shape[0]
        return assign_batch(
            codes[None],
            cand_codes[None],
            np.asarray(cand_counts, np.int64)[None],
            np.array([c]),
            threshold=threshold,
            max_size=max_size,
            horizon=horizon,
        )[0]

    def cluster_assign_batch(
        self,
        codes: np.ndarray,
        cand_codes: np.ndarray,
        cand_counts: np.ndarray,
        ncand: np.ndarray,
        *,
        threshold: int,
        max_size: int,
        horizon: int,
    ) -> np.ndarray:
        """cluster_assign for B heads at once: codes [B, m, W]; head b's candidates are the last ncand[b]
        rows of cand_codes [B, c, W] / cand_counts [B, c] (rows before them are padding) -> assign [B, m]."""
        return assign_batch(
            codes, cand_codes, cand_counts, ncand, threshold=threshold, max_size=max_size, horizon=horizon
        )

    def masses(self, q: np.ndarray, reps: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """q [KVH, R, hd], reps [KVH, C, hd], counts [KVH, C] -> mass [KVH, C] f32 (sums to 1 per head).

        Fastest when reps is a transposed view (reps.swapaxes(1, 2) contiguous in C): one plain GEMM."""
        kvh, r, hd = q.shape
        c = reps.shape[1]
        s = np.matmul(q * np.float32(1.0 / np.sqrt(hd)), np.swapaxes(reps, -1, -2), out=work("masses", (kvh, r, c)))
        valid = counts > 0  # [KVH, C]
        if not valid.all():
            bias = work("masses.bias", (kvh, c))
            bias.fill(0)
            np.putmask(bias, ~valid, np.float32(-np.inf))
            s += bias[:, None, :]
        s -= s.max(-1, keepdims=True)
        p = np.exp(s, out=s)  # [KVH, R, C]
        tc = work("masses.tc", (kvh, c))  # [KVH, C]
        np.copyto(tc, counts, casting="unsafe")  # as astype(np.float32)
        z = np.matmul(p, tc[:, :, None])  # [KVH, R, 1] per-query normaliser
        w = np.swapaxes(1.0 / z, -1, -2) / np.float32(r)  # [KVH, 1, R]
        return np.matmul(w, p)[:, 0, :] * tc  # [KVH, C] f32

    def score_select(
        self,
        q: np.ndarray,
        reps: np.ndarray,
        counts: np.ndarray,
        *,
        tau: float,
    ) -> tuple[np.ndarray, np.ndarray]:
        if counts.shape[1] == 0:
            return _nothing(counts)
        return _select(self.masses(q, reps, counts), counts, tau)

    def score_select_q8(
        self,
        q: np.ndarray,
        vals: np.ndarray,
        scale: np.ndarray,
        counts: np.ndarray,
        *,
        tau: float,
        lanes: Lanes | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """score_select over int8 representatives: vals [KVH, hd, C] int8, scale [KVH, C] (accel/q8.py).
        lanes: the chunk's query rows split over them (a mass is a mean over rows: the parts' weighted
        sum), so every lane does an even share whatever the number of heads."""
        if counts.shape[1] == 0:
            return _nothing(counts)
        r = q.shape[1]
        logc = log_counts(counts)  # [KVH, C], shared by the lanes
        if lanes is None or lanes.n == 1 or r < 2:
            mass = self._q8(q, vals, scale, logc)
        else:
            rows = [slice(a, b) for a, b in even_cuts(r, lanes.n)]
            parts = lanes.map(lambda x: self._q8(q[:, x], vals, scale, logc), rows)
            mass = sum(p * np.float32((x.stop - x.start) / r) for x, p in zip(rows, parts, strict=True))
        mass[counts <= 0] = 0  # also a head with no cluster (its softmax over -inf is NaN)
        return _select(mass, counts, tau)

    def layout(self, selected: np.ndarray, start: np.ndarray, length: np.ndarray) -> np.ndarray:
        if selected.size == 0:
            return np.zeros((0, 2), dtype=np.int64)
        o = np.argsort(start[selected], kind="stable")
        s = start[selected][o]
        e = s + length[selected][o]
        brk = np.flatnonzero(s[1:] != e[:-1]) + 1  # a new run starts where ranges do not touch
        first = np.concatenate([[0], brk])
        last = np.concatenate([brk - 1, [s.size - 1]])
        return np.stack([s[first], e[last]], axis=1).astype(np.int64)
