"""The NumPy host reference of the retrieval backend (float32; the oracle for other backends)."""

from __future__ import annotations

import numpy as np

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
    with np.errstate(divide="ignore"):
        b = np.minimum(-2.0 * np.log2(mass), _BUCKETS - 1).astype(np.int64)  # [KVH, C], 0 = heaviest
    hist = np.bincount((b + _BUCKETS * np.arange(kvh)[:, None]).ravel(), weights=mass.ravel(),
                       minlength=kvh * _BUCKETS).reshape(kvh, _BUCKETS)
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


class HostBackend:
    """Float32 NumPy reference: exact softmax-consistent masses and a full sort for WiCSum."""

    name = "host"

    def hash_codes(self, keys: np.ndarray, planes: np.ndarray) -> np.ndarray:
        proj = np.matmul(keys, np.swapaxes(planes, -1, -2))  # [..., m, bits]
        return pack_bits(proj > 0)

    def cluster_assign(
        self, codes: np.ndarray, cand_codes: np.ndarray, cand_counts: np.ndarray,
        *, threshold: int, max_size: int, horizon: int,
    ) -> np.ndarray:
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

    def masses(self, q: np.ndarray, reps: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """q [KVH, R, hd], reps [KVH, C, hd], counts [KVH, C] -> mass [KVH, C] f32 (sums to 1 per head).

        Fastest when reps is a transposed view (reps.swapaxes(1, 2) contiguous in C): one plain GEMM."""
        kvh, r, hd = q.shape
        s = np.matmul(q * np.float32(1.0 / np.sqrt(hd)), np.swapaxes(reps, -1, -2))  # [KVH, R, C]
        valid = counts > 0  # [KVH, C]
        if not valid.all():
            s += np.where(valid, np.float32(0), np.float32(-np.inf))[:, None, :]
        s -= s.max(-1, keepdims=True)
        p = np.exp(s, out=s)  # [KVH, R, C]
        tc = counts.astype(np.float32)  # [KVH, C]
        z = np.matmul(p, tc[:, :, None])  # [KVH, R, 1] per-query normaliser
        w = np.swapaxes(1.0 / z, -1, -2) / np.float32(r)  # [KVH, 1, R]
        return np.matmul(w, p)[:, 0, :] * tc  # [KVH, C] f32

    def score_select(
        self, q: np.ndarray, reps: np.ndarray, counts: np.ndarray, *, tau: float,
    ) -> tuple[np.ndarray, np.ndarray]:
        kvh, c = counts.shape
        if c == 0:
            return np.zeros((kvh, 0), bool), np.zeros((kvh, 0), np.float32)
        mass = self.masses(q, reps, counts)
        valid = counts > 0
        if tau >= 1.0:
            return valid, mass
        return wicsum(mass, tau) & valid, mass

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
